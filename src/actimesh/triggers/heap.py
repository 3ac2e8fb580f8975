"""The engine's heap and the garbage collector: each full collection is the last one to
walk the objects it finds alive.

A full (generation 2) collection walks every object the collector tracks, and the
engine's trigger path cannot run while it does. The engine freezes its heap at the end
of its warm-up (``gc.freeze``, ``[engine] freeze_heap``), but a fleet mostly arrives
after that: each device the engine hears of adds its record (a slotted object the
collector tracks) and its reporting mode, about two tracked objects per device. Measured
in-process (``python -m tests.triggers.time_collections``, docs/PERFORMANCE.md, "The
collector after the fleet arrives"): with 100,000 devices arrived after the warm-up, a
full collection walks 200,000 objects, about 46 ms of one core (a trigger's whole budget
several times over), and the collector ran two of them while the fleet arrived, the
longer 141 ms on a busy machine. With those objects frozen the same collection takes
under 0.1 ms.

So :class:`HeapFreezer`, installed in ``gc.callbacks``, freezes the heap right after
every full collection. That moment costs nothing more: the collection has just found
what is alive (its garbage is gone, so none is frozen with it), and ``gc.freeze`` only
moves the survivors' list onto the permanent one. The next full collection walks what
arrived since, not the whole fleet again. Its trade, the same as the warm-up's freeze:
an object frozen while alive that later becomes part of a reference cycle is never
collected. The engine's long-lived objects (device records, packed fixes and tracks,
rules) form no cycles and are freed by reference counting; what could leak is a
transient cycle that happened to be alive at a full collection, and full collections
are rare (CPython runs one only when the objects that survived since the last have grown
by a quarter).

The telemetry path itself makes no garbage for the collector to count: each fix
replaces its device's mode and packed fix, so allocations and frees balance and, in the
same measurement, five rounds of 100,000 fixes ran no collection at all.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping

__all__ = ["HeapFreezer"]

_FULL = 2


class HeapFreezer:
    """A ``gc.callbacks`` entry that calls ``freeze`` (``gc.freeze``) after every full
    collection; ``freezes`` counts them."""

    def __init__(self, freeze: Callable[[], None] = gc.freeze) -> None:
        self._freeze = freeze
        self.freezes = 0

    def __call__(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "stop" and info.get("generation") == _FULL:
            self._freeze()
            self.freezes += 1

    def install(self) -> None:
        """Start freezing after full collections (once: installing twice is a no-op)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        """Stop; what is frozen stays frozen (as after the warm-up's freeze)."""
        if self in gc.callbacks:
            gc.callbacks.remove(self)
