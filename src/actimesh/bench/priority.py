"""The load generator's CPU priority while it streams telemetry.

The load generator plays 100,000 devices that in production are not on the engine's
machine. On the benchmark's two cores it competes for them with the parts being
measured (the broker, the engine, and the probe and echo client that time them), so
while the steady phase runs it takes a lower priority (``BenchSettings.loadgen_nice``,
``actimesh bench --loadgen-nice``, 10 by default, 0 to leave it alone): the kernel
then lets a measured process that wakes take a core from it at once. Only the load
generator, only during the stream: the floods afterwards, which measure how fast the
broker delivers what the load generator sends, run at its ordinary priority, so the
broker's baseline is measured as before. The report says what was applied
(``loadgen_priority``).

**Why not just** ``os.nice``: with the kernel's autogroup scheduling
(``/proc/sys/kernel/sched_autogroup_enabled``, on in most distributions' kernels and on
this machine), every session is a group of its own and the CPU is shared between
groups first; a process's nice value only ranks it within its group. The benchmark
starts each worker in a session of its own, so ``os.nice(10)`` changes nothing against
the broker or the engine. Measured here: two busy processes on one core, each in its
own session, one at nice 10, took 0.93 s and 0.92 s of CPU in 3 s; with the group's
nice value set instead (``/proc/self/autogroup``), 1.17 s and 0.17 s. So this sets the
group's value when autogroup scheduling is on (the load generator is alone in its
session) and the process's otherwise. Raising a nice value needs no privilege, nor does
setting a group's back to 0; a process's own cannot be lowered back without
``CAP_SYS_NICE``, and then ``restored`` says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Lowered", "lowered_priority"]

_AUTOGROUP_ON = Path("/proc/sys/kernel/sched_autogroup_enabled")
_AUTOGROUP = Path("/proc/self/autogroup")


@dataclass(slots=True)
class Lowered:
    """What :func:`lowered_priority` applied: the nice value, ``how`` (``autogroup``,
    ``process`` or ``none`` for 0), and whether it was undone at the end."""

    nice: int
    how: str
    restored: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"nice": self.nice, "how": self.how, "restored": self.restored}


def _autogroup() -> bool:
    try:
        return _AUTOGROUP_ON.read_text().strip() == "1" and _AUTOGROUP.exists()
    except OSError:
        return False


@contextlib.contextmanager
def lowered_priority(nice: int) -> Iterator[Lowered]:
    """Run the block at nice value ``nice`` (0 to 19) for this process, which must be
    alone in its session when autogroup scheduling is on."""
    if not 0 <= nice <= 19:
        raise ValueError(f"nice must be within [0, 19], got {nice!r}")
    if nice == 0:
        lowered = Lowered(0, "none", restored=True)
        yield lowered
        return
    if _autogroup():
        _AUTOGROUP.write_text(str(nice))
        lowered = Lowered(nice, "autogroup")
        try:
            yield lowered
        finally:
            _AUTOGROUP.write_text("0")
            lowered.restored = True
        return
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, max(before, nice))
    lowered = Lowered(nice, "process")
    try:
        yield lowered
    finally:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, before)
            lowered.restored = True
