"""Command delivery: signed commands out, the bus's acceptance counted, silence chased.

Every command is signed (:mod:`actimesh.security.signing`), bound to its camera and
agency; cameras refuse anything that does not verify with the engine's public key. Each
leaves as soon as it is signed, flushed in the same turn of the event loop: the first
camera of a cluster does not wait for the last one's signature. The bus's acceptance
(PUBACK) is awaited by a task of its own, so the intake goes on at once.

The delivery tracker (:mod:`.delivery`) re-sends what a camera has not answered,
raises ``no_ack`` when one stays silent and ``expired`` when a command's time is up.
Confirmations tell a device what became of its event; they are handed to the
connection and never waited for (a device that misses one re-sends, and is answered
again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from actimesh.broker.client import InFlight
from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    AckStatus,
    ActivationReason,
    AlertKind,
    Confirmation,
    ConfirmStatus,
    Event,
)
from actimesh.broker.topics import Topics
from actimesh.broker.transport import Outbound
from actimesh.errors import BrokerError, PayloadError
from actimesh.ledger import Ledger
from actimesh.security.signing import CommandSigner
from actimesh.triggers.alerts import Alerts
from actimesh.triggers.delivery import Action, ActionKind, DeliveryTracker
from actimesh.triggers.fanout import Plan
from actimesh.triggers.fleet import Fleet
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats

__all__ = ["Commander"]

log = logging.getLogger(__name__)

#: Commands handed to the connection whose acceptance is not counted yet, at most.
_MAX_INFLIGHT = 100_000

_Sent = tuple[str, str, InFlight]


class Commander:
    """Sends, re-sends and confirms. ``await run_outcomes()`` and ``await
    run_tracking()`` in the engine's task group."""

    def __init__(
        self,
        *,
        out: Outbound,
        signer: CommandSigner,
        topics: Topics,
        settings: EngineSettings,
        deliveries: DeliveryTracker,
        fleet: Fleet,
        alerts: Alerts,
        stats: EngineStats,
        clock: Callable[[], float],
    ) -> None:
        self._out = out
        self._signer = signer
        self._topics = topics
        self._settings = settings
        self.deliveries = deliveries
        self._fleet = fleet
        self._alerts = alerts
        self._stats = stats
        self._clock = clock
        # Commands on their way, waiting for the bus's acceptance (see run_outcomes).
        self._inflight: asyncio.Queue[_Sent] = asyncio.Queue(maxsize=_MAX_INFLIGHT)

    async def send(self, plan: Plan, event: Event, source: str, now: float) -> None:
        """Sign and send the command of every camera ``plan`` targets, and track it."""
        expiry = self._settings.command_expiry_s
        agency = self._topics.agency
        sent: list[_Sent] = []
        for target in plan.targets:
            command = self._signer.command(
                agency=agency,
                device_id=target.device_id,
                aid=plan.aid,
                eid=event.eid,
                src=source,
                type=event.type,
                ets=event.ts,
                pre=plan.pre_roll_s,
                reason=target.reason,
                dist=target.distance_m,
                ts=now,
                exp=now + expiry,
            )
            payload = encode(command)
            self.deliveries.track(
                plan.aid, target.device_id, payload, now=now, expires_at=command.exp
            )
            self._queue(plan.aid, target.device_id, payload, command.exp, sent)
            # Each command leaves as soon as it is signed (~40 µs each): the first camera
            # of a cluster does not wait for the last one's signature.
            self._out.flush()
        await self._await_pubacks(sent)

    def _queue(
        self, aid: str, device_id: str, payload: bytes, exp: float, sent: list[_Sent]
    ) -> None:
        try:
            expiry = max(1.0, exp - self._clock())
            inflight = self._out.publish_nowait(
                self._topics.command(device_id), payload, qos=1, expiry_s=expiry
            )
        except BrokerError:
            # The delivery tracker re-sends it; the ledger shows commanded-not-acknowledged.
            self._stats.command_failures += 1
            log.warning("command %s to %s not sent: no connection to the broker", aid, device_id)
            return
        sent.append((aid, device_id, inflight))

    async def _await_pubacks(self, sent: list[_Sent]) -> None:
        # The commands left in this turn of the event loop (Outbound.flush), not behind
        # whatever else was ready to run (docs/PERFORMANCE.md, "the command path"). Their
        # PUBACKs are awaited by run_outcomes: the control link goes on at once.
        for item in sent:
            await self._inflight.put(item)  # waits only if 100,000 are unconfirmed

    async def run_outcomes(self) -> None:
        """Count each command the broker acknowledged, and each it did not."""
        while True:
            aid, device_id, inflight = await self._inflight.get()
            try:
                await inflight.confirmed()
            except BrokerError:
                # The delivery tracker re-sends it; the ledger shows commanded-not-acknowledged.
                self._stats.command_failures += 1
                log.warning("command %s to %s not confirmed by the broker", aid, device_id)
            else:
                self._stats.commands += 1

    def confirm(
        self,
        device_id: str,
        eid: str,
        status: ConfirmStatus,
        aid: str | None,
        *,
        cameras: int = 0,
        detail: str | None = None,
    ) -> None:
        """Tell a device what became of its event. Handed to the connection, never
        waited for: a device that misses it re-sends the event and is confirmed again,
        and a wait here (one broker round trip, more while it is busy) would be a wait
        for every other device's trigger behind it on the intake."""
        confirmation = Confirmation(
            eid=eid, status=status, aid=aid, cameras=cameras, ts=self._clock(), detail=detail
        )
        try:
            self._out.publish_nowait(self._topics.confirm(device_id), encode(confirmation), qos=1)
            self._stats.confirmations += 1
        except BrokerError:
            log.warning(
                "confirmation of %s to %s not sent; the device will re-send", eid, device_id
            )

    def refuse(self, source: str, payload: bytes, exc: PayloadError) -> None:
        """Tell a device its event was refused, so it stops re-sending it."""
        try:
            eid = decode(Event, payload).eid
        except PayloadError:
            return  # unreadable: no event id to answer to
        # QoS 0, not waited for: a refusal the device misses only makes it re-send, and
        # is refused again; waiting here for the broker's PUBACK of every refusal held
        # the control link, so a device flooding refused events delayed other officers'
        # triggers by seconds. Not even for the write (aiomqtt's publish() waits a turn
        # of the loop for it, even at QoS 0): the intake serves devices in turn, and a
        # wait per refusal is a wait for the next device's trigger.
        confirmation = Confirmation(
            eid=eid,
            status=ConfirmStatus.REJECTED,
            ts=self._clock(),
            detail=str(exc)[:256],
        )
        try:
            self._out.publish_nowait(self._topics.confirm(source), encode(confirmation), qos=0)
            self._stats.confirmations += 1
        except BrokerError:
            log.warning("refusal of %s to %s not sent; the device will re-send", eid, source)

    # ------------------------------------------------------------------ tracking
    async def run_tracking(self) -> None:
        """Re-send unanswered commands, alert on silence, give up on expiry."""

        def online(device_id: str) -> bool:
            info = self._fleet.get(device_id)
            return info is None or info.online

        while True:
            await asyncio.sleep(min(0.25, self._settings.ack_timeout_s / 4))
            for action in self.deliveries.due(self._clock(), online):
                try:
                    await self._act(action)
                except Exception:  # one failing action must not stop delivery tracking
                    log.exception(
                        "delivery action %s for %s failed", action.kind.value, action.delivery.aid
                    )

    async def _act(self, action: Action) -> None:
        d = action.delivery
        if action.kind is ActionKind.RETRY:
            self._stats.retries += 1
            sent: list[_Sent] = []
            self._queue(d.aid, d.device_id, d.payload, d.expires_at, sent)
            self._out.flush()
            await self._await_pubacks(sent)
        elif action.kind is ActionKind.ALERT_NO_ACK:
            waited = self._clock() - d.commanded_at
            state = "received, not yet recording" if d.received else "no answer"
            await self._alerts.alert(
                AlertKind.NO_ACK, d.aid, d.device_id, f"{state} after {waited:.1f} s"
            )
        else:
            await self._alerts.alert(
                AlertKind.EXPIRED,
                d.aid,
                d.device_id,
                f"command expired after {d.attempts} attempt(s)",
            )

    async def recover(self, ledger: Ledger, now: float) -> None:
        """After a restart: track again every command not answered and not expired."""
        expiry = self._settings.command_expiry_s
        for aid in await ledger.activation_ids(since=now - expiry, limit=100_000):
            found = await ledger.activation(aid)
            if found is None:
                continue
            row, decisions = found
            done = {
                a.device_id for a in await ledger.acks(aid) if a.status != AckStatus.RECEIVED.value
            }
            for d in decisions:
                if not d.commanded or d.device_id in done or row.decided_ts + expiry <= now:
                    continue
                proximity = d.reason == "proximity"
                command = self._signer.command(
                    agency=self._topics.agency,
                    device_id=d.device_id,
                    aid=aid,
                    eid=row.eid,
                    src=row.src,
                    type=row.type,
                    ets=row.event_ts,
                    pre=row.pre_roll_s,
                    reason=ActivationReason.PROXIMITY if proximity else ActivationReason.PAIRED,
                    dist=d.distance_m,
                    ts=now,
                    exp=row.decided_ts + expiry,
                )
                self.deliveries.track(
                    aid, d.device_id, encode(command), now=now, expires_at=command.exp
                )
