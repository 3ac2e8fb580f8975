"""``actimesh cluster up``: the cluster shape of a mesh on one machine, on loopback.

What runs, and where:

* a three-node NATS JetStream cluster (:class:`~actimesh.broker.nats.NatsCluster`, under
  ``{data_dir}/nats``): devices connect to any node's MQTT listener (MQTT 3.1.1, the
  only version the server's listener speaks), engines to the client listeners;
* a PostgreSQL server (:class:`~actimesh.runtime.postgres.ManagedPostgres`, under
  ``{data_dir}/postgres``) holding the one ledger every engine writes;
* ``engines`` trigger engines (two by default), each a process of its own on
  :class:`~actimesh.broker.nats.NatsTransport`, watched and restarted by a
  :class:`~actimesh.runtime.supervisor.Supervisor`: trigger events are shared among them
  through one durable JetStream consumer, so either may die without losing one;
* the evidence upload API and the dispatch map and API, processes of their own as under
  ``actimesh up``. The dispatch reads activations, presence, acknowledgements and engine
  status over MQTT 3.1.1 on the first node's listener (``[broker] mqtt_protocol`` is
  forced to ``"3.1.1"``): the same feed as on Mosquitto, through the same listener the
  devices use, so what the dispatch sees is what a device-side client sees. It is
  handed every node's listener: when its node dies it reconnects to the next one, and
  its persistent session, kept in JetStream on three nodes, delivers what it missed
  (:mod:`actimesh.broker.failover`);
* optionally the simulated fleet, its devices dealt in turn over the nodes' listeners.

Everything runs under one TaskGroup; Ctrl-C or SIGTERM cancels it, the supervisors stop
their children (SIGTERM, then SIGKILL), then the exit stack stops the NATS nodes and,
last, PostgreSQL, so the engines' final ledger writes are in before it goes.

**Secured as ``actimesh up`` secures its Mosquitto.** Nobody connects anonymously. Before
the nodes start, the registry of the data directory gets new passwords for the service
accounts (``secrets/``) and the simulated fleet fresh credentials, all with the bcrypt
hashes a NATS server checks (:func:`~actimesh.security.provision.prepare_broker` with
``cluster_logins``); the nodes admit exactly the registry's accounts with their roles'
grants (:func:`~actimesh.security.nats_access.registry_nats_access`). Each part logs in
as its own account: the engines as ``svc-engine`` on the client port, the dispatch as
``svc-dispatch`` and the monitor as ``svc-monitor`` on an MQTT listener, each device as
itself with its own client id. ``actimesh devices add|remove|rotate|disable`` on the
same data directory applies to the running nodes (they reload their authorization
live). With ``[broker] tls`` (or ``--tls``) every listener and route speaks only TLS,
with a node certificate from the data directory's CA (``actimesh certs init``).

How each part reaches the cluster is decided in one place, :class:`ClusterLinks`: its
addresses, the login of each service account, and the CA to check the nodes against.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from actimesh.broker.client import MqttProtocol, TlsSettings
from actimesh.broker.failover import Listener
from actimesh.broker.nats import NatsCluster, NatsTransport
from actimesh.broker.nats.auth import NatsAccess
from actimesh.broker.nats.cluster import NatsTls
from actimesh.broker.topics import Topics
from actimesh.devices.simulator import FleetSimulator, SimSettings
from actimesh.dispatch.commands import bootstrap_admin
from actimesh.errors import ConfigError
from actimesh.evidence import UPLOADS_PATH
from actimesh.ledger import open_ledger
from actimesh.runtime.compose import (
    WEB_NICENESS,
    BrokerAddress,
    build_engine,
    cluster_quarantine,
    open_directory,
    run_retention,
)
from actimesh.runtime.config import Settings
from actimesh.runtime.monitor import Monitor
from actimesh.runtime.postgres import ManagedPostgres
from actimesh.runtime.supervisor import Report, Supervisor
from actimesh.runtime.web import DispatchJob
from actimesh.security.acl import SERVICE_DISPATCH, SERVICE_ENGINE, SERVICE_MONITOR, AclPolicy
from actimesh.security.certs import CERTS_DIR, issue_node
from actimesh.security.nats_access import NATS_CLUSTER_DIR, registry_nats_access
from actimesh.security.provision import Provisioned, prepare_broker, specs_of
from actimesh.security.registry import Credentials, Registry
from actimesh.security.signing import CommandSigner
from actimesh.triggers.settings import EngineSettings

__all__ = [
    "CLUSTER_MQTT",
    "ClusterLinks",
    "ClusterPlan",
    "EngineJob",
    "run_cluster_up",
    "serve_engine",
]

#: The MQTT version of the cluster's listeners.
CLUSTER_MQTT: MqttProtocol = "3.1.1"


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """What ``cluster up`` runs besides the settings: how many nodes and engines, and
    PostgreSQL's port (None: a free one)."""

    nodes: int = 3
    engines: int = 2
    postgres_port: int | None = None


@dataclass(frozen=True, slots=True)
class ClusterLinks:
    """How every part reaches the running cluster: the engines' NATS URLs, the MQTT
    listeners (host and one port per node), each service account's login and, with TLS,
    the CA the nodes' certificate is checked against. The one place that knows."""

    host: str
    nats_urls: tuple[str, ...]
    mqtt_ports: tuple[int, ...]
    #: Service account -> its login (``svc-engine`` …); see :meth:`only`.
    logins: Mapping[str, Credentials] = field(default_factory=dict, repr=False)
    #: Set when every listener speaks TLS: the CA to check the nodes against.
    tls: TlsSettings | None = None

    @classmethod
    def of(
        cls,
        cluster: NatsCluster,
        logins: Mapping[str, Credentials] | None = None,
        tls: TlsSettings | None = None,
    ) -> ClusterLinks:
        return cls(
            host=cluster.nodes[0].ports.host,
            nats_urls=tuple(cluster.nats_urls),
            mqtt_ports=tuple(n.mqtt_port for n in cluster.nodes),
            logins=dict(logins or {}),
            tls=tls,
        )

    def only(self, account: str) -> ClusterLinks:
        """These links with ``account``'s login alone: what a child process is handed."""
        mine = {account: self.logins[account]} if account in self.logins else {}
        return replace(self, logins=mine)

    def _login(self, account: str) -> Credentials:
        try:
            return self.logins[account]
        except KeyError:
            raise ConfigError(f"no login for {account} on the cluster: provision it") from None

    def engine_transport(self) -> NatsTransport:
        """An engine's transport, as ``svc-engine``: any node will do, the client fails
        over to the others."""
        login = self._login(SERVICE_ENGINE)
        return NatsTransport(
            self.nats_urls, user=login.username, password=login.password, tls=self.tls
        )

    def mqtt_address(self, node: int = 0, *, failover: bool = False) -> BrokerAddress:
        """Node ``node``'s MQTT 3.1.1 listener, with the service accounts' logins; with
        ``failover``, the other nodes' listeners after it, in turn, for links that move
        to the next node when theirs is lost (their session is in JetStream)."""
        others: tuple[Listener, ...] = ()
        if failover:
            after = self.mqtt_ports[node + 1 :] + self.mqtt_ports[:node]
            others = tuple(Listener(self.host, port) for port in after)
        return BrokerAddress(
            self.host,
            self.mqtt_ports[node],
            tls=self.tls,
            logins=self.logins,
            protocol=CLUSTER_MQTT,
            fallbacks=others,
        )


@dataclass(frozen=True, slots=True)
class EngineJob:
    """What one engine child needs: its settings (ledger URL, engine id) and the cluster."""

    settings: Settings
    links: ClusterLinks


async def serve_engine(job: EngineJob, report: Report) -> None:
    """One trigger engine on the cluster, until cancelled (a supervised child's entry)."""
    settings = job.settings
    async with (
        open_ledger(settings.ledger_location, agency=settings.agency) as ledger,
        open_directory(settings) as directory,
    ):
        # A device that keeps flooding is disabled on every node, live (docs/SECURITY.md).
        quarantine = cluster_quarantine(settings)
        engine = build_engine(settings, job.links.engine_transport(), ledger, directory, quarantine)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(engine.run(), name="engine")
            await engine.ready.wait()
            report(f"{settings.engine.engine_id} on {', '.join(job.links.nats_urls)}")


def _cluster(settings: Settings, plan: ClusterPlan, tls: NatsTls | None) -> NatsCluster:
    """The NATS cluster of the data directory, admitting nobody until :func:`_secure`.

    Its nodes keep their server names from one start to the next (JetStream knows its
    peers by name, and a restarted cluster under new names finds no quorum in its own
    stores); the ports are new each start. The names carry a digest of the data
    directory, so readiness is still asked of this very server.
    """
    root = settings.data_dir / NATS_CLUSTER_DIR
    tag = hashlib.blake2s(str(root.absolute()).encode(), digest_size=3).hexdigest()
    return NatsCluster(
        root, size=plan.nodes, host=settings.broker_host, name_tag=tag, access=NatsAccess(), tls=tls
    )


def _node_tls(settings: Settings, *, wanted: bool) -> NatsTls | None:
    """TLS on every listener and route when ``wanted`` or ``[broker] tls = true``: the
    data directory's CA (``actimesh certs init``) and a node certificate it issues once
    for the nodes' host (``certs/nodes/cluster.pem``)."""
    if not (wanted or settings.broker.tls):
        return None
    certs = settings.data_dir / CERTS_DIR
    ca = certs / "ca.pem"
    if not ca.is_file():
        raise ConfigError(
            f"TLS for the cluster needs a CA in {certs}: run "
            f"`actimesh certs init --data-dir {settings.data_dir}` first"
        )
    cert, key = certs / "nodes" / "cluster.pem", certs / "nodes" / "cluster.key"
    if not (cert.is_file() and key.is_file()):
        files = issue_node(certs, "cluster", hosts=(settings.broker_host,))
        cert, key = files.cert, files.key
    return NatsTls(ca, cert, key)


def _provision(
    data_dir: Path, policy: AclPolicy, fleet: FleetSimulator | None
) -> tuple[Provisioned, NatsAccess]:
    """New service passwords and the simulated fleet's credentials, with the bcrypt
    hashes the nodes check; and every account of the registry as the nodes' users."""
    devices = specs_of(fleet.agents) if fleet is not None else ()
    provisioned = prepare_broker(data_dir, policy, devices=devices, cluster_logins=True)
    with Registry.open(data_dir) as registry:
        access = registry_nats_access(registry, policy)
    return provisioned, access


def _engines(settings: Settings, plan: ClusterPlan, links: ClusterLinks) -> list[Supervisor]:
    """One supervised child per engine: ``engine-1``, ``engine-2`` … (or
    ``<[engine] engine_id>-1`` … when the settings name them)."""
    base = settings.engine.engine_id
    if base == EngineSettings().engine_id:
        base = "engine"
    out = []
    for n in range(1, plan.engines + 1):
        engine_id = f"{base}-{n}"
        job = EngineJob(
            replace(settings, engine=replace(settings.engine, engine_id=engine_id)),
            links.only(SERVICE_ENGINE),
        )
        out.append(Supervisor(engine_id, "actimesh.runtime.cluster:serve_engine", job))
    return out


async def run_cluster_up(
    settings: Settings,
    plan: ClusterPlan,
    sim: SimSettings | None,
    console: Console,
    *,
    tls: bool = False,
) -> None:
    """NATS nodes, PostgreSQL, engines, evidence, dispatch and an optional fleet, until
    cancelled. ``tls``: every listener and route speaks TLS (as ``[broker] tls``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings = replace(settings, broker=replace(settings.broker, mqtt_protocol=CLUSTER_MQTT))
    topics = Topics(settings.agency)
    node_tls = await asyncio.to_thread(_node_tls, settings, wanted=tls)
    client_tls = None if node_tls is None else TlsSettings(ca_file=node_tls.ca)
    # The signing key, made once here: two engines starting together must not race to.
    signer = await asyncio.to_thread(CommandSigner.from_data_dir, settings.data_dir)
    postgres = ManagedPostgres(
        settings.data_dir, host=settings.broker_host, port=plan.postgres_port
    )
    cluster = _cluster(settings, plan, node_tls)
    fleet = None
    if sim is not None:
        fleet = FleetSimulator(
            topics=topics,
            broker_host=cluster.nodes[0].ports.host,
            broker_port=cluster.nodes[0].mqtt_port,
            spread_ports=[n.mqtt_port for n in cluster.nodes[1:]],
            data_dir=settings.data_dir,
            settings=replace(sim, mqtt_protocol=CLUSTER_MQTT),
            verifier=signer.verifier(),
        )
    provisioned, access = await asyncio.to_thread(
        _provision, settings.data_dir, settings.acl_policy(), fleet
    )
    if fleet is not None:
        fleet.use_credentials(provisioned.devices)
        if client_tls is not None:
            for agent in fleet.agents:
                agent.link.reconfigure(tls=client_tls)
    # Written before any node starts: no moment when it admits anyone else.
    await asyncio.to_thread(cluster.apply_access, access)
    async with postgres, cluster:
        settings = replace(settings, ledger_url=postgres.url)
        links = ClusterLinks.of(cluster, provisioned.services, client_tls)
        # Every node's listener: a dead node must not blind the dispatch.
        dispatch_address = links.only(SERVICE_DISPATCH).mqtt_address(0, failover=True)
        # The agency's schema, made once before the engines open it.
        async with open_ledger(settings.ledger_location, agency=settings.agency) as ledger:
            logins = await bootstrap_admin(settings.data_dir, ledger)
        engines = _engines(settings, plan, links)
        evidence = Supervisor(
            "evidence", "actimesh.runtime.web:serve_evidence", settings, nice=WEB_NICENESS
        )
        dispatch = (
            Supervisor(
                "dispatch",
                "actimesh.runtime.web:serve_dispatch",
                DispatchJob(settings, dispatch_address),
                nice=WEB_NICENESS,
            )
            if settings.dispatch.enabled
            else None
        )
        monitor_address = links.mqtt_address(0)
        monitor = Monitor(
            topics=topics,
            broker_host=monitor_address.host,
            broker_port=monitor_address.port,
            console=console,
            protocol=CLUSTER_MQTT,
            tls=monitor_address.tls,
            **monitor_address.login(SERVICE_MONITOR),
        )
        async with asyncio.TaskGroup() as tg:
            for engine in engines:
                tg.create_task(engine.run(), name=engine.name)
            tg.create_task(evidence.run(), name="evidence")
            recordings = settings.data_dir / "recordings"
            tg.create_task(run_retention(settings, recordings), name="retention")
            if dispatch is not None:
                tg.create_task(dispatch.run(), name="dispatch")
            async with asyncio.timeout(90):
                for child in (*engines, evidence, *([dispatch] if dispatch else [])):
                    await child.ready.wait()
            _banner(console, settings, cluster, postgres, links)
            for engine in engines:
                console.print(f"  engine   {engine.url} (pid {engine.pid}, as {SERVICE_ENGINE})")
            console.print(f"  evidence {evidence.url}{UPLOADS_PATH}")
            if dispatch is not None:
                console.print(
                    f"  dispatch {dispatch.url}  (feed: MQTT 3.1.1 on {dispatch_address.url} "
                    f"as {SERVICE_DISPATCH}, then the next node's if it is lost)"
                )
                for line in logins.lines():
                    console.print(f"  {line}", markup=False)
            tg.create_task(monitor.run(), name="monitor")
            if fleet is not None:
                console.print(
                    f"  fleet    {len(fleet.units)} units, {len(fleet.agents)} devices over "
                    f"{len(links.mqtt_ports)} nodes, each logged in as itself"
                )
                tg.create_task(fleet.run(), name="fleet")
            console.print("  Ctrl-C stops everything.\n")


def _banner(
    console: Console,
    settings: Settings,
    cluster: NatsCluster,
    postgres: ManagedPostgres,
    links: ClusterLinks,
) -> None:
    console.print(f"[bold]actimesh cluster[/bold] agency [cyan]{settings.agency}[/cyan]")
    mqtt = "mqtts" if links.tls is not None else "mqtt"
    for node in cluster.nodes:
        p = node.ports
        console.print(
            f"  node     {node.name}: {mqtt}://{p.host}:{p.mqtt} (devices, MQTT 3.1.1), "
            f"{p.nats_url} (engines), routes :{p.cluster}, monitor "
            f"http://{p.host}:{p.monitor}  (data {node.data_dir})"
        )
    if links.tls is not None:
        console.print(f"  tls      every listener and route (CA {links.tls.ca_file})")
    console.print(
        f"  accounts no anonymous login; devices: `actimesh devices add|list|remove|rotate|"
        f"disable|enable --data-dir {settings.data_dir}` (applied to the running nodes)"
    )
    console.print(
        f"  ledger   {postgres.shown_url} (PostgreSQL, password in {postgres.password_file})"
    )
