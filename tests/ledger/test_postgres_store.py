"""What only the PostgreSQL store has to show: engines on several hosts appending to one
agency's chain at once, one chain per agency, and a lost connection."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from actimesh.broker.mosquitto import free_port
from actimesh.errors import LedgerError
from actimesh.ledger import Ledger
from actimesh.ledger.postgres import PostgresLedger, lock_key, schema_name
from tests.audit.helpers import activation
from tests.ledger.stores import assert_chain_verifies, postgres_records
from tests.ledger.test_store_contract import DECISIONS, ack

SRC = Path(__file__).resolve().parents[2] / "src"


async def _appends(ledger: Ledger, writer: int, count: int) -> None:
    for n in range(count):
        if n % 3 == 0:
            number = writer * 1000 + n
            assert await ledger.record_activation(activation(number), DECISIONS)
            await ledger.record_ack(ack(number))
        else:
            await ledger.record_event("engine/e", "alert", f"w{writer}", "no_ack", {"n": n})


async def test_concurrent_stores_on_one_agency_never_fork_the_chain(
    postgres_url: str, agency: str
) -> None:
    stores = [PostgresLedger(postgres_url, agency=agency) for _ in range(4)]
    # Opened together too: the first creates the schema, the others wait for it.
    await asyncio.gather(*(s.__aenter__() for s in stores))
    try:
        await asyncio.gather(*(_appends(s, w, 30) for w, s in enumerate(stores)))
    finally:
        await asyncio.gather(*(s.__aexit__(None, None, None) for s in stores))
    records = postgres_records(postgres_url, agency)
    assert len(records) == 4 * 40  # per writer: 10 activations with an ack, 20 alerts
    assert_chain_verifies(records)


def test_engine_processes_on_one_agency_never_fork_the_chain(
    postgres_url: str, agency: str
) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from actimesh.ledger.postgres import PostgresLedger

        async def main(url, agency, writer):
            async with PostgresLedger(url, agency=agency) as ledger:
                for n in range(30):
                    await ledger.record_event("engine/p", "alert", writer, "no_ack", {"n": n})

        asyncio.run(main(*sys.argv[1:]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    children = [
        subprocess.Popen([sys.executable, "-c", script, postgres_url, agency, f"p{i}"], env=env)
        for i in range(3)
    ]
    assert [child.wait(timeout=45) for child in children] == [0, 0, 0]
    records = postgres_records(postgres_url, agency)
    assert len(records) == 90
    assert_chain_verifies(records)


async def test_each_agency_has_a_chain_of_its_own(postgres_url: str, agency: str) -> None:
    other = f"{agency}-b"
    async with (
        PostgresLedger(postgres_url, agency=agency) as one,
        PostgresLedger(postgres_url, agency=other) as two,
    ):
        await one.record_activation(activation(1), DECISIONS)
        await two.record_activation(activation(1), DECISIONS)  # the same aid, elsewhere
        await two.record_ack(ack(1))
        assert (await one.head()).seq == 1
        assert (await two.head()).seq == 2
    assert lock_key(schema_name(agency)) != lock_key(schema_name(other))
    assert_chain_verifies(postgres_records(postgres_url, other))


async def test_a_lost_connection_fails_one_call_and_the_next_reconnects(
    postgres_url: str, agency: str
) -> None:
    async with PostgresLedger(postgres_url, agency=agency) as ledger:
        await ledger.record_activation(activation(1), DECISIONS)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"actimesh-ledger/{agency}",),
            )
        with pytest.raises(LedgerError, match="cannot read the head of the chain"):
            await ledger.head()
        await ledger.record_ack(ack(1))
        assert (await ledger.head()).seq == 2


async def test_no_server_is_a_one_line_error(agency: str) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(LedgerError, match="cannot connect to the PostgreSQL ledger") as caught:
        async with PostgresLedger(url, agency=agency, connect_timeout_s=2):
            pass
    assert "\n" not in str(caught.value)


def test_agency_ids_that_cannot_name_a_schema_are_refused() -> None:
    with pytest.raises(LedgerError, match="too long for a PostgreSQL ledger"):
        PostgresLedger("postgresql://db.example/x", agency="a" * 64)
    with pytest.raises(LedgerError, match="agency id"):
        PostgresLedger("postgresql://db.example/x", agency='a"; DROP SCHEMA public; --')


async def test_a_writer_stuck_behind_the_agency_lock_gives_up_in_time(
    postgres_url: str, agency: str
) -> None:
    async with PostgresLedger(postgres_url, agency=agency, statement_timeout_s=0.3) as ledger:
        with psycopg.connect(postgres_url, autocommit=True) as other:
            # Another engine that froze while holding the chain.
            other.execute("SELECT pg_advisory_lock(%s)", (lock_key(schema_name(agency)),))
            started = time.monotonic()
            with pytest.raises(LedgerError, match=r"cannot write alert for bwc1: .*lock timeout"):
                await ledger.record_event("engine/e", "alert", "bwc1", "no_ack", {})
            assert time.monotonic() - started < 5.0
        seq = await ledger.record_event("engine/e", "alert", "bwc1", "no_ack", {})
    assert seq == 1
