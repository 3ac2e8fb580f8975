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
  devices use, so what the dispatch sees is what a device-side client sees;
* optionally the simulated fleet, its devices dealt in turn over the nodes' listeners.

Everything runs under one TaskGroup; Ctrl-C or SIGTERM cancels it, the supervisors stop
their children (SIGTERM, then SIGKILL), then the exit stack stops the NATS nodes and,
last, PostgreSQL, so the engines' final ledger writes are in before it goes.

How each part reaches the cluster is decided in one place, :class:`ClusterLinks`: it is
where credentials and TLS go once the cluster has them.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, replace

from rich.console import Console

from actimesh.broker.client import MqttProtocol
from actimesh.broker.nats import NatsCluster, NatsTransport
from actimesh.broker.topics import Topics
from actimesh.devices.simulator import FleetSimulator, SimSettings
from actimesh.dispatch.commands import bootstrap_admin
from actimesh.evidence import UPLOADS_PATH
from actimesh.ledger import open_ledger
from actimesh.runtime.compose import (
    WEB_NICENESS,
    BrokerAddress,
    build_engine,
    open_directory,
    run_retention,
)
from actimesh.runtime.config import Settings
from actimesh.runtime.monitor import Monitor
from actimesh.runtime.postgres import ManagedPostgres
from actimesh.runtime.supervisor import Report, Supervisor
from actimesh.runtime.web import DispatchJob
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
    """How every part reaches the running cluster: the engines' NATS URLs and the MQTT
    listeners (host and one port per node). The one place that knows; credentials and
    TLS for each kind of client belong here."""

    host: str
    nats_urls: tuple[str, ...]
    mqtt_ports: tuple[int, ...]

    @classmethod
    def of(cls, cluster: NatsCluster) -> ClusterLinks:
        return cls(
            host=cluster.nodes[0].ports.host,
            nats_urls=tuple(cluster.nats_urls),
            mqtt_ports=tuple(n.mqtt_port for n in cluster.nodes),
        )

    def engine_transport(self) -> NatsTransport:
        """An engine's transport: any node will do, the client fails over to the others."""
        return NatsTransport(self.nats_urls)

    def mqtt_address(self, node: int = 0) -> BrokerAddress:
        """A service's MQTT 3.1.1 address on node ``node``'s listener."""
        return BrokerAddress(self.host, self.mqtt_ports[node], protocol=CLUSTER_MQTT)


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
        engine = build_engine(settings, job.links.engine_transport(), ledger, directory)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(engine.run(), name="engine")
            await engine.ready.wait()
            report(f"{settings.engine.engine_id} on {', '.join(job.links.nats_urls)}")


def _cluster(settings: Settings, plan: ClusterPlan) -> NatsCluster:
    """The NATS cluster of the data directory (where access and TLS settings go).

    Its nodes keep their server names from one start to the next (JetStream knows its
    peers by name, and a restarted cluster under new names finds no quorum in its own
    stores); the ports are new each start. The names carry a digest of the data
    directory, so readiness is still asked of this very server.
    """
    root = settings.data_dir / "nats"
    tag = hashlib.blake2s(str(root.absolute()).encode(), digest_size=3).hexdigest()
    return NatsCluster(root, size=plan.nodes, host=settings.broker_host, name_tag=tag)


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
            replace(settings, engine=replace(settings.engine, engine_id=engine_id)), links
        )
        out.append(Supervisor(engine_id, "actimesh.runtime.cluster:serve_engine", job))
    return out


async def run_cluster_up(
    settings: Settings, plan: ClusterPlan, sim: SimSettings | None, console: Console
) -> None:
    """NATS nodes, PostgreSQL, engines, evidence, dispatch and an optional fleet, until
    cancelled."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings = replace(settings, broker=replace(settings.broker, mqtt_protocol=CLUSTER_MQTT))
    topics = Topics(settings.agency)
    # The signing key, made once here: two engines starting together must not race to.
    signer = await asyncio.to_thread(CommandSigner.from_data_dir, settings.data_dir)
    postgres = ManagedPostgres(
        settings.data_dir, host=settings.broker_host, port=plan.postgres_port
    )
    async with postgres, _cluster(settings, plan) as cluster:
        settings = replace(settings, ledger_url=postgres.url)
        links = ClusterLinks.of(cluster)
        dispatch_address = links.mqtt_address(0)
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
        fleet = None
        if sim is not None:
            fleet = FleetSimulator(
                topics=topics,
                broker_host=links.host,
                broker_port=links.mqtt_ports[0],
                spread_ports=links.mqtt_ports[1:],
                data_dir=settings.data_dir,
                settings=replace(sim, mqtt_protocol=CLUSTER_MQTT),
                verifier=signer.verifier(),
            )
        monitor = Monitor(
            topics=topics,
            broker_host=dispatch_address.host,
            broker_port=dispatch_address.port,
            console=console,
            protocol=CLUSTER_MQTT,
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
            console.print(f"[bold]actimesh cluster[/bold] agency [cyan]{settings.agency}[/cyan]")
            for node in cluster.nodes:
                p = node.ports
                console.print(
                    f"  node     {node.name}: mqtt://{p.host}:{p.mqtt} (devices, MQTT 3.1.1), "
                    f"{p.nats_url} (engines), routes :{p.cluster}, monitor "
                    f"http://{p.host}:{p.monitor}  (data {node.data_dir})"
                )
            console.print(
                f"  ledger   {postgres.shown_url} (PostgreSQL, password in "
                f"{postgres.password_file})"
            )
            for engine in engines:
                console.print(f"  engine   {engine.url} (pid {engine.pid})")
            console.print(f"  evidence {evidence.url}{UPLOADS_PATH}")
            if dispatch is not None:
                console.print(
                    f"  dispatch {dispatch.url}  (feed: MQTT 3.1.1 on {dispatch_address.url})"
                )
                for line in logins.lines():
                    console.print(f"  {line}", markup=False)
            tg.create_task(monitor.run(), name="monitor")
            if fleet is not None:
                console.print(
                    f"  fleet    {len(fleet.units)} units, {len(fleet.agents)} devices over "
                    f"{len(links.mqtt_ports)} nodes"
                )
                tg.create_task(fleet.run(), name="fleet")
            console.print("  Ctrl-C stops everything.\n")
