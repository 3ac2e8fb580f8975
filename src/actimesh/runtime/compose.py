"""Composition of a running mesh: broker, ledger, engine, dispatch, simulated fleet, monitor.

``actimesh up`` and ``actimesh sim`` are thin wrappers around :func:`run_up` and
:func:`run_sim`. Everything runs under one TaskGroup; leaving it (Ctrl-C, SIGTERM, or a
component failing) cancels the rest, and the exit stack stops the managed broker last,
so presence wills and the last ledger writes still reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from rich.console import Console

from actimesh.audit import retention_loop
from actimesh.broker.client import MqttProtocol, TlsSettings
from actimesh.broker.endpoint import parse_broker_endpoint, parse_broker_url
from actimesh.broker.failover import Listener
from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import ManagedMosquitto
from actimesh.broker.mosquitto_conf import MosquittoConfig, TlsListener
from actimesh.broker.reload import reload_managed_broker
from actimesh.broker.topics import Topics
from actimesh.broker.transport import MqttTransport, Transport
from actimesh.devices.simulator import FleetSimulator, SimSettings
from actimesh.dispatch.commands import bootstrap_admin
from actimesh.errors import ConfigError, SecurityError
from actimesh.evidence import (
    UPLOADS_PATH,
)
from actimesh.geofence import InclusionMode, InclusionPolicy
from actimesh.ledger import Ledger, open_ledger
from actimesh.runtime.adapters import AdaptersJob
from actimesh.runtime.config import Settings
from actimesh.runtime.monitor import Monitor
from actimesh.runtime.simfleet import register_simulated_fleet, simulated_devices
from actimesh.runtime.supervisor import Supervisor
from actimesh.runtime.web import DispatchJob
from actimesh.security.acl import (
    SERVICE_ACCOUNTS,
    SERVICE_ENGINE,
    SERVICE_MONITOR,
)
from actimesh.security.certs import CERTS_DIR, ServerTls, server_tls
from actimesh.security.provision import (
    BROKER_DIR,
    ClusterQuarantine,
    RegistryQuarantine,
    prepare_broker,
    provision_fleet,
    specs_of,
)
from actimesh.security.registry import (
    REGISTRY_NAME,
    Credentials,
    DeviceSpec,
    Registry,
    read_secret,
)
from actimesh.security.signing import CommandSigner, CommandVerifier, engine_key_paths
from actimesh.triggers.engine import Engine
from actimesh.triggers.fleet import DeviceDirectory
from actimesh.triggers.quarantine import Quarantine

__all__ = [
    "WEB_NICENESS",
    "BrokerAddress",
    "Login",
    "broker_for",
    "build_engine",
    "cluster_quarantine",
    "external_address",
    "open_directory",
    "policy_line",
    "run_engine",
    "run_retention",
    "run_sim",
    "run_up",
    "serve_engine",
]

log = logging.getLogger(__name__)

#: How much lower the web listeners' CPU priority is than the engine's (``nice``): a
#: flood of web requests must not take the CPU an officer's trigger needs.
WEB_NICENESS = 10


class Login(TypedDict):
    """The keyword arguments components take to log in to the broker."""

    username: str | None
    password: str | None


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    #: Speak TLS to it (an external ``mqtts://`` broker).
    tls: TlsSettings | None = None
    #: ``mqtts://`` of the managed broker's TLS listener, for devices on the network.
    tls_url: str | None = None
    #: How actimesh's own components log in, by service account (``svc-engine`` …).
    logins: Mapping[str, Credentials] = field(default_factory=dict, repr=False)
    #: The MQTT version services other than the engine speak (``[broker] mqtt_protocol``).
    protocol: MqttProtocol = "5"
    #: A cluster's other MQTT listeners, which a service's links move to in turn when
    #: their node is lost (:mod:`actimesh.broker.failover`); none for one broker.
    fallbacks: tuple[Listener, ...] = ()

    @property
    def url(self) -> str:
        scheme = "mqtt" if self.tls is None else "mqtts"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def urls(self) -> str:
        """Every listener, the first one first, as an operator reads them."""
        scheme = "mqtt" if self.tls is None else "mqtts"
        others = "".join(f", {scheme}://{f.host}:{f.port}" for f in self.fallbacks)
        return f"{self.url}{others}"

    def login(self, account: str) -> Login:
        """``username``/``password`` keyword arguments for service ``account``."""
        creds = self.logins.get(account)
        if creds is None:
            return Login(username=None, password=None)
        return Login(username=creds.username, password=creds.password)

    def transport(self, account: str) -> MqttTransport:
        """How service ``account`` connects to the broker (the engine always with MQTT 5:
        its shared subscription and its will need it)."""
        protocol: MqttProtocol = "5" if account == SERVICE_ENGINE else self.protocol
        return MqttTransport(
            self.host,
            self.port,
            tls=self.tls,
            protocol=protocol,
            fallbacks=self.fallbacks,
            **self.login(account),
        )


def external_address(settings: Settings, url: str, fallbacks: Sequence[str] = ()) -> BrokerAddress:
    """The broker at ``url``: every component logs in as ``[broker] username``.
    ``fallbacks``: the same cluster's other MQTT listeners (``mqtt://HOST:PORT`` each,
    TLS or not as ``url``)."""
    endpoint = parse_broker_endpoint(url)
    others = []
    for other_url in fallbacks:
        other = parse_broker_endpoint(other_url)
        if other.tls != endpoint.tls:
            raise ConfigError(
                f"broker URLs {url} and {other_url} mix mqtt:// and mqtts://: the listeners "
                "of one cluster all speak TLS or none does"
            )
        others.append(Listener(other.host, other.port))
    b = settings.broker
    password = b.password()
    tls = TlsSettings(b.ca_file, b.cert_file, b.key_file) if endpoint.tls else None
    logins = {}
    if b.username is not None and password is not None:
        logins = dict.fromkeys(SERVICE_ACCOUNTS, Credentials(b.username, password))
    return BrokerAddress(
        endpoint.host,
        endpoint.port,
        tls=tls,
        logins=logins,
        protocol=b.mqtt_protocol,
        fallbacks=tuple(others),
    )


def _tls_listener(settings: Settings) -> TlsListener | None:
    """The managed broker's TLS listener: on when asked, or when certificates exist."""
    b = settings.broker
    certs = settings.data_dir / CERTS_DIR
    if b.tls is False:
        return None
    if b.server_cert is not None and b.server_key is not None:
        files: ServerTls | None = ServerTls(
            b.ca_file or certs / "ca.pem", b.server_cert, b.server_key
        )
    else:
        files = server_tls(certs)
    if files is None:
        if b.tls:
            raise ConfigError(
                f"[broker] tls = true but {certs} has no CA and server certificate: run "
                f"`actimesh certs init --data-dir {settings.data_dir}`, or set server_cert, "
                "server_key and ca_file"
            )
        return None
    return TlsListener(
        port=b.tls_port,
        host=b.tls_host,
        certfile=files.cert,
        keyfile=files.key,
        cafile=files.ca,
        require_certificate=b.require_client_cert,
    )


def _adopt_old_broker_db(data_dir: Path, broker_dir: Path) -> None:
    # Before the broker had its own folder (with its passwd and acl) it kept its database
    # in `mosquitto/`; bring the queued commands and sessions along once.
    old, new = data_dir / "mosquitto" / "mosquitto.db", broker_dir / "mosquitto.db"
    if old.is_file() and not new.exists():
        old.replace(new)


@contextlib.asynccontextmanager
async def broker_for(
    settings: Settings,
) -> AsyncIterator[tuple[BrokerAddress, ManagedMosquitto | None]]:
    """The broker to use: the one at ``settings.broker_url``, or a managed Mosquitto.

    Yields the address (with the logins of actimesh's own components) and the managed
    broker, or None for an external one. The managed broker is secured: the registry of
    the data directory gets new service-account passwords and renders the broker's
    password file and access file (accounts, client ids, roles) before it starts.
    """
    if settings.broker_url is not None:
        yield external_address(settings, settings.broker_url), None
        return
    policy = settings.acl_policy()
    provisioned = await asyncio.to_thread(prepare_broker, settings.data_dir, policy)
    await asyncio.to_thread(_adopt_old_broker_db, settings.data_dir, provisioned.broker_dir)
    config = MosquittoConfig(
        host=settings.broker_host,
        port=settings.broker_port,
        data_dir=provisioned.broker_dir,
        tls=_tls_listener(settings),
    )
    async with ManagedMosquitto(config) as broker:
        address = BrokerAddress(
            settings.broker_host,
            settings.broker_port,
            tls_url=broker.tls_url,
            logins=provisioned.services,
            protocol=settings.broker.mqtt_protocol,
        )
        yield address, broker


def _ca_of(broker: ManagedMosquitto | None) -> Path | None:
    tls = None if broker is None else broker.config.tls
    return None if tls is None else tls.cafile


async def _provision_fleet(
    settings: Settings,
    fleet: FleetSimulator | None,
    broker: ManagedMosquitto | None,
    previous: list[DeviceSpec],
) -> None:
    """Give each simulated device an account of its own on the managed broker, and each
    camera its signing key; the ``previous`` fleet's devices that are gone leave no
    retained presence behind (:mod:`actimesh.runtime.simfleet`)."""
    if broker is None:
        return  # an external broker's accounts are its operator's business
    if fleet is None and not previous:
        return
    creds = await register_simulated_fleet(
        settings.data_dir,
        [] if fleet is None else specs_of(fleet.agents),
        previous=previous,
        topics=Topics(settings.agency),
        host=settings.broker_host,
        port=broker.config.port,
        reload=broker.areload,
        save=broker.asave,
    )
    if fleet is not None:
        fleet.use_credentials(creds)


def _engine_status(engine: Engine, sim: FleetSimulator | None) -> str:
    s = engine.stats
    online = sum(1 for d in engine.fleet if d.online)
    recording = sum(1 for d in engine.fleet if d.state is not None and d.state.value == "recording")
    parts = [
        f"devices online {online}/{len(engine.fleet)}",
        f"recording {recording}",
        f"telemetry {s.telemetry}",
        f"events {s.events}",
        f"activations {s.activations}",
        f"commands {s.commands}",
        f"acks {s.acks}",
        f"rejected {s.rejected_total}",
        f"telemetry dropped {engine.telemetry_link.stats.dropped_incoming}",
    ]
    if s.owntracks or s.owntracks_ignored:
        parts.append(f"owntracks {s.owntracks}")
    if s.acks_not_commanded:
        parts.append(f"acks from cameras not commanded {s.acks_not_commanded}")
    if s.quarantined:
        parts.append(f"quarantined {s.quarantined}")
    if s.slowdown_active:
        parts.append(
            f"OVERLOADED: shedding {s.telemetry_shed_per_s:.0f} positions/s, devices asked "
            f"to report every {engine.settings.slowdown_heartbeat_s:g} s"
        )
    if sim is not None:
        parts.append("triggers " + ", ".join(f"{k} {v}" for k, v in sorted(sim.triggers.items())))
        if sim.offloaded or sim.offload_kept:
            parts.append(f"offloaded {sim.offloaded} (kept on cameras {sim.offload_kept})")
    return " · ".join(parts)


class _RegistryDirectory:
    """The device registry as the engine's authoritative :class:`DeviceDirectory`."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def get(self, device_id: str) -> tuple[DeviceKind, str | None, tuple[str, ...]] | None:
        try:
            device = self._registry.get(device_id)
        except SecurityError:
            return None  # not registered
        except sqlite3.Error:
            # Fail closed: an unknown device neither raises triggers nor is commanded.
            log.exception("device registry lookup of %s failed", device_id)
            return None
        return device.kind, device.unit, device.paired


@contextlib.asynccontextmanager
async def open_directory(settings: Settings) -> AsyncIterator[DeviceDirectory | None]:
    """The registry of the data directory as the engine's directory, if there is one;
    without it devices are what their presence says they are."""
    path = settings.data_dir / REGISTRY_NAME
    if not path.exists():
        yield None
        return
    with Registry(path) as registry:
        yield _RegistryDirectory(registry)


def build_engine(
    settings: Settings,
    transport: Transport,
    ledger: Ledger,
    directory: DeviceDirectory | None = None,
    quarantine: Quarantine | None = None,
) -> Engine:
    """The engine ``settings`` describe, on ``transport`` (a broker's or a cluster's),
    writing to ``ledger``, signing with the key of the data directory (created on first
    start). With ``quarantine``, devices that flood refused messages are disabled live;
    without, only reported."""
    return Engine(
        topics=Topics(settings.agency),
        transport=transport,
        ledger=ledger,
        rules=settings.rules,
        policy=settings.policy,
        signer=CommandSigner.from_data_dir(settings.data_dir),
        settings=settings.engine,
        directory=directory,
        dispatch_source=settings.dispatch.source_device,
        quarantine=quarantine,
        owntracks=settings.adapters.owntracks.enabled,
    )


def cluster_quarantine(settings: Settings) -> Quarantine:
    """The quarantine of an engine on the NATS cluster of ``settings.data_dir``
    (``actimesh cluster up``): a device that keeps flooding is disabled in the registry,
    and the cluster is reloaded with it, so every node's auth callout refuses it and
    disconnects it live; the engine raises the alert and writes the ledger record, as
    with :class:`~actimesh.security.provision.RegistryQuarantine` on Mosquitto.
    ``actimesh devices enable`` brings it back."""
    return ClusterQuarantine(settings.data_dir, settings.acl_policy())


async def run_retention(settings: Settings, recordings: Path | None) -> None:
    """Retention beside the engine: it opens its own ledger connection, so it never
    queues in front of the engine's writes."""
    if recordings is not None:
        # The simulated cameras create it on their first commit; retention starts first.
        await asyncio.to_thread(recordings.mkdir, parents=True, exist_ok=True)
    await retention_loop(
        settings.ledger_location,
        settings.retention.days,
        recordings=recordings,
        agency=settings.agency,
    )


def policy_line(policy: InclusionPolicy) -> str:
    """The inclusion policy in force, as the ``up`` banner states it: the mode, how far
    beyond each rule's radius (the ``rules`` line) a camera may be, and the fix age."""
    fresh = f"fixes older than {policy.max_fix_age_s:g} s not trusted"
    if policy.mode is InclusionMode.CENTRE:
        return f"centre (each rule's radius exactly, no accuracy margin; {fresh})"
    return (
        f"inclusive (each rule's radius plus the fixes' reported accuracy, margin at most "
        f"{policy.max_margin_m:g} m; {fresh})"
    )


async def _started_listener(
    tg: asyncio.TaskGroup, name: str, entry: str, payload: object
) -> Supervisor:
    """A web listener in a child process of its own (at :data:`WEB_NICENESS`), kept
    running in ``tg``; returned once it listens (within 60 s)."""
    child = Supervisor(name, entry, payload, nice=WEB_NICENESS)
    tg.create_task(child.run(), name=name)
    async with asyncio.timeout(60):
        await child.ready.wait()
    return child


async def _start_adapters(
    tg: asyncio.TaskGroup, settings: Settings, broker: BrokerAddress, console: Console
) -> None:
    """The device-protocol adapters that are enabled (docs/DEVICES.md): the listening
    ones in a process of their own, like the web listeners."""
    if settings.adapters.listening:
        adapters = await _started_listener(
            tg,
            "adapters",
            "actimesh.runtime.adapters:serve_adapters",
            AdaptersJob(settings, broker),
        )
        console.print(f"  adapters {adapters.url}  (device protocols: docs/DEVICES.md)")
    if settings.adapters.owntracks.enabled:
        console.print("  adapters owntracks/<device id>/<phone> on the broker (OwnTracks)")


async def run_up(settings: Settings, sim: SimSettings | None, console: Console) -> None:
    """Broker (managed unless a URL is given), engine, optional simulated fleet, monitor."""
    topics = Topics(settings.agency)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    previous = await asyncio.to_thread(simulated_devices, settings.data_dir)
    async with (
        broker_for(settings) as (broker, managed),
        open_ledger(settings.ledger_location, agency=settings.agency) as ledger,
        open_directory(settings) as directory,
    ):
        quarantine = None if managed is None else RegistryQuarantine(settings.data_dir, managed)
        engine = build_engine(
            settings, broker.transport(SERVICE_ENGINE), ledger, directory, quarantine
        )
        # The web listeners run as processes of their own (runtime/web.py): a web
        # client, however hostile, shares no event loop or heap with the engine.
        uploads = Supervisor(
            "evidence", "actimesh.runtime.web:serve_evidence", settings, nice=WEB_NICENESS
        )
        fleet = (
            None
            if sim is None
            else FleetSimulator(
                topics=topics,
                broker_host=broker.host,
                broker_port=broker.port,
                data_dir=settings.data_dir,
                settings=sim,
                verifier=engine.signer.verifier(),
            )
        )
        await _provision_fleet(settings, fleet, managed, previous)
        monitor = Monitor(
            topics=topics,
            broker_host=broker.host,
            broker_port=broker.port,
            console=console,
            status=lambda: _engine_status(engine, fleet),
            gps_margin_m=settings.policy.widest_margin_m,
            tls=broker.tls,
            protocol=broker.protocol,
            **broker.login(SERVICE_MONITOR),
        )
        async with asyncio.TaskGroup() as tg:
            if managed is not None:
                tg.create_task(managed.keep_running(), name="broker-watch")
            tg.create_task(engine.run(), name="engine")
            recordings = settings.data_dir / "recordings"
            tg.create_task(run_retention(settings, recordings), name="retention")
            tg.create_task(uploads.run(), name="evidence")
            async with asyncio.timeout(60):
                await engine.ready.wait()
                await uploads.ready.wait()
            kind = "managed Mosquitto" if managed else "external broker"
            console.print(f"[bold]actimesh[/bold] agency [cyan]{settings.agency}[/cyan]")
            console.print(f"  broker   {broker.url} ({kind})")
            if broker.tls_url is not None:
                console.print(f"  broker   {broker.tls_url} (TLS, CA {_ca_of(managed)})")
            if managed is not None:
                console.print(
                    f"  accounts devices: `actimesh devices add|list|remove|rotate|disable|enable "
                    f"--data-dir {settings.data_dir}`"
                )
            console.print(f"  engine   {settings.engine.engine_id}, ledger {settings.ledger_shown}")
            console.print(
                f"  evidence {uploads.url}{UPLOADS_PATH}  (camera offload; stored in "
                f"{settings.evidence.root(settings.data_dir)})"
            )
            rules = ", ".join(f"{r.event_type} {r.radius_m:g} m" for r in settings.rules)
            console.print(f"  rules    {rules}")
            console.print(f"  policy   {policy_line(settings.policy)}", markup=False)
            if settings.dispatch.enabled:
                logins = await bootstrap_admin(settings.data_dir, ledger)
                dispatch = await _started_listener(
                    tg,
                    "dispatch",
                    "actimesh.runtime.web:serve_dispatch",
                    DispatchJob(settings, broker),
                )
                console.print(f"  dispatch {dispatch.url}  (live map; API /api/v1, /openapi.json)")
                for line in logins.lines():
                    console.print(f"  {line}", markup=False)
                if not settings.dispatch.leaflet_dir.is_dir():
                    console.print("  [yellow]map library missing: run `make web-deps`[/yellow]")
            await _start_adapters(tg, settings, broker, console)
            tg.create_task(monitor.run(), name="monitor")
            if fleet is not None:
                # Docked cameras offload to this listener, logged in as themselves.
                fleet.evidence_url = uploads.url
                streets = fleet.settings.streets
                where = (
                    "a synthetic area" if streets is None else f"the streets of {streets.source}"
                )
                console.print(
                    f"  fleet    {len(fleet.units)} units, {len(fleet.agents)} devices in "
                    f"{where}, seed {fleet.settings.seed} "
                    f"(recordings under {settings.data_dir / 'recordings'})"
                )
                tg.create_task(fleet.run(), name="fleet")
            console.print("  Ctrl-C stops everything.\n")


async def run_engine(settings: Settings, console: Console) -> None:
    """One engine process against the broker at ``settings.broker_url``.

    Run several with distinct ``engine_id`` values against one broker and one ledger
    file: trigger events are shared among them (MQTT v5 shared subscription), each
    handled exactly once, and any replica may die without losing one.
    """
    if settings.broker_url is None:
        raise ConfigError("actimesh engine needs --broker mqtt://HOST:PORT (use `up` for both)")
    address = external_address(settings, settings.broker_url)
    await serve_engine(settings, address.transport(SERVICE_ENGINE), settings.broker_url, console)


async def serve_engine(
    settings: Settings, transport: Transport, where: str, console: Console
) -> None:
    """One engine on ``transport`` (the bus at ``where``) and the ledger's retention,
    until cancelled; says so once the engine is ready."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with (
        open_ledger(settings.ledger_location, agency=settings.agency) as ledger,
        open_directory(settings) as directory,
    ):
        engine = build_engine(settings, transport, ledger, directory)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(engine.run(), name="engine")
            tg.create_task(run_retention(settings, None), name="retention")
            async with asyncio.timeout(30):
                await engine.ready.wait()
            console.print(
                f"engine {settings.engine.engine_id} on {where}, agency "
                f"{settings.agency}, ledger {settings.ledger_shown}"
            )


async def run_sim(
    *,
    agency: str,
    broker_url: str,
    data_dir: Path,
    sim: SimSettings,
    console: Console,
    engine_key: Path | None = None,
) -> None:
    """A simulated fleet against any broker (an engine must be running there), speaking
    ``sim.mqtt_protocol``.

    Its cameras verify commands with the engine public key in ``engine_key`` (default:
    ``{data_dir}/keys/engine-signing.pub``, there when the engine shares the data dir).
    """
    host, port = parse_broker_url(broker_url)
    topics = Topics(agency)
    verifier = CommandVerifier.from_file(engine_key or engine_key_paths(data_dir)[1])
    fleet = FleetSimulator(
        topics=topics,
        broker_host=host,
        broker_port=port,
        data_dir=data_dir,
        settings=sim,
        verifier=verifier,
    )
    monitor_login = Login(username=None, password=None)
    if (data_dir / REGISTRY_NAME).exists():
        # The managed broker of an `actimesh up` on this data directory: the fleet gets
        # accounts there, live, and the monitor uses the one `up` provisioned for it.
        creds = await asyncio.to_thread(provision_fleet, data_dir, specs_of(fleet.agents))
        fleet.use_credentials(creds)
        if reload_managed_broker(data_dir / BROKER_DIR) is None:
            console.print(
                f"[yellow]no managed broker of {data_dir} is running: the fleet's "
                "accounts apply when it starts[/yellow]"
            )
        with contextlib.suppress(SecurityError):
            monitor_login = Login(
                username=SERVICE_MONITOR, password=read_secret(data_dir, SERVICE_MONITOR)
            )
    monitor = Monitor(
        topics=topics,
        broker_host=host,
        broker_port=port,
        console=console,
        protocol=sim.mqtt_protocol,
        **monitor_login,
    )
    console.print(
        f"simulating {len(fleet.units)} units ({len(fleet.agents)} devices) against {broker_url}"
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(fleet.run(), name="fleet")
        tg.create_task(monitor.run(), name="monitor")
