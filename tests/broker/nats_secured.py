"""A secured NATS cluster for tests: the accounts of a fleet rendered as the registry
renders them (:func:`~actimesh.security.acl.render_access`, then
:func:`~actimesh.security.nats_access.nats_access`), with passwords this module knows
(:func:`password_of`), so a test logs in a device or the engine by its name."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path

from actimesh.broker.client import TlsSettings
from actimesh.broker.messages import DeviceKind
from actimesh.broker.nats import NatsCluster, NatsTransport
from actimesh.broker.nats.auth import (
    ConnectionType,
    NatsAccess,
    NatsUser,
    bcrypt_hash,
    native_grants,
)
from actimesh.broker.nats.cluster import NatsTls
from actimesh.broker.topics import device_client_id
from actimesh.security.acl import (
    SERVICE_DISPATCH,
    SERVICE_ENGINE,
    AccountRole,
    AclAccount,
    AclDevice,
    AclPolicy,
    render_access,
)
from actimesh.security.nats_access import nats_access

__all__ = [
    "DISPATCH",
    "ENGINE",
    "TESTER",
    "access_for",
    "engine_transport",
    "mqtt_login",
    "password_of",
    "secured_cluster",
]

ENGINE = SERVICE_ENGINE
DISPATCH = SERVICE_DISPATCH
#: A native client that may publish and subscribe on every topic of every agency: for
#: tests of the transport's mechanics (what plays a device or a reader on NATS). No
#: role of the registry has it.
TESTER = "test-native"
_SALT = secrets.token_urlsafe(12)
_HASHES: dict[str, str] = {}


def password_of(name: str) -> str:
    """The password of account ``name`` in every cluster this module secures."""
    return f"{name}-{_SALT}"


def _hash(name: str) -> str:
    if name not in _HASHES:
        _HASHES[name] = bcrypt_hash(password_of(name))
    return _HASHES[name]


def access_for(
    agency: str,
    devices: Iterable[tuple[str, DeviceKind]],
    *,
    integrators: Iterable[str] = (),
    telemetry: bool = False,
    tester: bool = False,
    dispatch_device: str = "dispatch-1",
    event_kinds: frozenset[str] | None = None,
) -> NatsAccess:
    """The engine, dispatch, ``devices`` (id, kind) and ``integrators`` of ``agency`` (granted
    every device's telemetry if ``telemetry``), and :data:`TESTER` if ``tester``."""
    policy = AclPolicy(agency, dispatch_device, event_kinds)
    fleet = [AclDevice(d, kind=k.value) for d, k in devices]
    accounts = [
        AclAccount(ENGINE, AccountRole.ENGINE),
        AclAccount(DISPATCH, AccountRole.DISPATCH),
        *(AclAccount(i, AccountRole.INTEGRATOR, telemetry) for i in integrators),
    ]
    access = render_access(policy, fleet, accounts)
    users = nats_access(access, {c.username: _hash(c.username) for c in access.clients})
    if not tester:
        return users
    publish, subscribe = native_grants(["am.>"], ["am.>"])
    wide = NatsUser(
        TESTER, _hash(TESTER), ("am.>", *publish), ("am.>", *subscribe), (ConnectionType.STANDARD,)
    )
    return users.with_users([wide])


def secured_cluster(
    data_dir: Path, access: NatsAccess, *, size: int, tls: NatsTls | None = None
) -> NatsCluster:
    return NatsCluster(data_dir, size=size, access=access, tls=tls)


def engine_transport(
    cluster: NatsCluster,
    node: int = 0,
    *,
    tls: TlsSettings | None = None,
    ack_wait_s: float = 30.0,
    user: str = ENGINE,
) -> NatsTransport:
    """The engine's transport to ``node``, logged in as ``svc-engine`` (or ``user``)."""
    return NatsTransport(
        [cluster.nodes[node].nats_url],
        user=user,
        password=password_of(user),
        tls=tls,
        ack_wait_s=ack_wait_s,
    )


def mqtt_login(agency: str, device_id: str) -> tuple[str, str, str]:
    """(client id, username, password) of device ``device_id``."""
    return device_client_id(agency, device_id), device_id, password_of(device_id)
