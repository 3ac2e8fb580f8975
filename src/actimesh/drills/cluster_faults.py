"""``actimesh drill --faults --cluster``: the fault drill on the cluster shape.

The same scenes, bursts and accounting as the single-machine drill (:mod:`.faults`), on
three NATS JetStream nodes with authentication (each device logs in as itself, through
the nodes' auth callouts, with its own client id; the engines as ``svc-engine``), a
PostgreSQL ledger, and two ``actimesh engine --nats`` processes sharing the trigger
events through one durable consumer. The scenes' devices are dealt over the three
nodes' MQTT 3.1.1 listeners, so every scene crosses nodes. Midway through each burst:

* ``camera's node kill -9``: the node the first scene's body camera is connected to;
* ``stream leader kill -9``: the node leading ``$MQTT_msgs``, the listener's QoS 1 store
  that holds every trigger (found on the nodes' monitoring endpoint, ``/jsz``);
* ``engine kill -9``: one engine, for good: the other serves alone, and a trigger the
  dead one held unacknowledged is redelivered to it after the consumer's ``ack_wait``;
* ``PostgreSQL restart``: the server stopped (fast shutdown) and started again 3 s later;
  the engines reconnect and write what waited;
* ``node cut off (network)``: the node of the first scene's CEW runs on a host of its
  own, a network namespace joined to this one by a veth pair (:mod:`.netns`), and its
  end of the pair goes down for 35 s, then up again. Every packet to and from it is
  dropped, so each side finds out the way it would on a real network: the other nodes
  by their route pings (5 s, two missed: the drill's cluster sets them; the server's
  default, 2 min, outlasts any cut worth drilling), the engines by theirs (2 s x 3),
  and the devices connected to it by their MQTT keepalive (15 s: a PINGREQ unanswered
  for another keepalive, so up to 30 s, inside the cut). After healing, the node must
  rejoin the cluster (healthy, routed to both others) and nothing may be lost or
  duplicated. Without namespaces (not root, no ``ip``) the node is frozen with SIGSTOP
  for 20 s instead, and its devices are disconnected at once (a frozen node's sockets
  stay open); the console line says which was done.

For that scenario the nodes left on this host listen on this side's address of the
pair (the node inside cannot reach loopback here); every other scenario runs on
loopback. A device whose node died or was cut off moves to the next node, as a device
holding the list of the nodes' addresses does when its connection fails: at once after
a kill (the connection is refused), after its keepalive for a cut. Killed nodes stay
down: the survivors must do everything. The time from the fault to the first camera
recording for a trigger raised after it is reported for each scenario.

:func:`cluster_mesh` lends the same cluster, provisioned the same way
(:func:`_admitting`), to the geometry drill (``actimesh drill --cluster``), with one
engine in the drill's process instead of the two engine processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.request import urlopen

from rich.console import Console

from actimesh.broker.nats import NatsCluster, NodeHost
from actimesh.broker.nats.transport import NatsTransport
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent
from actimesh.devices.recorder import RecordingStore
from actimesh.dispatch.settings import DispatchSettings
from actimesh.drills.activation import DrillMesh, sign_in
from actimesh.drills.fault_fleet import EngineProc, Fleet, fire_burst, scene_devices
from actimesh.drills.fault_report import (
    FaultReport,
    FaultResult,
    measure,
    publish,
    settle,
    wait_for_answers,
)
from actimesh.drills.faults import ENGINE_TOML
from actimesh.drills.netns import IsolatedHost, isolated_host, namespaces_unavailable
from actimesh.errors import BrokerError
from actimesh.ledger import open_ledger
from actimesh.private import write_private
from actimesh.security.acl import SERVICE_ENGINE, AclPolicy
from actimesh.security.nats_access import registry_nats_access
from actimesh.security.provision import Provisioned, prepare_broker, specs_of
from actimesh.security.registry import SECRETS_DIR, Registry
from actimesh.security.signing import CommandSigner

if TYPE_CHECKING:
    # Imported when the drill runs: the runtime package loads PyAV, which the other
    # drills must not pay for (tests/drills/test_imports.py).
    from actimesh.runtime.postgres import ManagedPostgres

__all__ = ["CLUSTER_SCENARIOS", "cluster_mesh", "run_cluster_fault_drill"]

_NODES = 3
_ENGINES = 2
_CUT_OFF_S = 35.0
_FREEZE_S = 20.0
#: The node put on a host of its own for the cut: the first scene's CEW's (:func:`_deal`).
_ISOLATED_NODE = 0
#: The route pings of the cluster that is cut (see the module).
_ROUTE_PING_S = 5
_CUT_OFF = "node cut off (network)"
_PG_DOWN_S = 3.0
#: The listener's QoS 1 store: every device's trigger event is in it once PUBACKed.
_TRIGGER_STREAM = "$MQTT_msgs"


@dataclass(slots=True)
class _Shape:
    agency: str
    cluster: NatsCluster
    postgres: ManagedPostgres
    engines: list[EngineProc]
    fleet: Fleet
    home: dict[str, int]  # device id -> index of the node it connects to
    root: Path
    #: Where node :data:`_ISOLATED_NODE` runs, for the scenario that cuts it off.
    isolated: IsolatedHost | None = None
    #: Why it runs here instead (no namespaces), for the console.
    not_isolated: str = ""
    #: What the fault struck, for the console.
    struck: str = ""

    def move_off(self, index: int, *, reconnect: bool) -> None:
        """Every device on node ``index`` to the next node still running (what a device
        with the nodes' addresses does when its connection fails); ``reconnect``: drop
        the connection now (a frozen node never closes it)."""
        alive = [i for i, n in enumerate(self.cluster.nodes) if n.running and i != index]
        for agent in self.fleet.agents:
            if self.home[agent.device_id] != index:
                continue
            to = alive[sum(map(ord, agent.device_id)) % len(alive)]
            self.home[agent.device_id] = to
            ports = self.cluster.nodes[to].ports
            agent.link.settings = replace(agent.link.settings, host=ports.host, port=ports.mqtt)
            if reconnect:
                agent.disconnect_for(0.2)


def _deal(n: int, k: int) -> int:
    """The node of scene ``n``'s ``k``-th device: every scene spans the three nodes."""
    return (n + k) % _NODES


def _engine(
    shape_root: Path, cluster: NatsCluster, agency: str, n: int, ledger_url: str
) -> EngineProc:
    """Engine ``n`` on the cluster, logged in as svc-engine, writing the PostgreSQL ledger
    (its URL, with the password, in a 0600 config file: never on a command line)."""
    config = shape_root / "engine.toml"
    password_file = json.dumps(str(shape_root / SECRETS_DIR / f"{SERVICE_ENGINE}.password"))
    login = f'[broker]\nusername = "{SERVICE_ENGINE}"\npassword_file = {password_file}\n'
    write_private(config, f"{ENGINE_TOML}{login}[ledger]\nurl = {json.dumps(ledger_url)}\n")
    urls = cluster.nats_urls
    urls = urls[n % len(urls) :] + urls[: n % len(urls)]  # each engine starts on its own node
    args = [a for url in urls for a in ("--nats", url)]
    args += ["--agency", agency, "--data-dir", str(shape_root)]
    args += ["--engine-id", f"engine-{n + 1}", "--config", str(config)]
    return EngineProc(args, log=shape_root / f"engine-{n + 1}.log")


@contextlib.asynccontextmanager
async def _shape(
    root: Path,
    agency: str,
    scenes: int,
    postgres: ManagedPostgres,
    isolated: IsolatedHost | None = None,
) -> AsyncIterator[_Shape]:
    """The cluster, its engines and fleet; ``isolated``: the host node
    :data:`_ISOLATED_NODE` runs on (the others then listen on this side of its pair)."""
    topics = Topics(agency)
    store = RecordingStore(root / "recordings", durable=False)
    verifier = CommandSigner.from_data_dir(root).verifier()
    policy = AclPolicy(agency, DispatchSettings().source_device)
    fleet, home = Fleet(), {}
    for n in range(scenes):
        # The nodes' ports are known once the cluster is made, after the fleet's accounts.
        fleet.add_scene(*scene_devices(n, topics, store, verifier, lambda _k: 0, protocol="3.1.1"))
        for k, device_id in enumerate((f"f{n}-cew", *sorted(fleet.expected[f"f{n}-cew"]))):
            home[device_id] = _deal(n, k)

    def provision() -> NatsCluster:
        cluster, provisioned = _admitting(root, policy, fleet.agents, home, isolated)
        for agent in fleet.agents:
            login = provisioned.device(agent.device_id)
            agent.link.reconfigure(username=agent.device_id, password=login.password)
        return cluster

    cluster = await asyncio.to_thread(provision)
    await cluster.astart()
    engines = [_engine(root, cluster, agency, n, postgres.url) for n in range(_ENGINES)]
    try:
        for engine in engines:
            await engine.start()
        yield _Shape(agency, cluster, postgres, engines, fleet, home, root, isolated)
    finally:
        for engine in engines:
            await engine.stop()
        await cluster.astop()


def _admitting(
    root: Path,
    policy: AclPolicy,
    agents: list[DeviceAgent],
    home: dict[str, int],
    isolated: IsolatedHost | None = None,
) -> tuple[NatsCluster, Provisioned]:
    """The cluster (not started) admitting exactly the registry's accounts, with
    ``agents`` provisioned and each pointed at its node in ``home``; ``isolated``: the
    host node :data:`_ISOLATED_NODE` runs on (the others then listen on this side of
    its pair)."""
    provisioned = prepare_broker(root, policy, devices=specs_of(agents), cluster_logins=True)
    with Registry.open(root) as registry:
        access = registry_nats_access(registry, policy)
    # The nodes admit exactly the registry's accounts from their first start.
    if isolated is None:
        cluster = NatsCluster(root / "nats", size=_NODES, access=access)
    else:
        hosts: list[NodeHost | None] = [None] * _NODES
        hosts[_ISOLATED_NODE] = NodeHost(isolated.address, tuple(isolated.argv(())))
        cluster = NatsCluster(
            root / "nats",
            size=_NODES,
            access=access,
            host=isolated.peer_address,
            hosts=hosts,
            ping_interval_s=_ROUTE_PING_S,
        )
    for agent in agents:
        ports = cluster.nodes[home[agent.device_id]].ports
        agent.link.settings = replace(agent.link.settings, host=ports.host, port=ports.mqtt)
    return cluster, provisioned


@contextlib.asynccontextmanager
async def cluster_mesh(
    root: Path, topics: Topics, agents: list[DeviceAgent]
) -> AsyncIterator[DrillMesh]:
    """The geometry drill's mesh on the cluster shape (``actimesh drill --cluster``): the
    three authenticated nodes, ``agents`` dealt over their MQTT 3.1.1 listeners in turn
    (so every scene of three devices or more spans all three), the engine on NATS as
    ``svc-engine`` and a PostgreSQL ledger. One engine: the drill checks what it knows
    (its index, its duplicate count), which a second engine sharing the triggers would
    split."""
    from actimesh.runtime.postgres import ManagedPostgres  # noqa: PLC0415 - see the top

    policy = AclPolicy(topics.agency, DispatchSettings().source_device)
    home = {agent.device_id: i % _NODES for i, agent in enumerate(agents)}
    cluster, provisioned = await asyncio.to_thread(_admitting, root, policy, agents, home)
    sign_in(agents, provisioned.devices)
    login = provisioned.service(SERVICE_ENGINE)
    transport = NatsTransport(cluster.nats_urls, user=login.username, password=login.password)
    with _postgres_dir() as pg_dir:
        async with ManagedPostgres(pg_dir) as postgres:
            await cluster.astart()
            try:
                async with open_ledger(postgres.url, agency=topics.agency) as ledger:
                    listeners = ", ".join(str(node.ports.mqtt) for node in cluster.nodes)
                    where = (
                        f"{_NODES} NATS nodes (engine on NATS, devices on MQTT 3.1.1 ports "
                        f"{listeners}), PostgreSQL ledger"
                    )
                    yield DrillMesh(transport, ledger, where)
            finally:
                await cluster.astop()


def _get_json(url: str) -> object:
    with urlopen(url, timeout=2.0) as answer:  # noqa: S310 - the node's own monitoring port
        return json.load(answer)


def _streams(found: object) -> Iterator[dict[str, object]]:
    """Every stream detail in a ``/jsz`` answer, whatever account holds it."""
    if isinstance(found, dict):
        info = found.get("cluster")
        if isinstance(info, dict) and "raft_group" in info:
            yield found
        for value in found.values():
            yield from _streams(value)
    elif isinstance(found, list):
        for value in found:
            yield from _streams(value)


def stream_leader(cluster: NatsCluster, stream: str = _TRIGGER_STREAM) -> int:
    """The index of the node leading ``stream``, from the nodes' ``/jsz`` answers."""
    names = {node.server_name: i for i, node in enumerate(cluster.nodes)}
    for node in cluster.nodes:
        if not node.running:
            continue
        with contextlib.suppress(OSError, ValueError):
            url = f"{node.monitor_url}/jsz?streams=true"
            for detail in _streams(_get_json(url)):
                info = detail["cluster"]
                named = detail.get("name") == stream
                if named and isinstance(info, dict) and info.get("leader") in names:
                    return names[str(info["leader"])]
    raise BrokerError(f"no node reports a leader for {stream}")


def _node_pid(cluster: NatsCluster, index: int) -> int:
    return int(cluster.nodes[index].pid_path.read_text().strip())


Fault = Callable[[_Shape, asyncio.TaskGroup], Awaitable[None]]


async def _kill_camera_node(shape: _Shape, _tg: asyncio.TaskGroup) -> None:
    index = shape.home["f0-bwc"]
    shape.cluster.kill(index)
    shape.struck = f"killed {shape.cluster.nodes[index].name}, the node of f0-bwc"
    shape.move_off(index, reconnect=False)


async def _kill_stream_leader(shape: _Shape, _tg: asyncio.TaskGroup) -> None:
    index = await asyncio.to_thread(stream_leader, shape.cluster)
    shape.cluster.kill(index)
    shape.struck = f"killed {shape.cluster.nodes[index].name}, the {_TRIGGER_STREAM} leader"
    shape.move_off(index, reconnect=False)


async def _kill_engine(shape: _Shape, _tg: asyncio.TaskGroup) -> None:
    await shape.engines[0].kill()
    shape.struck = "killed engine-1 for good"


async def _restart_postgres(shape: _Shape, tg: asyncio.TaskGroup) -> None:
    await asyncio.to_thread(shape.postgres.stop)

    async def start_again() -> None:
        await asyncio.sleep(_PG_DOWN_S)
        await asyncio.to_thread(shape.postgres.start)

    tg.create_task(start_again(), name="postgres-start")
    shape.struck = f"stopped PostgreSQL, started it {_PG_DOWN_S:g} s later"


async def _cut_off_node(shape: _Shape, tg: asyncio.TaskGroup) -> None:
    index = shape.home["f0-cew"]
    host = shape.isolated
    if host is None or index != _ISOLATED_NODE:
        await _freeze_node(shape, tg, index)
        return
    node = shape.cluster.nodes[index]
    await asyncio.to_thread(host.cut)

    async def heal() -> None:
        try:
            await asyncio.sleep(_CUT_OFF_S)
        finally:
            host.heal()  # also when cancelled: the namespace is deleted after, in any case
        healed = time.monotonic()
        # On a running node, start_node only waits until it is healthy and routed to
        # every other node: a node that cannot rejoin fails the drill here.
        await shape.cluster.astart_node(index)
        shape.struck += f"; it rejoined {time.monotonic() - healed:.1f} s after healing"

    tg.create_task(heal(), name="heal")
    shape.struck = (
        f"cut {node.name} ({host.address}, namespace {host.netns}) off the network "
        f"for {_CUT_OFF_S:g} s"
    )
    # Its devices find out by their keepalive, then connect to the next node.
    shape.move_off(index, reconnect=False)


async def _freeze_node(shape: _Shape, tg: asyncio.TaskGroup, index: int) -> None:
    """The cut without namespaces: the node frozen, its devices disconnected at once."""
    pid = _node_pid(shape.cluster, index)
    os.kill(pid, signal.SIGSTOP)

    async def cont() -> None:
        try:
            await asyncio.sleep(_FREEZE_S)
        finally:
            os.kill(pid, signal.SIGCONT)

    tg.create_task(cont(), name="sigcont")
    shape.struck = (
        f"froze {shape.cluster.nodes[index].name} (SIGSTOP) for {_FREEZE_S:g} s, "
        f"not cut off the network: {shape.not_isolated or 'no namespace for it'}"
    )
    shape.move_off(index, reconnect=True)


CLUSTER_SCENARIOS: tuple[tuple[str, Fault], ...] = (
    ("camera's node kill -9", _kill_camera_node),
    ("stream leader kill -9", _kill_stream_leader),
    ("engine kill -9", _kill_engine),
    ("PostgreSQL restart", _restart_postgres),
    (_CUT_OFF, _cut_off_node),
)


async def _scenario(
    index: int,
    name: str,
    fault: Fault,
    root: Path,
    postgres: ManagedPostgres,
    *,
    triggers: int,
    scenes: int,
    console: Console,
) -> FaultResult:
    shape_root = root / f"cluster-{index}"
    shape_root.mkdir(parents=True, exist_ok=True)
    agency = f"cfault{index}"
    async with contextlib.AsyncExitStack() as stack:
        unavailable = namespaces_unavailable() if name == _CUT_OFF else None
        isolated = None
        if name == _CUT_OFF and unavailable is None:
            isolated = stack.enter_context(isolated_host("amcut"))
        shape = await stack.enter_async_context(
            _shape(shape_root, agency, scenes, postgres, isolated)
        )
        shape.not_isolated = unavailable or ""
        agents: list[DeviceAgent] = shape.fleet.agents
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(a.run(), name=a.device_id) for a in agents]
            for agent in agents:
                await agent.link.wait_connected(timeout=30)
            await asyncio.sleep(1.5)  # the engines learn every device and position
            burst = await fire_burst(shape.fleet, triggers, lambda: fault(shape, tg))
            await settle(shape.fleet, burst)
            await wait_for_answers(shape.fleet, burst, postgres.url, agency)
            for task in tasks:
                task.cancel()
        console.print(f"[dim]  {name}: {shape.struck}[/dim]")
        logs = [engine.log for engine in shape.engines]
        return await measure(shape.fleet, burst, name, postgres.url, agency, logs=logs)


@contextlib.contextmanager
def _postgres_dir() -> Iterator[Path]:
    """A folder of its own for PostgreSQL: under root the server runs as ``nobody``,
    which must be able to reach it (a drill's scratch folder may be private)."""
    folder = Path(tempfile.mkdtemp(prefix="actimesh-drill-pg-"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def run_cluster_fault_drill(
    console: Console, *, root: Path, short: bool = False, only: str | None = None
) -> FaultReport:
    """Every cluster fault scenario (``short``: fewer triggers, for CI); prints the table."""
    from actimesh.runtime.postgres import ManagedPostgres  # noqa: PLC0415 - see the top

    triggers, scenes = (12, 3) if short else (40, 6)
    results = []
    with _postgres_dir() as pg_dir:
        async with ManagedPostgres(pg_dir) as postgres:
            for index, (name, fault) in enumerate(CLUSTER_SCENARIOS, start=1):
                if only is not None and only != name:
                    continue
                console.print(
                    f"[dim]cluster fault drill: {name} ({triggers} triggers, {scenes} scenes, "
                    f"{_NODES} NATS nodes, {_ENGINES} engines, PostgreSQL)…[/dim]"
                )
                results.append(
                    await _scenario(
                        index,
                        name,
                        fault,
                        root,
                        postgres,
                        triggers=triggers,
                        scenes=scenes,
                        console=console,
                    )
                )
    return publish(console, results, root, "actimesh drill --faults --cluster")
