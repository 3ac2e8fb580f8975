"""The engine's acknowledgement writer: group commits that lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from actimesh.broker.topics import Topics
from actimesh.errors import LedgerError
from actimesh.ledger import AckRow, AckWrite, DecisionRow, Head, SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers.answers import AckWriter
from tests.integration.harness import build_engine
from tests.ledger.test_sqlite_store import activation
from tests.waiting import eventually

GOOD = AckRow("act-1", "bwc1", "received", 30.0, None, 100.5, 100.6)
#: act-1 commanded these three cameras: their answers are written.
COMMANDED = [DecisionRow(d, "body_cam", True, "proximity") for d in ("bwc1", "bwc2", "bwc3")]


@pytest.mark.logs_exception(LedgerError, reason="one ack is made unwritable on purpose")
async def test_one_bad_ack_does_not_cost_the_others_their_record(tmp_path: Path) -> None:
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        await ledger.record_activation(activation(), COMMANDED)
        engine = build_engine(Topics("am-acks"), 1, ledger, signer=CommandSigner.generate())
        bad = replace(GOOD, device_id="bwc2", received_ts=math.inf)  # not JSON: refused
        await engine.acks.write([GOOD, bad, replace(GOOD, device_id="bwc3")])
        assert {a.device_id for a in await ledger.acks("act-1")} == {"bwc1", "bwc3"}
        assert engine.stats.ledger_failures == 1


class _AwayLedger(SqliteLedger):
    """A ledger that answers nothing for its first ``away`` calls (a database restarting)."""

    def __init__(self, path: Path, away: int) -> None:
        super().__init__(path)
        self.away = away

    def _maybe_away(self) -> None:
        if self.away > 0:
            self.away -= 1
            raise LedgerError("cannot connect to the ledger: connection refused")

    async def record_acks(
        self, acks: Sequence[AckRow], *, only_commanded: bool = False
    ) -> AckWrite:
        self._maybe_away()
        return await super().record_acks(acks, only_commanded=only_commanded)

    async def head(self) -> Head:
        self._maybe_away()
        return await super().head()


async def test_acks_wait_for_a_ledger_that_is_away_and_are_all_written(tmp_path: Path) -> None:
    async with _AwayLedger(tmp_path / "l.sqlite3", away=0) as ledger:
        await ledger.record_activation(activation(), COMMANDED)
        engine = build_engine(Topics("am-acks"), 1, ledger, signer=CommandSigner.generate())
        ledger.away = 6  # three write attempts, each followed by a read that fails too
        rows = [GOOD, replace(GOOD, device_id="bwc2"), replace(GOOD, device_id="bwc3")]
        async with asyncio.timeout(10):
            await engine.acks.write(rows)
        assert ledger.away == 0
        assert {a.device_id for a in await ledger.acks("act-1")} == {"bwc1", "bwc2", "bwc3"}
        assert engine.stats.ledger_failures == 0


async def test_queued_acks_and_a_cancel_are_written_in_order(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await ledger.record_activation(activation(), COMMANDED)
        engine = build_engine(Topics("am-acks"), 1, ledger, signer=CommandSigner.generate())
        cancel = replace(GOOD, status="cancelled", device_ts=102.0, received_ts=102.1)
        rows = [
            (GOOD, None),
            (replace(GOOD, status="recording", device_ts=101.0), None),
            (cancel, "officer 7"),
            (replace(GOOD, device_id="bwc2"), None),
        ]
        for row, by in rows:
            await engine.acks.put(row, by)
        writer = asyncio.create_task(engine.acks.run())
        try:

            async def all_written() -> bool:
                return len(await ledger.acks("act-1")) >= len(rows)

            await eventually(all_written, timeout=5)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        assert [f.by for f in await ledger.false_activations("act-1")] == ["officer 7"]
        assert engine.stats.ledger_failures == 0
    # The chain's order is the order written.
    with contextlib.closing(sqlite3.connect(path)) as db:
        written = db.execute(
            "SELECT component, outcome FROM records WHERE event_type = 'ack' ORDER BY seq"
        ).fetchall()
    assert written == [
        ("device/bwc1", "received"),
        ("device/bwc1", "recording"),
        ("device/bwc1", "cancelled"),
        ("device/bwc2", "received"),
    ]


async def test_an_answer_waits_for_its_activation_written_after_it(tmp_path: Path) -> None:
    # Commands leave before the activation is written, and another replica may be the
    # one writing it: an answer that arrives first is kept until the activation is there.
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        engine = build_engine(Topics("am-acks"), 1, ledger, signer=CommandSigner.generate())
        await engine.acks.put(replace(GOOD, status="recording"))
        await engine.acks.put(replace(GOOD, aid="act-never", device_id="bwc2"))
        writer = asyncio.create_task(engine.acks.run())
        try:
            await asyncio.sleep(0.3)  # the writer has tried, and been refused, once
            assert await ledger.acks("act-1") == []
            await ledger.record_activation(activation(), COMMANDED)  # the other replica

            async def written() -> bool:
                return [a.status for a in await ledger.acks("act-1")] == ["recording"]

            await eventually(written, timeout=5)
            assert engine.stats.acks_not_commanded == 0
            # One whose activation never comes is refused once the wait is over.
            await eventually(lambda: engine.stats.acks_not_commanded == 1, timeout=10)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        assert await ledger.acks("act-never") == []
        assert engine.stats.ledger_failures == 0


async def test_a_device_answering_many_unknown_activations_waits_for_few_of_them(
    tmp_path: Path,
) -> None:
    # A flood of answers for activations nobody wrote: a few wait (a real camera is in a
    # handful of activations at once), the rest are refused at once, each counted and
    # charged to the device, with no ledger read each.
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        engine = build_engine(Topics("am-acks"), 1, ledger, signer=CommandSigner.generate())
        for i in range(100):
            await engine.acks.put(replace(GOOD, aid=f"act-flood-{i}", device_id="thief"))
        writer = asyncio.create_task(engine.acks.run())
        try:
            await eventually(lambda: engine.stats.acks_not_commanded == 100 - 32, timeout=3)
            # The ones that waited are refused once their wait is over, and nothing written.
            await eventually(lambda: engine.stats.acks_not_commanded == 100, timeout=15)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        assert await ledger.acks("act-flood-0") == []


class _RacingLedger(SqliteLedger):
    """A ledger whose next activation is committed right after an acknowledgement write
    has checked it: the order two writers taking the chain's lock in turn can give."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits_after_check: list[DecisionRow] | None = None

    async def record_acks(
        self, acks: Sequence[AckRow], *, only_commanded: bool = False
    ) -> AckWrite:
        written = await super().record_acks(acks, only_commanded=only_commanded)
        decisions, self.commits_after_check = self.commits_after_check, None
        if decisions is not None:
            await self.record_activation(activation(), decisions)
        return written


async def test_answers_refused_just_before_their_activation_was_committed_are_written(
    tmp_path: Path,
) -> None:
    # Seen in the cluster drill: a batch of answers was checked while the activation's
    # write waited for the ledger's lock, and the look that followed found it written,
    # so every camera's answers were refused for good although each was commanded.
    async with _RacingLedger(tmp_path / "l.sqlite3") as ledger:
        engine = build_engine(Topics("am-acks"), 1, ledger, signer=CommandSigner.generate())
        ledger.commits_after_check = COMMANDED
        rows = [replace(GOOD, device_id=d) for d in ("bwc1", "bwc2", "bwc3")]
        rows.append(replace(GOOD, status="recording", device_ts=101.0))
        async with asyncio.timeout(10):
            await engine.acks.write(rows)
        written = {(a.device_id, a.status) for a in await ledger.acks("act-1")}
        assert written == {(r.device_id, r.status) for r in rows}
        assert engine.stats.acks_not_commanded == 0
        assert engine.stats.acks_rechecked == len(rows)
        # A camera the activation did not command is still refused, after one more look.
        await engine.acks.write([replace(GOOD, device_id="thief")])
        assert engine.stats.acks_not_commanded == 1
        assert all(a.device_id != "thief" for a in await ledger.acks("act-1"))


async def test_an_answer_given_again_waits_afresh_for_the_activation_written_next(
    tmp_path: Path,
) -> None:
    # One engine commanded the camera and died before writing the activation; the other
    # handles the device's re-sent trigger seconds later and commands the camera again,
    # which answers again. That copy must wait from its own arrival: kept to the first
    # copy's time, it was refused just before the other engine's write.
    now = [0.0]
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        engine = build_engine(Topics("am-acks"), 1, ledger, signer=CommandSigner.generate())
        await ledger.record_activation(activation("act-2", "e2"), COMMANDED)
        writer = AckWriter(
            ledger=ledger, refusals=engine.refusals, stats=engine.stats, clock=lambda: now[0]
        )
        answer = replace(GOOD, status="recording")

        def marker(n: int) -> AckRow:
            """An answer written at once: seen in the ledger, its batch was handled."""
            return replace(GOOD, aid="act-2", device_id=f"bwc{n}")

        async def handled(row: AckRow) -> None:
            async def written() -> bool:
                return any(a.device_id == row.device_id for a in await ledger.acks(row.aid))

            await eventually(written, timeout=5)

        run = asyncio.create_task(writer.run())
        try:
            await writer.put(answer)  # the first engine's command: no activation yet
            await writer.put(marker(1))
            await handled(marker(1))
            now[0] = 3.9  # the second engine's command, answered again
            await writer.put(answer)
            await writer.put(marker(2))
            await handled(marker(2))
            now[0] = 4.5  # past the first copy's wait, within the second's
            await writer.put(marker(3))
            await handled(marker(3))
            assert engine.stats.acks_not_commanded == 0
            await ledger.record_activation(activation(), COMMANDED)  # the second engine's
            await writer.put(replace(marker(1), status="recording"))

            async def answer_written() -> bool:
                return [a.status for a in await ledger.acks("act-1")] == ["recording"]

            await eventually(answer_written, timeout=5)
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
        assert engine.stats.acks_not_commanded == 0


async def test_answers_wait_past_the_limit_for_an_activation_this_engine_is_still_writing(
    tmp_path: Path,
) -> None:
    # Seen in the cluster drill's stream leader kill: the engine that planned a trigger
    # wrote its activation more than 4 s after the cameras answered, and their answers
    # had been refused by then. An activation this engine is writing is waited for.
    now = [0.0]
    writing = {"act-1"}
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        engine = build_engine(Topics("am-acks"), 1, ledger, signer=CommandSigner.generate())
        await ledger.record_activation(activation("act-2", "e2"), COMMANDED)
        writer = AckWriter(
            ledger=ledger,
            refusals=engine.refusals,
            stats=engine.stats,
            clock=lambda: now[0],
            writing=writing.__contains__,
        )
        planned = replace(GOOD, status="recording")
        elsewhere = replace(GOOD, aid="act-3", status="recording")  # another engine's, or none

        async def written(row: AckRow) -> bool:
            return any(a.device_id == row.device_id for a in await ledger.acks(row.aid))

        run = asyncio.create_task(writer.run())
        try:
            await writer.put(planned)
            await writer.put(elsewhere)
            marker = replace(GOOD, aid="act-2", device_id="bwc2")
            await writer.put(marker)
            await eventually(lambda: written(marker), timeout=5)
            now[0] = 10.0  # far past the limit; a batch makes the writer look again
            marker = replace(GOOD, aid="act-2", device_id="bwc3")
            await writer.put(marker)
            await eventually(lambda: written(marker), timeout=5)
            await eventually(lambda: engine.stats.acks_not_commanded == 1, timeout=5)
            await ledger.record_activation(activation(), COMMANDED)  # the write, at last
            writing.discard("act-1")
            await writer.put(replace(GOOD, aid="act-2", device_id="bwc3", status="recording"))
            await eventually(lambda: written(planned), timeout=5)
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
        assert engine.stats.acks_not_commanded == 1  # only the one nobody here is writing
        assert await ledger.acks("act-3") == []
