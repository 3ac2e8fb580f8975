"""``actimesh bench --trace``: where a trigger's latency goes, hop by hop.

``time.perf_counter()`` reads ``CLOCK_MONOTONIC`` on Linux, one clock for every process
of the machine, so stamps taken in the probe, the engine and the echo client can be
subtracted from one another (the benchmark always runs on one machine). Each trigger
is split into three stages, and each echo request the same way, so the two paths can
be compared stage by stage:

* ``to_handler``: the probe's publish to the start of the handler (the engine's
  ``_on_event``, the echo client's callback): one broker hop, the read, any queue;
* ``work``: the handler's own time until the last command (reply) is written;
* ``to_cameras``: from then to the last camera's receipt: the second broker hop.

The engine is traced by a subclass that stamps its event handler; nothing in the
engine's own code knows about it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from actimesh.broker.intake import Delivery
from actimesh.broker.messages import Event
from actimesh.stats import percentile
from actimesh.triggers.engine import Engine
from actimesh.triggers.fanout import Plan

__all__ = ["STAGES", "TracedEngine", "describe", "split"]

STAGES = ("to_handler", "work", "to_cameras")


class TracedEngine(Engine):
    """An :class:`Engine` that notes, per event id, when its handler started and when
    the last of its commands had been written."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Event id -> (handler started, commands written), ``perf_counter()`` seconds.
        self.stamps: dict[str, tuple[float, float]] = {}
        self._started = 0.0

    async def _on_event(
        self,
        source: str,
        payload: bytes,
        delivery: Delivery,
    ) -> bool:
        # The intake hands over one message at a time, and a handler does not
        # give up the loop before its commands are written: the stamp is this event's.
        self._started = time.perf_counter()
        return await super()._on_event(source, payload, delivery)

    async def _send_commands(self, plan: Plan, event: Event, source: str, now: float) -> None:
        await super()._send_commands(plan, event, source, now)
        self.stamps[event.eid] = (self._started, time.perf_counter())


def _stage_figures(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}


def split(
    sent: Mapping[str, float],
    received: Mapping[str, Sequence[float]],
    handled: Mapping[str, Sequence[float]],
) -> dict[str, Any]:
    """Stage percentiles (ms) of the requests all three sides saw.

    ``sent``: request id -> publish time (probe); ``received``: request id -> the
    cameras' receipt times (probe); ``handled``: request id -> (handler start, last
    write) in the handling process.
    """
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    for rid, start in sent.items():
        times, stamp = received.get(rid), handled.get(rid)
        if not times or stamp is None:
            continue
        began, written = stamp
        stages["to_handler"].append((began - start) * 1e3)
        stages["work"].append((written - began) * 1e3)
        stages["to_cameras"].append((max(times) - written) * 1e3)
    out: dict[str, Any] = {name: _stage_figures(values) for name, values in stages.items()}
    out["traced"] = len(stages["work"])
    return out


def describe(trace: Mapping[str, Any]) -> str:
    """One line per path: each stage's p50/p99 in milliseconds."""
    lines = []
    for path in ("engine", "echo"):
        figures = trace[path]
        stages = ", ".join(
            f"{name.replace('_', ' ')} {figures[name]['p50_ms']:.2f}/{figures[name]['p99_ms']:.2f}"
            for name in STAGES
        )
        lines.append(f"{path} ({figures['traced']} traced), p50/p99 ms: {stages}")
    return "\n".join(lines)
