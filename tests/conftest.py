"""Fixtures shared by every test package.

Integration tests talk to a real Mosquitto that the suite starts itself on a free
loopback port. One broker serves the whole session; each test gets its own agency id, so
its topics (``am/v1/<agency>/...``) never meet another test's messages (aiomqtt's test
suite isolates tests on one broker with a topic prefix the same way). Tests that restart
or kill the broker take ``fresh_mosquitto`` instead.

Those two brokers admit anonymous clients, explicitly: the tests that use them exercise
the activation path, delivery, dispatch and so on, with clients built without accounts.
Security is tested against ``secure_mosquitto``: the broker as ``actimesh up`` runs it,
with a device registry of the test's own, passwords and the ACL. A PostgreSQL server
(``postgres_url``, :mod:`tests.postgres`) starts the first time a test asks for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig, TlsListener
from actimesh.broker.topics import device_client_id
from actimesh.errors import BrokerNotInstalledError
from actimesh.security import (
    AclPolicy,
    Credentials,
    DeviceCredentials,
    Registry,
    prepare_broker,
)
from tests.guards import (  # noqa: F401 - hooks and an autouse fixture, found by name
    logged_exceptions_fail_the_test,
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)
from tests.postgres import postgres_url  # noqa: F401 - a session fixture, found by name

# Property tests judge the code, not the machine: how fast Hypothesis generates inputs
# (its too_slow check) and how long one example takes (its deadline) depend on the load
# of a shared machine, and failed the suite under load with nothing wrong in the code.
# Every test still has its time limit.
settings.register_profile("actimesh", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("actimesh")


def _start(broker: ManagedMosquitto) -> ManagedMosquitto:
    try:
        broker.start()
    except BrokerNotInstalledError as exc:
        # Fail, not skip: a suite that silently skips its integration tests looks green.
        pytest.fail(str(exc), pytrace=False)
    return broker


def _start_broker(data_dir: Path) -> ManagedMosquitto:
    # insecure_anonymous: these brokers serve the tests of everything but security, whose
    # clients connect without accounts. The secured broker has fixtures of its own below.
    config = MosquittoConfig(data_dir=data_dir, port=free_port(), insecure_anonymous=True)
    return _start(ManagedMosquitto(config))


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedMosquitto]:
    """One real broker for the whole session, on a free loopback port (anonymous)."""
    broker = _start_broker(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[ManagedMosquitto]:
    """A broker of this test's own, for tests that restart, kill or fill it (anonymous)."""
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


# ---------------------------------------------------------------------- secured broker

DISPATCH_DEVICE = "dispatch-console-1"


@dataclass
class SecureBroker:
    """A secured managed broker with a device registry of its own (in ``data_dir``)."""

    broker: ManagedMosquitto
    data_dir: Path
    policy: AclPolicy
    services: Mapping[str, Credentials]

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    def registry(self) -> Registry:
        return Registry.open(self.data_dir)

    def client_id(self, username: str) -> str | None:
        """The client id the broker lets ``username`` connect with: a device's own,
        an integrator's account name, or any (None: a random one) for a service."""
        if username.startswith("svc-"):
            return None
        if username.startswith(("int-", "op-")):
            return username
        return device_client_id(self.policy.agency, username)

    def apply(self) -> None:
        """Render the broker files from the registry and reload the running broker."""
        with self.registry() as reg:
            reg.write_broker_files(self.broker.config.data_dir, self.policy)
        self.broker.reload()

    def add_device(
        self, device_id: str, kind: DeviceKind = DeviceKind.BODY_CAM
    ) -> DeviceCredentials:
        with self.registry() as reg:
            creds = reg.add(device_id, kind)
        self.apply()
        return creds

    def add_integrator(self, name: str, *, telemetry: bool = False) -> Credentials:
        with self.registry() as reg:
            creds = reg.add_integrator(name, telemetry=telemetry)
        self.apply()
        return creds

    def add_operator(self, name: str) -> Credentials:
        with self.registry() as reg:
            creds = reg.add_operator(name)
        self.apply()
        return creds


def start_secure_broker(
    data_dir: Path, agency: str, *, tls: TlsListener | None = None
) -> SecureBroker:
    """Provision a registry in ``data_dir`` and start the secured broker on it."""
    policy = AclPolicy(agency, DISPATCH_DEVICE)
    provisioned = prepare_broker(data_dir, policy)
    config = MosquittoConfig(data_dir=provisioned.broker_dir, port=free_port(), tls=tls)
    broker = _start(ManagedMosquitto(config))
    return SecureBroker(broker, data_dir, policy, provisioned.services)


@pytest.fixture
def secure_mosquitto(tmp_path: Path, agency: str) -> Iterator[SecureBroker]:
    """The broker as ``actimesh up`` runs it: no anonymous access, the registry's
    passwords and ACL for ``agency``, reloadable. Service accounts are provisioned."""
    secure = start_secure_broker(tmp_path / "data", agency)
    try:
        yield secure
    finally:
        secure.broker.stop()
