"""Alerts: what dispatch and integrators must hear about, published and written down.

An alert (a camera that never answered, a command that expired, a storm, a quarantine,
a ledger that refused a write) is published on ``alerts/<kind>`` and appended to the
ledger, so that the record says what was noticed as well as what was done. Alerts
raised on the intake's path (a storm) are queued for a task of their own: publishing
and writing take round trips that must not hold another officer's trigger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from actimesh.broker.codec import encode
from actimesh.broker.messages import Alert, AlertKind
from actimesh.broker.topics import Topics
from actimesh.broker.transport import Outbound
from actimesh.errors import BrokerError, LedgerError
from actimesh.ledger import Ledger
from actimesh.triggers.stats import EngineStats
from actimesh.triggers.storm import StormControl

__all__ = ["Alerts"]

log = logging.getLogger(__name__)

#: Alerts waiting for their task, at most; beyond it they are counted, not raised.
_MAX_DEFERRED = 1_000


class Alerts:
    """Raises the engine's alerts. ``await run()`` in the engine's task group."""

    def __init__(
        self,
        *,
        out: Outbound,
        ledger: Ledger,
        topics: Topics,
        engine_id: str,
        storm: StormControl,
        stats: EngineStats,
        clock: Callable[[], float],
    ) -> None:
        self._out = out
        self._ledger = ledger
        self._topics = topics
        self._component = f"engine/{engine_id}"
        self._storm = storm
        self._stats = stats
        self._clock = clock
        self._deferred: asyncio.Queue[tuple[AlertKind, str, str]] = asyncio.Queue(
            maxsize=_MAX_DEFERRED
        )

    async def alert(
        self, kind: AlertKind, aid: str | None, device: str | None, detail: str
    ) -> None:
        """Raise an alert for dispatch and integrators, and write it to the ledger."""
        self._stats.alerts[kind.value] += 1
        log.warning("alert %s: activation %s camera %s: %s", kind.value, aid, device, detail)
        alert = Alert(alert=kind, ts=self._clock(), aid=aid, device=device, detail=detail[:256])
        try:
            await self._out.publish(self._topics.alerts(kind.value), encode(alert), qos=1)
        except BrokerError:
            log.warning("alert %s for %s not published", kind.value, aid)
        try:
            await self._ledger.record_event(
                self._component,
                "alert",
                device or aid or "engine",
                kind.value,
                {"aid": aid, "device": device, "detail": detail},
            )
        except LedgerError:
            self._stats.ledger_failures += 1
            log.exception("alert %s not written to the ledger", kind.value)

    def storm(self, source: str, now: float, detail: str) -> None:
        """A ``storm`` alert, at most one per device per ``alert_every_s``, raised by
        :meth:`run`: publishing it and writing it to the ledger must not hold the intake."""
        if self._storm.should_alert(source, now):
            try:
                self._deferred.put_nowait((AlertKind.STORM, source, detail))
            except asyncio.QueueFull:
                self._stats.alerts_dropped += 1

    async def run(self) -> None:
        """Raise the alerts queued by :meth:`storm`, until cancelled."""
        while True:
            kind, device, detail = await self._deferred.get()
            await self.alert(kind, None, device, detail)
