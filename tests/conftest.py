"""Fixtures shared by every test package.

Integration tests talk to a real Mosquitto that the suite starts itself on a free
loopback port. One broker serves the whole session; each test gets its own agency id, so
its topics (``am/v1/<agency>/...``) never meet another test's messages (aiomqtt's test
suite isolates tests on one broker with a topic prefix the same way). Tests that restart
or kill the broker take ``fresh_mosquitto`` instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from actimesh.broker.mosquitto import ManagedMosquitto, MosquittoConfig, free_port
from actimesh.errors import BrokerNotInstalledError


def _start_broker(data_dir: Path) -> ManagedMosquitto:
    broker = ManagedMosquitto(MosquittoConfig(data_dir=data_dir, port=free_port()))
    try:
        broker.start()
    except BrokerNotInstalledError as exc:
        # Fail, not skip: a suite that silently skips its integration tests looks green.
        pytest.fail(str(exc), pytrace=False)
    return broker


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedMosquitto]:
    """One real broker for the whole session, on a free loopback port."""
    broker = _start_broker(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[ManagedMosquitto]:
    """A broker of this test's own, for tests that restart, kill or fill it."""
    broker = _start_broker(tmp_path / "mosquitto")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def broker_url(mosquitto: ManagedMosquitto) -> str:
    """``mqtt://127.0.0.1:PORT`` of the session broker."""
    return mosquitto.url


@pytest.fixture
def broker_host(mosquitto: ManagedMosquitto) -> str:
    return mosquitto.host


@pytest.fixture
def broker_port(mosquitto: ManagedMosquitto) -> int:
    return mosquitto.port


@pytest.fixture
def agency() -> str:
    """An agency id of this test's own: its topics are not shared with any other test."""
    return f"t{uuid.uuid4().hex[:10]}"
