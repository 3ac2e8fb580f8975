"""Each ledger store in turn, for the contract every store keeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ledger.stores import (
    StoreUnderTest,
    assert_chain_verifies,
    postgres_store,
    sqlite_store,
)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path, agency: str) -> Iterator[StoreUnderTest]:
    """Each store in turn (the PostgreSQL server starts only when asked for); after the
    test, its whole chain must read back verified."""
    if request.param == "sqlite":
        under_test = sqlite_store(tmp_path / "ledger.sqlite3")
    else:
        under_test = postgres_store(request.getfixturevalue("postgres_url"), agency)
    yield under_test
    assert_chain_verifies(under_test.records())
