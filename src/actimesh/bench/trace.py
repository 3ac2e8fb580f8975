"""``actimesh bench --trace``: where a trigger's latency goes, hop by hop.

``time.perf_counter()`` reads ``CLOCK_MONOTONIC`` on Linux, one clock for every process
of the machine, so stamps taken in the probe, the engine and the echo client can be
subtracted from one another (the benchmark always runs on one machine). Each trigger
is split into three stages, and each echo request the same way, so the two paths can
be compared stage by stage:

* ``to_handler``: the probe's publish to the start of the handler (the engine's trigger
  path, the echo client's callback): one broker hop, the read, any queue;
* ``work``: the handler's own time until the last command (reply) is written;
* ``to_cameras``: from then to the last camera's receipt: the second broker hop.

The engine is traced through its tracer seam
(:class:`~actimesh.triggers.planning.TriggerTracer`): :class:`TriggerStamps` stamps the
start of each trigger's handling and the moment its commands have left.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from actimesh.stats import percentile

__all__ = ["STAGES", "TriggerStamps", "describe", "paths", "split"]

STAGES = ("to_handler", "work", "to_cameras")


class TriggerStamps:
    """A :class:`~actimesh.triggers.planning.TriggerTracer` that notes, per event id,
    when its handling started and when the last of its commands had been written."""

    def __init__(self) -> None:
        #: Event id -> (handler started, commands written), ``perf_counter()`` seconds.
        self.stamps: dict[str, tuple[float, float]] = {}
        self._started = 0.0

    def handling(self) -> None:
        # The intake hands over one message at a time, and the trigger path does not
        # give up the loop before its commands are written: the stamp is this event's.
        self._started = time.perf_counter()

    def commanded(self, eid: str) -> None:
        self.stamps[eid] = (self._started, time.perf_counter())


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


def paths(
    probe: Mapping[str, Any],
    engine: Mapping[str, Sequence[float]],
    echo: Mapping[str, Sequence[float]],
    loop_lag_ms: list[float],
) -> dict[str, Any]:
    """The ``trace`` section of a benchmark report: the trigger path (the engine's stamps)
    and the echo path (``#``-prefixed request ids) of one probe, split the same way."""
    sent: Mapping[str, float] = probe["sent"]
    received: Mapping[str, Sequence[float]] = probe["received"]
    return {
        "engine": split({k: t for k, t in sent.items() if not k.startswith("#")}, received, engine),
        "echo": split({k: t for k, t in sent.items() if k.startswith("#")}, received, echo),
        "clock": "time.perf_counter() (CLOCK_MONOTONIC, one clock for the machine)",
        "engine_loop_lag_ms": {
            "p50": percentile(loop_lag_ms, 50),
            "p99": percentile(loop_lag_ms, 99),
            "samples": len(loop_lag_ms),
        },
    }


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
    lag = trace.get("engine_loop_lag_ms")
    if lag is not None:
        lines.append(
            f"engine event loop, a 10 ms timer late by (p50/p99 ms): "
            f"{lag['p50']:.2f}/{lag['p99']:.2f} ({lag['samples']:,} samples)"
        )
    return "\n".join(lines)
