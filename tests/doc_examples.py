"""The shell and Python examples of README.md, CONTRIBUTING.md and docs/*.md, and how
each one is checked.

Every fenced block whose language is a shell (``sh``, ``shell``, ``bash``, ``console``)
or Python (``python``, ``py``) carries a marker, an HTML comment on the line just above
its opening fence (invisible when the Markdown is rendered), that says what the block is:

``<!-- example: run -->``
    Runs as written against a live ``actimesh up`` on the default addresses, and must
    exit 0 (tests/test_doc_examples.py). The blocks of one document run in order, in
    one shell session: a variable one block sets, the next one can use.
``<!-- example: stream until /REGEX/ -->``
    Runs as written, never ends on its own (a subscription, a live stream): it must
    print a line matching ``REGEX`` while the test makes activations happen, and is
    then stopped.
``<!-- example: illustrative: REASON -->``
    Not run, for the reason given (it runs for minutes, needs another machine, is the
    ``make`` target the test itself stands for...). The reason is required.

A document whose examples start an ``actimesh up`` of their own (with settings the demo
does not have) says so once, on a line of its own anywhere in it::

    <!-- examples: own actimesh up -->

Its examples then run in an empty folder of a network namespace where nothing else
listens, instead of against the demo; whatever they leave running is stopped when the
document ends.

A block of one of those languages without a marker, a marker without a block, or an
illustrative marker without a reason, is an error: :func:`examples` raises, and the
suite fails, so a new example cannot go unchecked by being forgotten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = [
    "CHECKED_LANGUAGES",
    "DOCUMENTS",
    "OWN_UP",
    "Example",
    "How",
    "examples",
    "parse",
    "starts_own_up",
]

ROOT = Path(__file__).resolve().parents[1]
#: Where the examples are: the README, CONTRIBUTING and every document under docs/, in
#: reading order.
DOCUMENTS: tuple[Path, ...] = (
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    *sorted((ROOT / "docs").glob("*.md")),
)
#: The line by which a document says its examples start their own ``actimesh up``.
OWN_UP = "<!-- examples: own actimesh up -->"
#: Languages whose blocks must carry a marker.
CHECKED_LANGUAGES = frozenset({"sh", "shell", "bash", "console", "python", "py"})
_SHELLS = frozenset({"sh", "shell", "bash", "console"})

_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
_MARKER = re.compile(r"^<!--\s*example:\s*(?P<body>.*?)\s*-->\s*$")
_STREAM = re.compile(r"^stream until /(?P<regex>.+)/$")
_ILLUSTRATIVE = re.compile(r"^illustrative:\s*(?P<reason>\S.*)$")


class How(StrEnum):
    """What the test does with a block."""

    RUN = "run"
    STREAM = "stream"
    ILLUSTRATIVE = "illustrative"


@dataclass(frozen=True, slots=True)
class Example:
    """One marked block: where it is, what it is, and its text."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    how: How
    text: str
    #: ``stream``: what the output must show; ``illustrative``: why it is not run.
    detail: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.language in _SHELLS


def _marker(body: str, where: str) -> tuple[How, str]:
    if body == "run":
        return How.RUN, ""
    if stream := _STREAM.match(body):
        regex = stream.group("regex")
        re.compile(regex)  # a bad pattern is the doc's mistake: say so here
        return How.STREAM, regex
    if illustrative := _ILLUSTRATIVE.match(body):
        return How.ILLUSTRATIVE, illustrative.group("reason")
    raise ValueError(
        f"{where}: marker {body!r} is not `run`, `stream until /REGEX/` or `illustrative: REASON`"
    )


def parse(path: Path, text: str) -> list[Example]:
    """The marked blocks of one Markdown document; ValueError names the first problem."""
    lines = text.splitlines()
    found: list[Example] = []
    pending: tuple[int, str] | None = None  # (line, body) of a marker not yet used
    i = 0
    while i < len(lines):
        line = lines[i]
        where = f"{path.name}:{i + 1}"
        if marker := _MARKER.match(line):
            if pending is not None:
                raise ValueError(f"{path.name}:{pending[0]}: marker without a block after it")
            pending = (i + 1, marker.group("body"))
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip() and pending is not None:
                raise ValueError(f"{path.name}:{pending[0]}: marker without a block after it")
            i += 1
            continue
        close = fence.group(1)
        language = fence.group(2).lower()
        end = i + 1
        while end < len(lines) and not lines[end].startswith(close):
            end += 1
        if end == len(lines):
            raise ValueError(f"{where}: block is never closed")
        body = "\n".join(lines[i + 1 : end]) + "\n"
        if pending is not None:
            if language not in CHECKED_LANGUAGES:
                raise ValueError(
                    f"{where}: marked block of language {language or 'none'!r}; markers go "
                    f"on {', '.join(sorted(CHECKED_LANGUAGES))} blocks"
                )
            how, detail = _marker(pending[1], f"{path.name}:{pending[0]}")
            found.append(Example(path, i + 1, language, how, body, detail))
            pending = None
        elif language in CHECKED_LANGUAGES:
            raise ValueError(
                f"{where}: {language} block without a marker: put `<!-- example: run -->` "
                "(or `stream until /REGEX/`, or `illustrative: REASON`) on the line above it"
            )
        i = end + 1
    if pending is not None:
        raise ValueError(f"{path.name}:{pending[0]}: marker without a block after it")
    return found


def examples(path: Path) -> list[Example]:
    """The marked blocks of the document at ``path``."""
    return parse(path, path.read_text(encoding="utf-8"))


def starts_own_up(path: Path) -> bool:
    """Whether the examples of the document at ``path`` start their own ``actimesh up``
    (it has the line :data:`OWN_UP`), and so run without the demo."""
    return OWN_UP in path.read_text(encoding="utf-8").splitlines()
