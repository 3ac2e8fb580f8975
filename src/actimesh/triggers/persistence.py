"""Persistence: what the engine decided, written to the ledger after the commands left.

Commands go first because a camera's pre-roll does not depend on when they arrive but
an officer's safety may. The activation (with every decision) is then written by the
:class:`Persister`, and only once it is durable is the trigger acknowledged to the bus
and confirmed to its device, and the activation record published for dispatch and
integrators. The activation id is deterministic, so if the engine dies before the
write, the redelivered event makes the same commands again and cameras ignore the repeat.

Acknowledgements from cameras are written by the :class:`AckWriter`, in group commits:
whatever arrived while the last transaction was syncing goes into the next one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
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
from actimesh.errors import BrokerError, LedgerError, NotCommandedError
from actimesh.ledger import AckRow, ActivationRow, DecisionRow, Ledger
from actimesh.triggers.alerts import Alerts
from actimesh.triggers.commands import Commander
from actimesh.triggers.dedupe import Dedupe
from actimesh.triggers.fanout import Plan
from actimesh.triggers.refusals import Refusals
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats

__all__ = ["AckWriter", "Decided", "Persister", "left_out_of"]

log = logging.getLogger(__name__)

#: Activations waiting for their ledger write, at most (the planner waits beyond it).
_MAX_PENDING = 10_000
#: Acknowledgements waiting for their ledger write, at most (the intake waits beyond it).
_MAX_PENDING_ACKS = 100_000
#: Backoff of acknowledgements waiting for an unreachable ledger (first, longest wait).
_ACK_RETRY_FIRST_S = 0.1
_ACK_RETRY_MAX_S = 2.0
#: How long an answer waits for its activation to be written before it is refused as
#: not commanded, and how many answers may wait at once (beyond: refused at once).
_ACK_WAIT_FOR_ACTIVATION_S = 4.0
_MAX_WAITING_ACKS = 10_000
#: Answers one device may have waiting at once. A camera answers each activation twice
#: (received, recording) and is in a handful at a time; a device answering hundreds of
#: activations nobody has written is flooding: the rest of its answers are refused at
#: once, with no ledger read each, so a flood costs what it did before answers waited.
_MAX_WAITING_PER_DEVICE = 32
#: Acknowledgements written to the ledger in one transaction, at most.
_ACK_BATCH = 512
#: What the flood watch says a device sent when it answered activations it was not in.
_NOT_COMMANDED = "acknowledgements for activations that did not command it"
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


class AckWriter:
    """Writes cameras' acknowledgements. ``await run()`` in the engine's task group.

    A synced write per acknowledgement on the intake would hold up the trigger events
    queued behind it; each trigger brings two acknowledgements per camera, and one
    synced write each made the ledger thread the busiest part of the engine at 100,000
    devices. Hence a queue and group commits.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        refusals: Refusals,
        stats: EngineStats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._refusals = refusals
        self._stats = stats
        #: Measures how long an answer has waited for its activation.
        self._clock = clock
        # Each with who cancelled, for a ``cancelled`` ack (a false activation).
        self._queue: asyncio.Queue[tuple[AckRow, str | None]] = asyncio.Queue(
            maxsize=_MAX_PENDING_ACKS
        )
        #: Answers waiting for their activation to be written, by (aid, device, status),
        #: and since when each has been refused (see :meth:`_not_commanded`).
        self._waiting: dict[tuple[str, str, str], AckRow] = {}
        self._refused_since: dict[tuple[str, str, str], float] = {}

    @property
    def backlog(self) -> int:
        """Acknowledgements waiting for their ledger write."""
        return self._queue.qsize()

    async def put(self, row: AckRow, cancelled_by: str | None = None) -> None:
        """Queue ``row``; ``cancelled_by`` names who cancelled, for a ``cancelled`` ack.
        Waits (never drops) if the writer is behind."""
        await self._queue.put((row, cancelled_by))

    async def run(self) -> None:
        queue = self._queue
        while True:
            try:
                async with asyncio.timeout(_ACK_RETRY_MAX_S if self._waiting else None):
                    first = await queue.get()
            except TimeoutError:
                await self._retry_waiting()
                continue
            batch = [first]
            while len(batch) < _ACK_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            plain: list[AckRow] = []
            for row, cancelled_by in batch:
                if cancelled_by is None:
                    plain.append(row)
                    continue
                await self.write(plain)  # in the order they came
                plain = []
                await self._cancel(row, cancelled_by)
            await self.write(plain)
            await self._retry_waiting()

    async def _ledger_answers(self) -> bool:
        """Whether the ledger answers a read now (a failed write was then its rows')."""
        try:
            await self._ledger.head()
        except LedgerError:
            return False
        return True

    async def _cancel(self, row: AckRow, cancelled_by: str) -> None:
        try:
            # The ack and its false_activation record, in one transaction.
            seq = await self._ledger.record_cancel(row, cancelled_by, only_commanded=True)
        except NotCommandedError as exc:
            self._stats.acks_not_commanded += 1
            self._refusals.charge(row.device_id, _NOT_COMMANDED)
            log.debug("%s", exc)  # counted: a flood must not flood the log
        except LedgerError:
            self._stats.ledger_failures += 1
            log.exception("cancel from %s for %s not recorded", row.device_id, row.aid)
        else:
            if seq is not None:  # not a redelivery
                self._stats.false_activations += 1
            log.info(
                "%s cancelled activation %s on %s as a false activation",
                cancelled_by,
                row.aid,
                row.device_id,
            )

    async def write(self, rows: list[AckRow], *, again: bool = False) -> None:
        """Write ``rows`` in one transaction. If that fails while the ledger answers,
        one by one, so that one bad row does not cost the others their record; while it
        does not answer (a database restarting or failing over), the rows wait and the
        write is tried again, backing off: a camera's answer is evidence, never dropped
        because the ledger was away for a moment. ``again``: ``rows`` waited for their
        activation already (:meth:`_not_commanded`)."""
        if not rows:
            return
        delay = _ACK_RETRY_FIRST_S
        while True:
            try:
                # An answer from a camera the activation did not command (a device
                # flooding acks for activations it was never part of) is counted, never
                # written.
                written = await self._ledger.record_acks(rows, only_commanded=True)
                break
            except LedgerError as exc:
                refused = await self._ledger_answers()
                if refused and len(rows) == 1:
                    self._stats.ledger_failures += 1
                    log.exception("ack from %s for %s not recorded", rows[0].device_id, rows[0].aid)
                    return
                if not refused and delay == _ACK_RETRY_FIRST_S:  # once an outage
                    log.warning("%d ack(s) wait for the ledger: %s", len(rows), exc)
            if refused:
                for row in rows:
                    await self.write([row], again=again)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _ACK_RETRY_MAX_S)
        if written.refused:
            await self._not_commanded(rows, set(written.refused), again=again)

    async def _not_commanded(
        self, rows: list[AckRow], refused: set[str], *, again: bool = False
    ) -> None:
        """Answers the ledger refused as not commanded. One whose activation is not in
        the ledger yet waits (commands leave before the activation is written, and
        another replica may be writing it): it is tried again until the activation is
        there or ``_ACK_WAIT_FOR_ACTIVATION_S`` has passed. One whose activation is
        there now is written once more (:meth:`_recheck`), because the activation may
        have been committed between the write's check and this look: both writers hold
        the ledger's lock in turn, so the persister's write often lands just there. The
        rest, and those that waited long enough, are refused: counted and charged.

        A new copy of an answer already waiting (``again`` false) waits afresh: a camera
        answers again when it is commanded again, by an engine that writes the activation
        next (the other replica, once the one that commanded first died before writing
        it). Kept to the first copy's time, it was refused just before that write."""
        now = self._clock()
        missing: dict[str, bool] = {}
        per_device = Counter(device for _, device, _ in self._waiting)
        recheck: list[AckRow] = []
        for row in rows:
            if row.device_id not in refused:
                continue
            key = (row.aid, row.device_id, row.status)
            since = self._refused_since.setdefault(key, now) if again else now
            self._refused_since[key] = since
            room = (
                len(self._waiting) < _MAX_WAITING_ACKS
                and (key in self._waiting or per_device[row.device_id] < _MAX_WAITING_PER_DEVICE)
                and now - since < _ACK_WAIT_FOR_ACTIVATION_S
            )
            if room and row.aid not in missing:
                missing[row.aid] = await self._activation_missing(row.aid)
            if room and missing[row.aid]:
                if key not in self._waiting:
                    per_device[row.device_id] += 1
                self._waiting[key] = row
                continue
            if room:
                recheck.append(row)
                continue
            if now - since >= _ACK_WAIT_FOR_ACTIVATION_S:
                why = (
                    f"its activation was not in the ledger within {_ACK_WAIT_FOR_ACTIVATION_S:g} s"
                )
            else:
                why = "too many answers wait for their activation"
            self._refuse(key, why)
        if recheck:
            await self._recheck(recheck)

    async def _recheck(self, rows: list[AckRow]) -> None:
        """Write again answers refused while their activation is in the ledger now. A
        second refusal was checked against that activation, so it stands. A ledger that
        does not answer leaves them waiting as answers for a missing activation do."""
        try:
            written = await self._ledger.record_acks(rows, only_commanded=True)
        except LedgerError as exc:
            log.warning("%d ack(s) wait for the ledger: %s", len(rows), exc)
            for row in rows:
                self._waiting[row.aid, row.device_id, row.status] = row
            return
        self._stats.acks_rechecked += len(rows)
        again = set(written.refused)
        for row in rows:
            key = (row.aid, row.device_id, row.status)
            if row.device_id in again:
                self._refuse(key, "its activation did not command it")
            else:
                self._refused_since.pop(key, None)

    def _refuse(self, key: tuple[str, str, str], why: str) -> None:
        """Refuse an answer for good: counted and charged to its device, and logged: it is
        a device answering what it was not asked (held to its control budget before it
        gets here, so a flood cannot flood the log) or a camera's evidence lost, whose
        fate must be found in the log (the fault drills quote these lines)."""
        self._refused_since.pop(key, None)
        aid, device_id, status = key
        log.warning("%s's %s answer to %s not written: %s", device_id, status, aid, why)
        self._stats.acks_not_commanded += 1
        self._refusals.charge(device_id, _NOT_COMMANDED)

    async def _activation_missing(self, aid: str) -> bool:
        try:
            return await self._ledger.activation(aid) is None
        except LedgerError:
            return True  # the ledger is away: it may well be written meanwhile

    async def _retry_waiting(self) -> None:
        """Write again the answers that wait for their activation (see above)."""
        if not self._waiting:
            return
        rows = list(self._waiting.values())
        self._waiting.clear()
        await self.write(rows, again=True)  # each is written, waits again, or is refused
        for key in [k for k in self._refused_since if k not in self._waiting]:
            del self._refused_since[key]


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
