"""Findings: what the contract forbids, with what it takes to reproduce it."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from actimesh.fuzz._cases import Case


@dataclass(frozen=True, slots=True)
class Finding:
    """Something the contract forbids, with what it takes to reproduce it."""

    target: str
    problem: str
    detail: str
    index: int | None = None
    generator: str | None = None
    model: str | None = None
    topic: str | None = None
    payload_hex: str = ""

    @classmethod
    def of(cls, target: str, problem: str, detail: str, case: Case | None) -> Finding:
        if case is None:
            return cls(target, problem, detail)
        return cls(
            target,
            problem,
            detail,
            case.index,
            case.generator,
            case.model.kind,
            case.topic_text[:200],
            case.payload[:65_536].hex(),
        )

    def line(self, seed: int) -> str:
        text = f"{self.target}: {self.problem}: {self.detail}"
        if self.index is None:
            return text
        return (
            f"{text} (replay: actimesh fuzz --seed {seed} --replay {self.index}; "
            f"{self.generator} {self.model} on {self.topic})"
        )


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {str(exc)[:200]}{at}"
