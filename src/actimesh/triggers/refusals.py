"""What the engine does with input it refuses: count it, dead-letter it, quarantine floods.

Every refused message is counted by reason and charged to the device that sent it.
A sample is republished on the dead-letter topic (``deadletters_per_s``; the counters
are never capped), so an operator sees what arrives and why it was refused without a
flood becoming a flood of dead letters. A device whose refusals pass the flood watch's
limit is quarantined: its broker account disabled, by a task of its own (a registry
write and a broker round trip must not hold the intake), and an alert raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from actimesh.broker.codec import deadletter
from actimesh.broker.messages import AlertKind
from actimesh.broker.topics import Topics
from actimesh.broker.transport import Outbound
from actimesh.errors import BrokerError, PayloadError, SecurityError
from actimesh.triggers.alerts import Alerts
from actimesh.triggers.quarantine import FloodWatch, Quarantine
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats

__all__ = ["Refusals"]

log = logging.getLogger(__name__)

#: Devices waiting to be quarantined, at most; beyond it they are counted as failed.
_MAX_QUARANTINE_QUEUE = 1_000


class Refusals:
    """Counts, dead-letters and quarantines. ``await run()`` in the engine's task group.

    ``dispatch_source`` is never charged: dispatch's zones must not quarantine dispatch.
    ``quarantine`` disables accounts (None: this engine cannot, and says so in the alert).
    """

    def __init__(
        self,
        *,
        out: Outbound,
        topics: Topics,
        settings: EngineSettings,
        alerts: Alerts,
        stats: EngineStats,
        clock: Callable[[], float],
        quarantine: Quarantine | None,
        dispatch_source: str | None,
    ) -> None:
        self._out = out
        self._topics = topics
        self._alerts = alerts
        self._stats = stats
        self._clock = clock
        self.quarantine = quarantine
        self._dispatch_source = dispatch_source
        self.floods = FloodWatch(settings.quarantine_after, settings.quarantine_window_s)
        self._rate = settings.deadletters_per_s
        self._tokens = settings.deadletters_per_s
        self._refill = clock()
        self._to_quarantine: asyncio.Queue[tuple[str, str]] = asyncio.Queue(
            maxsize=_MAX_QUARANTINE_QUEUE
        )

    def reject(self, topic: str, payload: bytes, exc: PayloadError) -> None:
        """Count a refused message, charge it to its device, and dead-letter it (within
        the dead-letter rate). Never waits."""
        self._stats.rejected[exc.reason] += 1
        parsed = self._topics.parse_device(topic)
        if parsed is not None:
            self.charge(parsed.device_id, exc.reason)
        if self.deadletter_token():
            self.deadletter(topic, payload, exc)

    def charge(self, device_id: str, what: str) -> None:
        """Count a refused message against ``device_id``; quarantine it past the limit."""
        if device_id == self._dispatch_source or not self.floods.note(device_id, self._clock()):
            return
        reason = (
            f"quarantined: {self.floods.limit} refused messages within "
            f"{self.floods.window_s:g} s (last: {what})"
        )
        try:
            self._to_quarantine.put_nowait((device_id, reason))
        except asyncio.QueueFull:
            self._stats.quarantines_failed += 1

    def deadletter_token(self) -> bool:
        """Take one of the dead-letter rate's tokens; False (and counted) if none."""
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._refill) * self._rate)
        self._refill = now
        if self._tokens < 1:
            # Counted, not logged either: a flood must cost as little as it can.
            self._stats.deadletters_suppressed += 1
            return False
        self._tokens -= 1
        return True

    def deadletter(self, topic: str, payload: bytes, exc: PayloadError) -> None:
        """Publish a dead letter for a refused message (QoS 0, never waited for)."""
        log.warning("rejected %r: %s", topic, exc)  # as often as dead letters, no more
        letter = deadletter(self._clock(), topic, payload, exc)
        try:
            self._out.publish_nowait(self._topics.deadletter(exc.reason), letter, qos=0)
        except BrokerError:
            log.warning("dead letter for %s not published", topic)

    async def run(self) -> None:
        """Disable the devices the flood watch names, alert dispatch, write the ledger."""
        while True:
            device_id, reason = await self._to_quarantine.get()
            if self.quarantine is None:
                detail = f"{reason}; NOT disabled: this engine cannot change accounts"
                await self._alerts.alert(AlertKind.QUARANTINE, None, device_id, detail)
                continue
            try:
                disabled = await self.quarantine.quarantine(device_id, reason)
            except (SecurityError, BrokerError, OSError) as exc:
                self._stats.quarantines_failed += 1
                detail = f"{reason}; NOT disabled: {exc}"
                await self._alerts.alert(AlertKind.QUARANTINE, None, device_id, detail)
                continue
            if disabled:  # else disabled already (by another replica, or an operator)
                self._stats.quarantined += 1
                await self._alerts.alert(AlertKind.QUARANTINE, None, device_id, reason)
