"""Cameras' answers to commands, written to the ledger in group commits.

A synced write per answer on the intake would hold up the trigger events queued behind
it: each trigger brings two answers per camera (``received``, then ``recording``), and
one synced write each made the ledger thread the busiest part of the engine at 100,000
devices. So answers are queued, and whatever arrived while the last transaction was
syncing goes into the next one.

Only an answer from a camera its activation commanded is written, checked against the
ledger (which every engine shares), never against what this engine commanded: a device
cannot write answers for activations that did not command it, and an engine writes the
answers to another replica's commands. Commands leave before their activation is
written, so an answer refused because its activation is not there yet waits for it,
bounded in time and number; one refused while the activation was being committed is
written once more. Kept apart from :mod:`.persistence`, the activations' writer: a
concept of its own, with its own queue and waiting rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from actimesh.errors import LedgerError, NotCommandedError
from actimesh.ledger import AckRow, Ledger
from actimesh.triggers.refusals import Refusals
from actimesh.triggers.stats import EngineStats

__all__ = ["AckWriter"]

log = logging.getLogger(__name__)

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


class AckWriter:
    """Writes cameras' acknowledgements (see the module). ``await run()`` in the
    engine's task group."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        refusals: Refusals,
        stats: EngineStats,
        clock: Callable[[], float] = time.monotonic,
        writing: Callable[[str], bool] = lambda _aid: False,
    ) -> None:
        self._ledger = ledger
        self._refusals = refusals
        self._stats = stats
        #: Measures how long an answer has waited for its activation.
        self._clock = clock
        #: Whether this engine planned an activation and is still writing it: its
        #: cameras' answers wait for that write, however long it takes.
        self._writing = writing
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
        there or ``_ACK_WAIT_FOR_ACTIVATION_S`` has passed, or, for an activation this
        engine planned, until its write has finished, however late: seen across a
        JetStream stream leader kill, the answers to one activation refused at 4 s, before
        the engine that planned it had written it (what held the write up that long is not
        checked; activations are written in order, each record published after its write,
        and the broker is slow to acknowledge during the election). One whose activation is
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
                and (now - since < _ACK_WAIT_FOR_ACTIVATION_S or self._writing(row.aid))
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
