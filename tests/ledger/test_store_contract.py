"""The ``Ledger`` contract, run against every store: SQLite on a file, PostgreSQL on the
suite's own server. Each test ends with the whole chain read back and verified (the
``store`` fixture)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actimesh.errors import LedgerError, NotCommandedError
from actimesh.ledger import (
    GENESIS_HASH,
    KEEP_TYPES,
    AckRow,
    AckWrite,
    DecisionRow,
    EventType,
    Head,
    Ledger,
    SqliteLedger,
    open_ledger,
)
from actimesh.ledger.postgres import PostgresLedger
from tests.audit.helpers import activation
from tests.ledger.stores import StoreUnderTest, postgres_store, sqlite_store

T0 = 1_600_000_000.0
DAY = 86_400.0

DECISIONS = [
    DecisionRow("bwc1", "body_cam", True, "paired"),
    DecisionRow("bwc2", "body_cam", True, "proximity", 9.0, 0.0, 0.5, 0.0),
    DecisionRow("bwc3", "body_cam", False, "too_far", 9.3, 0.0, 0.5, 0.0),
]


def ack(n: int, device: str = "bwc1", status: str = "recording", ts: float = T0) -> AckRow:
    return AckRow(f"act-{n}", device, status, 30.0, f"rec-{n}", ts + n + 1.0, ts + n + 1.1)


def cancel(n: int, device: str = "bwc1", ts: float = T0) -> AckRow:
    return AckRow(f"act-{n}", device, "cancelled", 30.0, f"rec-{n}", ts + n + 4.5, ts + n + 4.6)


# ---------------------------------------------------------------------- writes
async def test_activation_is_written_once_and_read_back(store: StoreUnderTest) -> None:
    async with store.open() as ledger:
        assert await ledger.head() == Head(0, GENESIS_HASH)
        assert await ledger.record_activation(activation(1), DECISIONS)
        assert not await ledger.record_activation(activation(1), DECISIONS)
        found = await ledger.activation("act-1")
        assert await ledger.activation("act-2") is None
        assert (await ledger.head()).seq == 1
    assert found is not None
    row, decisions = found
    assert row == activation(1)
    assert [d.device_id for d in decisions] == ["bwc1", "bwc2", "bwc3"]
    assert set(decisions) == set(DECISIONS)
    (record,) = store.records()
    assert (record.event_type, record.subject, record.outcome) == (
        "activation",
        "act-1",
        "commanded",
    )
    assert record.component == "engine/engine-1"


async def test_each_camera_keeps_the_position_of_its_judged_fix(store: StoreUnderTest) -> None:
    placed = [
        DecisionRow("bwc1", "body_cam", True, "paired"),  # no fix judged: no position
        DecisionRow("bwc2", "body_cam", True, "proximity", 9.0, 0.0, 0.5, 3.0, 51.00008, -114.0),
        DecisionRow("bwc3", "body_cam", False, "offline", 40.0, None, 9.0, 5.0, 51.0, -114.0006),
    ]
    async with store.open() as ledger:
        assert await ledger.record_activation(activation(1), placed)
        found = await ledger.activation("act-1")
    assert found is not None
    assert set(found[1]) == set(placed)
    (record,) = store.records()
    body = json.loads(record.body or "")
    by_id = {d["device_id"]: d for d in body["decisions"]}
    # In the hashed record; a decision without a position has the body it always had.
    assert (by_id["bwc2"]["lat"], by_id["bwc2"]["lon"]) == (51.00008, -114.0)
    assert (by_id["bwc3"]["lat"], by_id["bwc3"]["lon"]) == (51.0, -114.0006)
    assert "lat" not in by_id["bwc1"]
    assert "lon" not in by_id["bwc1"]


async def test_acks_redelivered_and_not_commanded_are_not_written(store: StoreUnderTest) -> None:
    async with store.open() as ledger:
        await ledger.record_activation(activation(1), DECISIONS)
        await ledger.record_ack(ack(1))
        await ledger.record_ack(ack(1))  # redelivered
        assert await ledger.record_acks([]) == AckWrite(0)
        wrote = await ledger.record_acks(
            [ack(1, "bwc2"), ack(1, "bwc3"), ack(1, "bwc3", "failed"), ack(1)],
            only_commanded=True,
        )
        assert wrote == AckWrite(1, ("bwc3", "bwc3"))
        assert wrote.not_commanded == 2
        # Without only_commanded, any camera's answer is kept.
        assert await ledger.record_acks([ack(1, "bwc3")]) == AckWrite(1)
        acks = await ledger.acks("act-1")
        assert await ledger.recording_aids("bwc1", "rec-1") == {"act-1"}
        assert await ledger.recording_aids("bwc1", "rec-9") == set()
        head = await ledger.head()
    assert [(a.device_id, a.status) for a in acks] == [
        ("bwc1", "recording"),
        ("bwc2", "recording"),
        ("bwc3", "recording"),
    ]
    records = store.records()
    assert [r.event_type for r in records] == ["activation", "ack", "ack", "ack"]
    assert head == Head(records[-1].seq, records[-1].hash)


async def test_cancel_is_an_ack_and_a_false_activation(store: StoreUnderTest) -> None:
    async with store.open() as ledger:
        await ledger.record_activation(activation(1), DECISIONS)
        seq = await ledger.record_cancel(cancel(1), "Cst. Rivera")
        assert await ledger.record_cancel(cancel(1), "Cst. Rivera") is None  # redelivered
        assert [a.status for a in await ledger.acks("act-1")] == ["cancelled"]
        (false,) = await ledger.false_activations("act-1")
        assert await ledger.false_activations("act-2") == []
        # Before its activation is known: no event time.
        await ledger.record_cancel(cancel(7), "Cst. Rivera")
        orphan = (await ledger.false_activations())[-1]
    assert seq is not None
    assert false.seq == seq
    assert (false.aid, false.device_id, false.by) == ("act-1", "bwc1", "Cst. Rivera")
    assert false.after_event_s == pytest.approx(4.5)
    assert (false.eid, false.event_type, false.recording) == ("e1", "taser_draw", "rec-1")
    assert (orphan.aid, orphan.after_event_s, orphan.eid) == ("act-7", None, None)
    kinds = [(r.event_type, r.subject) for r in store.records()]
    assert kinds == [
        ("activation", "act-1"),
        ("ack", "act-1"),
        ("false_activation", "bwc1"),
        ("ack", "act-7"),
        ("false_activation", "bwc1"),
    ]


async def test_cancel_from_a_camera_not_commanded_writes_nothing(store: StoreUnderTest) -> None:
    async with store.open() as ledger:
        await ledger.record_activation(activation(1), DECISIONS)
        with pytest.raises(NotCommandedError, match="bwc3 was not commanded in act-1"):
            await ledger.record_cancel(cancel(1, "bwc3"), "Cst. Rivera", only_commanded=True)
        with pytest.raises(LedgerError, match="needs a cancelled ack"):
            await ledger.record_cancel(ack(1), "Cst. Rivera")
        with pytest.raises(LedgerError, match="who cancelled"):
            await ledger.record_cancel(cancel(1), "")
        assert await ledger.acks("act-1") == []
        assert await ledger.false_activations() == []
        assert (await ledger.head()).seq == 1


async def test_record_event_appends_and_refuses_what_the_ledger_owns(
    store: StoreUnderTest,
) -> None:
    async with store.open() as ledger:
        seq = await ledger.record_event(
            "engine/engine-1", "alert", "bwc1", "no_ack", {"aid": "act-1"}, at=T0
        )
        for own in (EventType.ACTIVATION, EventType.ACK, EventType.FALSE_ACTIVATION, *KEEP_TYPES):
            with pytest.raises(LedgerError, match="written by the ledger itself"):
                await ledger.record_event("engine/e", own, "bwc1", "x", {})
        with pytest.raises(LedgerError, match="subject must be a non-empty string"):
            await ledger.record_event("engine/e", "alert", "", "x", {})
        with pytest.raises(LedgerError, match="cannot append a alert record"):
            await ledger.record_event("engine/e", "alert", "bwc1", "x", {"v": math.nan})
        assert await ledger.head() == Head(seq, store.records()[-1].hash)
    (record,) = store.records()
    assert (record.seq, record.time) == (1, "2020-09-13T12:26:40.000000Z")
    assert record.body == '{"aid":"act-1"}'


async def test_case_links_keep_the_first_and_refuse_unknown_activations(
    store: StoreUnderTest,
) -> None:
    async with store.open() as ledger:
        await ledger.record_activation(activation(1), DECISIONS)
        await ledger.record_activation(activation(2), DECISIONS)
        seq, linked = await ledger.link_case("case-42", "act-1", "Det. Chen", at=T0 + DAY)
        assert linked
        assert await ledger.link_case("case-42", "act-1", "Det. Chen") == (seq, False)
        with pytest.raises(LedgerError, match="no activation 'act-9'"):
            await ledger.link_case("case-42", "act-9", "Det. Chen")
        with pytest.raises(LedgerError, match="case id"):
            await ledger.link_case("case 42!", "act-1", "Det. Chen")
        states = await ledger.activation_states(["act-1", "act-2", "act-9"])
    assert states == {"act-1": "linked", "act-2": "kept", "act-9": "unknown"}
    assert [r.event_type for r in store.records()] == ["activation", "activation", "case_link"]


async def test_record_retention_is_found_by_subject(store: StoreUnderTest) -> None:
    async with store.open() as ledger:
        assert not await ledger.retention_recorded("bwc1/rec-1")
        seq = await ledger.record_retention("bwc1/rec-1", "deleted", {"folder": "rec-1"})
        assert await ledger.retention_recorded("bwc1/rec-1")
        assert not await ledger.retention_recorded("bwc1/rec-2")
    (record,) = store.records()
    assert (record.seq, record.event_type, record.outcome) == (seq, "retention_delete", "deleted")


async def test_redact_expired_keeps_case_linked_and_the_chain_verifying(
    store: StoreUnderTest,
) -> None:
    now = T0 + 500 * DAY
    async with store.open() as ledger:
        for n in (1, 2):  # old
            await ledger.record_activation(activation(n), DECISIONS)
            await ledger.record_ack(ack(n))
        await ledger.record_cancel(cancel(2, "bwc2"), "Cst. Rivera")
        await ledger.record_activation(activation(3, now - DAY), DECISIONS)  # recent
        await ledger.link_case("case-42", "act-1", "Det. Chen", at=T0 + 10)
        before = store.records()

        dry = await ledger.redact_expired(now - 30 * DAY, now=now, dry_run=True)
        assert store.records() == before
        assert [(r.subject, r.record_seq) for r in dry] == [("act-2", None)]

        (done,) = await ledger.redact_expired(now - 30 * DAY, now=now)
        assert (done.subject, done.aid) == ("act-2", "act-2")
        assert done.rows_deleted == {"activations": 1, "decisions": 3, "acks": 2}
        assert done.recordings == ("bwc1/rec-2", "bwc2/rec-2")
        assert await ledger.redact_expired(now - 30 * DAY, now=now) == []
        states = await ledger.activation_states(["act-1", "act-2", "act-3"])
        assert await ledger.activation("act-2") is None
        assert await ledger.acks("act-2") == []
        assert await ledger.recording_aids("bwc1", "rec-2") == set()
        assert await ledger.false_activations() == []
        assert await ledger.retention_recorded("act-2")
        assert await ledger.activation_ids() == ["act-1", "act-3"]
        with pytest.raises(LedgerError, match="deleted by retention"):
            await ledger.link_case("case-43", "act-2", "Det. Chen")
    assert states == {"act-1": "linked", "act-2": "redacted", "act-3": "kept"}
    after = store.records()
    redacted = {r.seq for r in after if r.redacted}
    assert redacted == set(done.seqs) == {3, 4, 5, 6}
    assert after[-1].seq == done.record_seq
    assert after[-1].event_type == "retention_delete"


async def test_find_and_recent_events_include_merged_triggers(store: StoreUnderTest) -> None:
    async with store.open() as ledger:
        await ledger.record_activation(activation(1), DECISIONS)
        merged = {"aid": "act-1", "src": "cew2", "eid": "e9", "event_ts": T0 + 1.5}
        await ledger.record_event("engine/engine-1", "merge", "act-1", "merged", merged)
        assert await ledger.find("cew1", "e1") == "act-1"
        assert await ledger.find("cew2", "e9") == "act-1"
        assert await ledger.find("cew2", "e1") is None
        assert sorted(await ledger.recent_events(T0)) == [
            ("cew1", "e1", "act-1"),
            ("cew2", "e9", "act-1"),
        ]
        assert await ledger.recent_events(T0 + 1.2) == [("cew2", "e9", "act-1")]
        assert await ledger.recent_events(T0 + 2) == []


async def test_activation_ids_by_event_time(store: StoreUnderTest) -> None:
    async with store.open() as ledger:
        for n in (3, 1, 2):
            await ledger.record_activation(activation(n), DECISIONS)
        assert await ledger.activation_ids() == ["act-1", "act-2", "act-3"]
        assert await ledger.activation_ids(since=T0 + 2) == ["act-2", "act-3"]
        assert await ledger.activation_ids(limit=1) == ["act-1"]


async def test_an_existing_ledger_survives_reopening(store: StoreUnderTest) -> None:
    async with store.open() as ledger:
        await ledger.record_activation(activation(1), DECISIONS)
    async with store.open(create=False) as ledger:
        await ledger.record_ack(ack(1))
        assert (await ledger.head()).seq == 2


async def test_a_missing_ledger_is_not_created_by_tools(store: StoreUnderTest) -> None:
    with pytest.raises(LedgerError, match="no ledger"):
        async with store.open(create=False):
            pass
    assert store.records() == []


# ---------------------------------------------------------------------- both stores alike
async def test_both_stores_write_byte_identical_chains(
    tmp_path: Path, postgres_url: str, agency: str
) -> None:
    stores = [sqlite_store(tmp_path / "l.sqlite3"), postgres_store(postgres_url, agency)]
    for under_test in stores:
        async with under_test.open() as ledger:
            await _same_writes(ledger)
    sqlite_records, postgres_records = (s.records() for s in stores)
    assert len(sqlite_records) == 7
    assert postgres_records == sqlite_records


async def _same_writes(ledger: Ledger) -> None:
    await ledger.record_activation(activation(1), DECISIONS)
    await ledger.record_acks([ack(1), ack(1, "bwc2")])
    await ledger.record_cancel(cancel(1), "Cst. Rivera")
    await ledger.record_event("engine/engine-1", "alert", "bwc3", "no_ack", {"aid": "act-1"}, at=T0)
    await ledger.link_case("case-42", "act-1", "Det. Chen", at=T0 + DAY)


# ---------------------------------------------------------------------- choosing a store
def test_open_ledger_chooses_the_store_by_location(tmp_path: Path) -> None:
    assert isinstance(open_ledger(tmp_path / "l.sqlite3"), SqliteLedger)
    for url in ("postgresql://db.example/actimesh", "postgres://db.example/actimesh"):
        chosen = open_ledger(url, agency="calgary-ps", create=False)
        assert isinstance(chosen, PostgresLedger)
        assert (chosen.agency, chosen.create, chosen.schema) == (
            "calgary-ps",
            False,
            "am_calgary-ps",
        )
    with pytest.raises(LedgerError, match="one chain per agency: give the agency id"):
        open_ledger("postgresql://db.example/actimesh")
