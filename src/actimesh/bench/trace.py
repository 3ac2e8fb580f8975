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

The engine's ``work`` stage never gives up the event loop, so a slow one is the process
itself held up: by its garbage collector or by the kernel running another process on
the shared cores. :class:`GcPauses` times every collection (``gc.callbacks``) on the same
clock, and the report counts the slow ``work`` stages that overlapped one.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from typing import Any

from actimesh.stats import percentile

__all__ = ["STAGES", "GcPauses", "TriggerStamps", "describe", "gc_figures", "paths", "split"]

STAGES = ("to_handler", "work", "to_cameras")
#: A ``work`` stage at least this long is "slow" in :func:`gc_figures`.
SLOW_WORK_MS = 5.0
_MAX_PAUSES = 100_000


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


class GcPauses:
    """Every collection of this process's garbage collector: ``(generation, start,
    end)`` in ``perf_counter()`` seconds, through ``gc.callbacks`` (``--trace`` only)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif len(self.pauses) < _MAX_PAUSES:
            self.pauses.append((info["generation"], self._start, time.perf_counter()))

    def install(self) -> None:
        gc.callbacks.append(self)

    def take(self) -> list[tuple[int, float, float]]:
        taken, self.pauses = self.pauses, []
        return taken


def gc_figures(
    handled: Mapping[str, Sequence[float]], pauses: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """Collections by generation (count, longest, total ms), and how many of the slow
    ``work`` stages (at least :data:`SLOW_WORK_MS`) overlapped one."""
    by_generation: dict[str, dict[str, float]] = {}
    for generation, start, end in pauses:
        ms = (end - start) * 1e3
        row = by_generation.setdefault(
            f"gen{int(generation)}", {"count": 0, "max_ms": 0.0, "total_ms": 0.0}
        )
        row["count"] += 1
        row["max_ms"] = max(row["max_ms"], ms)
        row["total_ms"] += ms
    slow = [
        (began, written)
        for began, written in handled.values()
        if (written - began) * 1e3 >= SLOW_WORK_MS
    ]
    overlapped = sum(
        any(start < written and end > began for _, start, end in pauses) for began, written in slow
    )
    return {
        "collections": by_generation,
        "slow_work_ms": SLOW_WORK_MS,
        "slow_work": len(slow),
        "slow_work_during_gc": overlapped,
    }


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
    gc_pauses: Sequence[Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The ``trace`` section of a benchmark report: the trigger path (the engine's stamps)
    and the echo path (``#``-prefixed request ids) of one probe, split the same way."""
    sent: Mapping[str, float] = probe["sent"]
    received: Mapping[str, Sequence[float]] = probe["received"]
    out = {
        "engine": split({k: t for k, t in sent.items() if not k.startswith("#")}, received, engine),
        "echo": split({k: t for k, t in sent.items() if k.startswith("#")}, received, echo),
        "clock": "time.perf_counter() (CLOCK_MONOTONIC, one clock for the machine)",
        "engine_loop_lag_ms": {
            "p50": percentile(loop_lag_ms, 50),
            "p99": percentile(loop_lag_ms, 99),
            "samples": len(loop_lag_ms),
        },
    }
    if gc_pauses is not None:  # timed in the engine's process (not on a cluster's engines)
        out["engine_gc"] = gc_figures(engine, gc_pauses)
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
    lag = trace.get("engine_loop_lag_ms")
    if lag is not None:
        lines.append(
            f"engine event loop, a 10 ms timer late by (p50/p99 ms): "
            f"{lag['p50']:.2f}/{lag['p99']:.2f} ({lag['samples']:,} samples)"
        )
    collected = trace.get("engine_gc")
    if collected is not None:
        kinds = ", ".join(
            f"{gen} {row['count']:,} (longest {row['max_ms']:.1f} ms)"
            for gen, row in sorted(collected["collections"].items())
        )
        lines.append(
            f"engine garbage collections: {kinds or 'none'}; work stages over "
            f"{collected['slow_work_ms']:g} ms: {collected['slow_work']}, "
            f"{collected['slow_work_during_gc']} of them during a collection"
        )
    return "\n".join(lines)
