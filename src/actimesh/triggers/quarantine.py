"""Quarantine: a device that keeps sending what the engine refuses is switched off.

A stolen or broken device can send refused traffic as fast as its link allows: events
it may not raise, acknowledgements for activations that never commanded it, malformed
payloads. Each is already dropped before any costly work, so other officers' triggers
are not delayed (docs/PERFORMANCE.md); but a device that does nothing else is not a
camera anyone can rely on, and the flood still costs the broker and the engine.

:class:`FloodWatch` counts refusals per device in fixed windows and says when one
crosses the limit. The engine then asks a :class:`Quarantine` to disable the account
(the registry marks it and the broker disconnects it live: broker/dynsec.py), raises a
``quarantine`` alert for dispatch and writes it to the ledger. ``actimesh devices enable``
brings it back.

Only *refused* messages count. A device that sends valid traffic, however much, is
never quarantined here (its trigger events meet the storm limits instead), so the worst
this can do to an honest camera is nothing. The default limit, 200 refusals in 10 s,
is far above what a misconfigured device re-sending a refused event produces (one
every few seconds) and far below a flood (thousands a second).

Pure and clock-driven: the engine passes the time in.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["FloodWatch", "Quarantine"]


class Quarantine(Protocol):
    """Disables a device's account live."""

    async def quarantine(self, device_id: str, reason: str) -> bool:
        """Disable ``device_id``; True if it was enabled until now."""
        ...


class FloodWatch:
    """Refusals per device in fixed windows of ``window_s``; ``limit`` 0 turns it off."""

    def __init__(self, limit: int, window_s: float, *, max_devices: int = 100_000) -> None:
        if limit < 0 or window_s <= 0:
            raise ValueError("a flood watch needs a limit >= 0 and a window > 0")
        self.limit = limit
        self.window_s = window_s
        self.max_devices = max_devices
        self._counts: dict[str, tuple[float, int]] = {}

    def note(self, device_id: str, now: float) -> bool:
        """Count one refusal; True exactly once per window, when ``limit`` is reached."""
        if self.limit == 0:
            return False
        start, count = self._counts.get(device_id, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        count += 1
        if device_id not in self._counts and len(self._counts) >= self.max_devices:
            self._forget_stale(now)
        self._counts[device_id] = (start, count)
        return count == self.limit

    def _forget_stale(self, now: float) -> None:
        stale = [d for d, (start, _) in self._counts.items() if now - start >= self.window_s]
        for device_id in stale:
            del self._counts[device_id]
        if len(self._counts) >= self.max_devices:
            # Every tracked device is mid-window: drop the oldest windows. A device
            # forgotten here starts counting again; it can only be quarantined later.
            for device_id, _ in sorted(self._counts.items(), key=lambda kv: kv[1][0])[
                : len(self._counts) // 2
            ]:
                del self._counts[device_id]
