"""Persistence: what the engine decided, written to the ledger after the commands left.

Commands go first because a camera's pre-roll does not depend on when they arrive but
an officer's safety may. The activation (with every decision) is then written by the
:class:`Persister`, and only once it is durable is the trigger acknowledged to the bus
and confirmed to its device, and the activation record published for dispatch and
integrators. The activation id is deterministic, so if the engine dies before the
write, the redelivered event makes the same commands again and cameras ignore the repeat.

Cameras' answers are written apart, by :class:`~actimesh.triggers.answers.AckWriter`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from actimesh.broker.codec import MAX_ACTIVATION_BYTES, encode
from actimesh.broker.intake import Delivery
from actimesh.broker.messages import (
    Activation,
    AlertKind,
    CameraActivation,
    ConfirmStatus,
    DeviceKind,
    Event,
    LeftOut,
    LeftOutReason,
)
from actimesh.broker.topics import Topics
from actimesh.broker.transport import Outbound
from actimesh.errors import BrokerError, LedgerError
from actimesh.ledger import ActivationRow, DecisionRow, Ledger
from actimesh.triggers.alerts import Alerts
from actimesh.triggers.commands import Commander
from actimesh.triggers.dedupe import Dedupe
from actimesh.triggers.fanout import Plan
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats

__all__ = ["Decided", "Persister", "left_out_of"]

log = logging.getLogger(__name__)

#: Activations waiting for their ledger write, at most (the planner waits beyond it).
_MAX_PENDING = 10_000
_LEFT_OUT_REASONS = frozenset(r.value for r in LeftOutReason)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def left_out_of(decisions: Iterable[DecisionRow]) -> tuple[LeftOut, ...]:
    """The cameras of ``decisions`` that were not commanded, with why, sorted by id: what
    the activation record carries for integrators (the ledger keeps the same rows).

    Built by the persister once the commands have left, so the trigger path pays nothing
    for it. A row with a reason the record has no name for is left out of the list (it
    is still counted in ``excluded`` and kept in the ledger).
    """
    rows = []
    for d in decisions:
        if d.commanded or d.reason not in _LEFT_OUT_REASONS:
            continue
        kind = DeviceKind(d.device_kind) if d.device_kind in _KINDS else None
        rows.append(
            LeftOut(
                id=d.device_id,
                device_kind=kind,
                reason=LeftOutReason(d.reason),
                dist=_finite(d.distance_m),
                margin=_finite(d.margin_m),
                age=_finite(d.fix_age_s),
                lat=d.lat,
                lon=d.lon,
            )
        )
    rows.sort(key=lambda r: r.id)
    return tuple(rows)


_KINDS = frozenset(k.value for k in DeviceKind)


def _lat(d: DecisionRow | None) -> float | None:
    return None if d is None else d.lat


def _lon(d: DecisionRow | None) -> float | None:
    return None if d is None else d.lon


@dataclass(frozen=True, slots=True)
class Decided:
    """A trigger the engine has acted on, waiting for its ledger write."""

    plan: Plan
    event: Event
    source: str
    received: float
    decided: float
    rule: dict[str, object]
    #: The trigger's message: acknowledged to the bus only once the activation is
    #: durable, so a crash before that redelivers it.
    delivery: Delivery
    #: The activation this trigger joined (storm control), or None for a new one.
    merged_into: str | None = None
    #: A follow-up (:mod:`.followup`): the activation it follows, and the ``eid`` its
    #: ledger row carries (one row per ``(src, eid)``). Nothing to acknowledge or confirm.
    follows: str | None = None
    ledger_eid: str | None = None


class Persister:
    """Writes activations and merges in order. ``await run()`` in the engine's task group."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        out: Outbound,
        topics: Topics,
        settings: EngineSettings,
        dedupe: Dedupe,
        commander: Commander,
        alerts: Alerts,
        stats: EngineStats,
    ) -> None:
        self._ledger = ledger
        self._out = out
        self._topics = topics
        self._settings = settings
        self._engine_id = settings.engine_id
        self._dedupe = dedupe
        self._commander = commander
        self._alerts = alerts
        self._stats = stats
        self._queue: asyncio.Queue[Decided] = asyncio.Queue(maxsize=_MAX_PENDING)

    @property
    def backlog(self) -> int:
        """Triggers waiting for their ledger write."""
        return self._queue.qsize()

    async def put(self, item: Decided) -> None:
        """Queue a write; waits (never drops) when the writer is behind: back-pressure."""
        await self._queue.put(item)

    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            if item.merged_into is not None:
                await self._merge(item, item.merged_into)
            else:
                await self._activation(item)

    async def _activation(self, item: Decided) -> None:
        plan, event = item.plan, item.event
        row = ActivationRow(
            aid=plan.aid,
            src=item.source,
            eid=item.ledger_eid or event.eid,
            type=event.type,
            event_ts=event.ts,
            received_ts=item.received,
            decided_ts=item.decided,
            lat=plan.lat,
            lon=plan.lon,
            acc=plan.acc,
            position_source=plan.position_source.value,
            radius_m=plan.radius_m,
            pre_roll_s=plan.pre_roll_s,
            rule=item.rule,
            initiated_by=event.by,
            engine=self._engine_id,
        )
        try:
            inserted = await self._ledger.record_activation(row, plan.decisions)
        except LedgerError as exc:
            # Not durable: neither acknowledged nor confirmed, and forgotten, so the
            # device's re-send (or the broker's redelivery) is handled afresh. The
            # cameras were commanded already and dedupe the repeat.
            self._stats.ledger_failures += 1
            if item.follows is None:
                self._dedupe.forget((item.source, event.eid))
            self._dedupe.not_durable(plan.aid)
            log.exception("activation %s not written to the ledger", plan.aid)
            await self._alerts.alert(AlertKind.LEDGER, plan.aid, None, str(exc))
            return
        self._dedupe.durable(plan.aid)
        # Counted once durable and before the confirmation leaves: a device holding
        # its confirmation must find the activation counted (replicas' counters add
        # up to what the ledger holds at every moment a device can observe).
        if inserted:
            self._stats.activations += 1
        else:
            # Another replica of the share group recorded this trigger first (the
            # device re-sent it while that replica was still writing). It is durable,
            # so it is confirmed, but its record belongs to the replica that wrote it:
            # publishing it again would show integrators the activation twice.
            self._stats.duplicates += 1
            log.info("event %s from %s already recorded by another engine", event.eid, item.source)
        if item.follows is None:
            item.delivery.ack()
            self._commander.confirm(
                item.source,
                event.eid,
                ConfirmStatus.ACTIVATED,
                plan.aid,
                cameras=len(plan.targets),
            )
        if inserted:
            await self._publish_record(item)

    async def _publish_record(self, item: Decided) -> None:
        """The activation record, for dispatch and integrators."""
        plan, event = item.plan, item.event
        try:
            record = _record(item)
        except ValidationError:
            # The activation is in the ledger and its commands are out: a record the
            # contract cannot carry is a bug to see, not a reason to stop the writer
            # every later trigger waits on.
            self._stats.handler_errors += 1
            log.exception("activation %s record does not fit the contract", plan.aid)
            return
        payload = encode(record)
        if len(payload) > MAX_ACTIVATION_BYTES:  # pragma: no cover - 10k cameras at once
            log.error("activation %s record too large to publish", plan.aid)
            return
        try:
            await self._out.publish(self._topics.activations(event.type), payload, qos=1)
            if self._settings.publish_json:
                await self._out.publish(
                    self._topics.activations_json(event.type),
                    record.model_dump_json(exclude_none=True).encode(),
                    qos=1,
                )
        except BrokerError:
            log.exception("activation record %s not published", plan.aid)

    async def _merge(self, item: Decided, original: str) -> None:
        """Record a trigger that joined ``original``, then acknowledge and confirm it."""
        plan, event = item.plan, item.event
        body = {
            "aid": original,  # ties the record to the activation it joined (exports, retention)
            "merged_aid": plan.aid,
            "src": item.source,
            "eid": event.eid,
            "type": event.type,
            "event_ts": event.ts,
            "received_ts": item.received,
            "lat": plan.lat,
            "lon": plan.lon,
            "cameras": sorted(t.device_id for t in plan.targets),
            "initiated_by": event.by,
            "engine": self._engine_id,
        }
        try:
            await self._ledger.record_event(
                f"engine/{self._engine_id}", "merge", original, "merged", body
            )
        except LedgerError as exc:
            self._stats.ledger_failures += 1
            self._dedupe.forget((item.source, event.eid))
            log.exception("merge of %s into %s not written to the ledger", event.eid, original)
            await self._alerts.alert(AlertKind.LEDGER, original, None, str(exc))
            return
        self._dedupe.merged(plan.aid, original)
        self._stats.merged += 1
        log.info("event %s from %s joined activation %s", event.eid, item.source, original)
        item.delivery.ack()
        self._commander.confirm(
            item.source, event.eid, ConfirmStatus.ACTIVATED, original, cameras=len(plan.targets)
        )


def _record(item: Decided) -> Activation:
    """The activation record of a decided trigger (``ValidationError`` if a figure falls
    outside the wire contract)."""
    plan, event = item.plan, item.event
    judged = {d.device_id: d for d in plan.decisions}
    return Activation(
        aid=plan.aid,
        eid=event.eid,
        src=item.source,
        type=event.type,
        ets=event.ts,
        ts=item.decided,
        lat=plan.lat,
        lon=plan.lon,
        radius=plan.radius_m,
        pre=plan.pre_roll_s,
        cameras=tuple(
            CameraActivation(
                id=t.device_id,
                device_kind=t.kind,
                reason=t.reason,
                dist=t.distance_m,
                lat=_lat(judged.get(t.device_id)),
                lon=_lon(judged.get(t.device_id)),
            )
            for t in plan.targets
            if t.kind is not None
        ),
        excluded=plan.excluded,
        by=event.by,
        left_out=left_out_of(plan.decisions),
        follows=item.follows,
    )
