"""Credentials for everything actimesh starts itself, before it starts the broker.

``actimesh up``, ``actimesh drill`` (and ``--faults``) and ``actimesh bench`` run a
managed broker and connect their own processes to it: the engine, dispatch, the
terminal monitor, simulated devices, and the benchmark's load generator. Each gets its
own account, with exactly the ACL of its role, so that these runs exercise the same
secured broker an operator runs. :func:`prepare_broker` does it in one step:

1. new passwords for the service accounts (also written to ``{data_dir}/secrets/``);
2. the simulated fleet registered with fresh credentials (and any simulated device of
   an earlier run that is not simulated any more removed);
3. optionally the load generator's account;
4. the broker's ``passwd``, ``access.json`` and ``admin`` rendered into the broker folder.

It is synchronous (SQLite, PBKDF2, key generation: about 0.1 ms per device); call it
with :func:`asyncio.to_thread` from async code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from actimesh.broker.client import TlsSettings
from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import ManagedMosquitto
from actimesh.broker.nats.auth import render_authorization
from actimesh.broker.nats.cluster import AUTHORIZATION_NAME
from actimesh.broker.nats.hosts import DEFAULT_HOSTS, ROUTES_NAME, routes_config
from actimesh.broker.reload import reload_managed_broker
from actimesh.errors import BrokerError, SecurityError
from actimesh.private import write_private
from actimesh.security.acl import AclPolicy
from actimesh.security.nats_access import apply_to_cluster, registry_nats_access
from actimesh.security.passwords import generate_password
from actimesh.security.registry import (
    SECRETS_DIR,
    BrokerFiles,
    Credentials,
    DeviceCredentials,
    DeviceSpec,
    Registry,
)

__all__ = [
    "BROKER_DIR",
    "ROUTE_SECRET",
    "AgentLike",
    "BrokerEndpoints",
    "ClusterAuth",
    "ClusterQuarantine",
    "DeviceLike",
    "Provisioned",
    "RegistryQuarantine",
    "apply_to_broker",
    "credential_lines",
    "prepare_broker",
    "prepare_cluster_auth",
    "provision_agents",
    "provision_fleet",
    "specs_of",
]

log = logging.getLogger(__name__)

#: The managed broker's folder inside a data directory: its config, log, database,
#: ``passwd``, ``access.json``, ``dynsec.json``, ``admin`` and pid file.
BROKER_DIR = "broker"


class DeviceLike(Protocol):
    """What :func:`specs_of` reads from a device agent."""

    @property
    def device_id(self) -> str: ...
    @property
    def kind(self) -> DeviceKind: ...
    @property
    def unit(self) -> str | None: ...
    @property
    def paired(self) -> tuple[str, ...]: ...


class _Reconfigurable(Protocol):
    def reconfigure(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
    ) -> None: ...


class AgentLike(DeviceLike, Protocol):
    """A device agent: its identity and the MQTT link it logs in with."""

    @property
    def link(self) -> _Reconfigurable: ...


def specs_of(agents: Iterable[DeviceLike]) -> list[DeviceSpec]:
    """Registry specs of device agents (id, kind, unit, paired devices)."""
    return [DeviceSpec(a.device_id, a.kind, a.unit, tuple(a.paired)) for a in agents]


@dataclass(frozen=True, slots=True)
class Provisioned:
    """The result of :func:`prepare_broker`: where the files are and who logs in how."""

    broker_dir: Path
    files: BrokerFiles
    services: Mapping[str, Credentials] = field(repr=False)
    devices: Mapping[str, DeviceCredentials] = field(repr=False)
    loadgen: Credentials | None = field(default=None, repr=False)

    def service(self, account: str) -> Credentials:
        """The credentials of service ``account`` (``svc-engine`` …)."""
        try:
            return self.services[account]
        except KeyError:
            raise SecurityError(f"{account} is not a service account") from None

    def loadgen_login(self) -> Credentials:
        """The load generator's credentials (provisioned with ``loadgen=True``)."""
        if self.loadgen is None:
            raise SecurityError("the load generator was not provisioned (loadgen=True)")
        return self.loadgen

    def device(self, device_id: str) -> DeviceCredentials:
        """The credentials provisioned for simulated device ``device_id``."""
        try:
            return self.devices[device_id]
        except KeyError:
            raise SecurityError(f"{device_id} was not provisioned") from None


def prepare_broker(
    data_dir: Path,
    policy: AclPolicy,
    *,
    devices: Sequence[DeviceSpec] = (),
    loadgen: bool = False,
    cluster_logins: bool = False,
) -> Provisioned:
    """Provision everything a run of actimesh starts, and render the broker's files.

    ``devices`` is the simulated fleet of this run (empty: none, and any left from an
    earlier run is removed). Operator-registered devices and integrators are kept.
    ``cluster_logins``: the simulated fleet may also log in to a NATS cluster
    (:meth:`~actimesh.security.registry.Registry.provision_simulated`).
    """
    broker_dir = data_dir / BROKER_DIR
    with Registry.open(data_dir) as registry:
        services = registry.ensure_service_accounts(data_dir / SECRETS_DIR)
        creds = registry.provision_simulated(devices, cluster_logins=cluster_logins)
        gen = registry.ensure_loadgen() if loadgen else None
        files = registry.write_broker_files(broker_dir, policy)
    return Provisioned(broker_dir, files, services, creds, gen)


#: The secret (``secrets/{ROUTE_SECRET}.password``) the hosts of a cluster give each other
#: on their routes: made once, kept, so that every rendering of ``routes.conf`` agrees.
ROUTE_SECRET = "nats-route"  # noqa: S105 - a file name, not a password


@dataclass(frozen=True, slots=True)
class ClusterAuth:
    """What :func:`prepare_cluster_auth` wrote, and who the nodes admit."""

    authorization: Path
    routes: Path
    users: tuple[str, ...]
    secrets_dir: Path


def prepare_cluster_auth(
    data_dir: Path, policy: AclPolicy, out_dir: Path, hosts: Sequence[str] = DEFAULT_HOSTS
) -> ClusterAuth:
    """The files every host of a deployed NATS cluster includes, from the registry of
    ``data_dir`` (``actimesh cluster auth``): ``authorization.conf``, every account as
    its user with its role's grants, and ``routes.conf``, the route login and the routes
    to ``hosts``. The service accounts get passwords if they have none yet (kept
    otherwise: the services on other hosts read them from their files, in
    ``secrets/``). ``policy`` is used only if the registry has none yet."""
    secrets_dir = data_dir / SECRETS_DIR
    with Registry.open(data_dir) as registry:
        registry.ensure_service_accounts(secrets_dir, keep_existing=True)
        policy = registry.policy() or policy
        registry.write_broker_files(data_dir / BROKER_DIR, policy)  # remembers the policy
        access = registry_nats_access(registry, policy)
    route_file = secrets_dir / f"{ROUTE_SECRET}.password"
    if not route_file.is_file():
        write_private(route_file, generate_password() + "\n")
    route_password = route_file.read_text(encoding="utf-8").strip()
    out_dir.mkdir(parents=True, exist_ok=True)
    auth = ClusterAuth(
        out_dir / AUTHORIZATION_NAME,
        out_dir / ROUTES_NAME,
        tuple(u.name for u in access.users),
        secrets_dir,
    )
    write_private(auth.authorization, render_authorization(access))
    write_private(auth.routes, routes_config(route_password, hosts))
    return auth


def provision_fleet(data_dir: Path, devices: Sequence[DeviceSpec]) -> dict[str, DeviceCredentials]:
    """Register a simulated fleet in the registry of ``data_dir`` (fresh credentials for
    each device) and re-render the broker files with the policy ``actimesh up`` last
    used. The caller reloads the running broker."""
    with Registry.open(data_dir) as registry:
        creds = registry.provision_simulated(devices)
        registry.write_broker_files(data_dir / BROKER_DIR)
    return creds


async def provision_agents(data_dir: Path, agents: Sequence[AgentLike]) -> None:
    """Register ``agents`` as the simulated fleet of ``data_dir`` and log each one in as
    itself from its next connection. The caller then reloads the broker (the agents
    must not have started yet, or they retry until it has)."""
    creds = await asyncio.to_thread(provision_fleet, data_dir, specs_of(agents))
    for agent in agents:
        agent.link.reconfigure(username=agent.device_id, password=creds[agent.device_id].password)


def apply_to_broker(data_dir: Path, policy: AclPolicy) -> int | None:
    """Re-render the broker files of ``data_dir`` from its registry and reload the managed
    broker running there, if one is. Returns its pid, or None when none runs (the files
    apply at its next start).

    ``policy`` is used only if ``actimesh up`` has never rendered the files: otherwise
    the agency and dispatch device it used are kept.
    """
    with Registry.open(data_dir) as registry:
        registry.write_broker_files(data_dir / BROKER_DIR, registry.policy() or policy)
    pid = reload_managed_broker(data_dir / BROKER_DIR)
    apply_to_cluster(data_dir, policy)  # and to its NATS cluster, if one was started there
    return pid


class RegistryQuarantine:
    """Disables a flooding device in the registry of ``data_dir`` and applies it to the
    managed broker live (the engine's :class:`~actimesh.triggers.quarantine.Quarantine`)."""

    def __init__(self, data_dir: Path, broker: ManagedMosquitto) -> None:
        self.data_dir = data_dir
        self.broker = broker

    def _known(self, device_id: str) -> None:
        with Registry.open(self.data_dir) as registry:
            registry.get(device_id)  # a device the registry does not know: SecurityError

    def _disable(self, device_id: str, reason: str) -> bool:
        with Registry.open(self.data_dir) as registry:
            changed = registry.disable(device_id, reason)
            if changed:
                registry.write_broker_files(self.data_dir / BROKER_DIR)
        return changed

    async def quarantine(self, device_id: str, reason: str) -> bool:
        await asyncio.to_thread(self._known, device_id)
        # The broker first, with one command: every millisecond the flood goes on is a
        # backlog other officers' triggers wait behind. Then the registry, which keeps
        # it disabled across restarts. The broker is reloaded only if that command
        # failed: a SIGHUP re-reads the password file and re-checks every connected
        # client, a pause the whole broker takes, in the middle of an attack, for a
        # change the plugin has already made.
        try:
            await self.broker.adisable(device_id)
        except BrokerError as exc:
            log.warning("quarantine of %s: direct disable failed (%s); syncing", device_id, exc)
            direct = False
        else:
            direct = True
        changed = await asyncio.to_thread(self._disable, device_id, reason)
        if changed and not direct:
            await self.broker.areload()
        return changed


class ClusterQuarantine:
    """Disables a flooding device in the registry of ``data_dir`` and applies it to the
    NATS cluster in ``data_dir/nats`` live (the engine's
    :class:`~actimesh.triggers.quarantine.Quarantine` on a cluster).

    The reload that applies it has the auth callouts re-authorize every connected
    client (broker/nats/callout.py), which refuses the disabled device and disconnects
    it on every node; its next logins are refused until ``actimesh devices enable``.
    With no callout answering, the registry keeps it disabled and the BrokerError says
    so (the engine counts a failed quarantine)."""

    def __init__(self, data_dir: Path, policy: AclPolicy) -> None:
        self.data_dir = data_dir
        self.policy = policy

    def _disable(self, device_id: str, reason: str) -> bool:
        with Registry.open(self.data_dir) as registry:
            changed = registry.disable(device_id, reason)  # unknown device: SecurityError
        if changed and apply_to_cluster(self.data_dir, self.policy) is None:
            raise BrokerError(f"no NATS cluster in {self.data_dir} to disable {device_id} on")
        return changed

    async def quarantine(self, device_id: str, reason: str) -> bool:
        return await asyncio.to_thread(self._disable, device_id, reason)


@dataclass(frozen=True, slots=True)
class BrokerEndpoints:
    """Where a device reaches the managed broker."""

    plain: str
    tls: str | None = None
    ca: Path | None = None


def credential_lines(
    creds: Credentials | DeviceCredentials,
    endpoints: BrokerEndpoints,
    *,
    engine_key: str | None = None,
) -> list[str]:
    """What ``actimesh devices add|rotate`` and ``integrators add`` print, once."""
    lines = [f"  username     {creds.username}", f"  password     {creds.password}"]
    if isinstance(creds, DeviceCredentials):
        lines += [
            f"  private key  {creds.private_key}  (Ed25519, raw hex: signs recording manifests)",
            f"  public key   {creds.public_key}",
        ]
    loopback = urlsplit(endpoints.plain).hostname in ("127.0.0.1", "localhost", "::1")
    lines.append(
        f"  broker       {endpoints.plain}"
        + ("  (loopback: this machine only)" if loopback else "")
    )
    if endpoints.tls is not None:
        lines.append(f"  broker       {endpoints.tls}  (TLS; CA certificate {endpoints.ca})")
    if engine_key is not None:
        lines.append(f"  engine key   {engine_key}  (Ed25519: commands must verify with it)")
    lines.append(
        "Shown once and stored nowhere in clear: put them on the device (or give "
        "them to the integrator) now."
    )
    return lines
