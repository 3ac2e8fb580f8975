"""The engine on a three-node NATS cluster, devices on MQTT 3.1.1 on other nodes.

The same engine as on Mosquitto and on the in-process bus, behind the transport seam:
trigger events come from a JetStream stream through a durable consumer the engine
replicas share, commands reach the camera's persistent MQTT session wherever it is
connected, and the loss of a node loses neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from actimesh.broker.client import _no_lost_cancel
from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    Command,
    DeviceKind,
    DeviceState,
    EngineStatus,
    Event,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.nats import NatsCluster, NatsControl
from actimesh.broker.topics import Topics, device_client_id
from actimesh.errors import BrokerError
from actimesh.geofence import InclusionPolicy, destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings
from tests.broker.nats_secured import DISPATCH, access_for, engine_transport, password_of
from tests.engines import running
from tests.waiting import eventually

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
TOPICS = Topics("am-nats")
LAT, LON = 51.0447, -114.0719  # Calgary
CAM_LAT, CAM_LON = destination(LAT, LON, 90.0, 5.0)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    devices = [("bwc1", DeviceKind.BODY_CAM), ("cew1", DeviceKind.CEW)]
    devices += [("bwc.9", DeviceKind.BODY_CAM), ("cew9", DeviceKind.CEW)]
    access = access_for(TOPICS.agency, devices)
    async with NatsCluster(tmp_path / "nats", size=3, access=access) as running:
        yield running


@asynccontextmanager
async def engine_on(
    cluster: NatsCluster, node: int, ledger_path: Path, signer: CommandSigner, engine_id: str
) -> AsyncIterator[Engine]:
    async with SqliteLedger(ledger_path) as ledger:
        engine = Engine(
            topics=TOPICS,
            transport=engine_transport(cluster, node),
            ledger=ledger,
            rules=DEFAULT_RULES,
            policy=InclusionPolicy(),
            signer=signer,
            # A camera that answers is never commanded twice; one slow to answer on a
            # loaded machine must not be either, in the "once" assertions below.
            settings=EngineSettings(warmup_s=0.01, engine_id=engine_id, ack_timeout_s=30.0),
        )
        async with running([engine], warm_within=30):
            yield engine


def mqtt311(
    port: int, device_id: str, *, clean: bool = True, user: str | None = None
) -> aiomqtt.Client:
    client = aiomqtt.Client(
        HOST,
        port,
        # The server refuses a '.' in a client id (broker/nats/cluster.py): a device whose
        # id has one connects under another, its topics are still its own.
        identifier=device_client_id(TOPICS.agency, device_id).replace(".", "_"),
        username=user or device_id,
        password=password_of(user or device_id),
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=clean,
        timeout=10,
        keepalive=3,  # a dead node is noticed in seconds, as a camera's short keepalive does
    )
    # aiomqtt's waits can lose a cancellation on Python 3.11 (a camera task that never
    # ends); the engine's own links wait through this adapter, and so do these devices.
    _no_lost_cancel(client)
    return client


async def announce(
    client: aiomqtt.Client, device_id: str, kind: DeviceKind, lat: float, lon: float
) -> None:
    now = time.time()
    presence = Presence(online=True, ts=now, device_kind=kind)
    await client.publish(TOPICS.presence(device_id), encode(presence), qos=1, retain=True)
    fix = Telemetry(ts=now, state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=3.0)
    await client.publish(TOPICS.telemetry(device_id), encode(fix), qos=0)


async def publish_as(
    port: int, device_id: str, topic: str, payload: bytes, *, retain: bool = False
) -> None:
    """Publish at QoS 1 until the broker acknowledges it, reconnecting as a device does:
    while a lost node's streams elect new leaders, the listener closes a connection
    whose QoS 1 message it could not store in time."""

    async def sent() -> bool:
        client = mqtt311(port, device_id)
        try:
            async with client:
                await client.publish(topic, payload, qos=1, retain=retain, timeout=5)
        except aiomqtt.MqttError:
            settle(client)
            return False
        return True

    await eventually(sent, timeout=30)


async def retained_on(port: int, topics: set[str]) -> None:
    """Until a fresh subscriber on the listener at ``port`` gets every one of ``topics``
    as a retained message."""

    async def all_there() -> bool:
        seen: set[str] = set()
        async with mqtt311(port, "dispatch-watch", user=DISPATCH) as watcher:
            await watcher.subscribe(f"{TOPICS.prefix}/dev/+/presence", qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    async for message in watcher.messages:
                        if message.retain:
                            seen.add(str(message.topic))
                        if topics <= seen:
                            break
        return topics <= seen

    await eventually(all_there, timeout=30)


async def raise_event(port: int, device_id: str, eid: str) -> str:
    draw = Event(eid=eid, type="taser_draw", ts=time.time(), lat=LAT, lon=LON, acc=3.0)
    await publish_as(port, device_id, TOPICS.event(device_id), encode(draw))
    return activation_id(device_id, eid)


async def announce_cew(port: int) -> None:
    now = time.time()
    presence = Presence(online=True, ts=now, device_kind=DeviceKind.CEW)
    await publish_as(port, "cew1", TOPICS.presence("cew1"), encode(presence), retain=True)
    fix = Telemetry(ts=now, state=DeviceState.BUFFERING, lat=LAT, lon=LON, acc=3.0)
    async with mqtt311(port, "cew1") as client:
        await client.publish(TOPICS.telemetry("cew1"), encode(fix), qos=0)


def settle(client: aiomqtt.Client) -> None:
    """Retrieve the outcome of a lost connection nobody was waiting on: aiomqtt leaves
    it in a future that, unread, is logged as "never retrieved" (as broker/client.py
    does for the engine's own links)."""
    for future in (client._connected, client._disconnected):
        if future.done() and not future.cancelled():
            future.exception()


class Camera:
    """A body camera on MQTT 3.1.1 with a persistent session and a QoS 1 subscription to
    its command topic; reconnects (same client id) to whatever node ``node`` names,
    while ``allowed`` is set. Acknowledges every command it gets (``recording``)."""

    def __init__(self, cluster: NatsCluster, device_id: str, node: int) -> None:
        self.cluster = cluster
        self.device_id = device_id
        self.node = node
        self.allowed = asyncio.Event()
        self.allowed.set()
        self.online = asyncio.Event()
        self.commands: list[Command] = []
        self.sessions = 0

    async def run(self) -> None:
        while True:
            await self.allowed.wait()
            port = self.cluster.nodes[self.node].mqtt_port
            client = mqtt311(port, self.device_id, clean=False)
            try:
                async with client:
                    await client.subscribe(TOPICS.command(self.device_id), qos=1)
                    if not self.sessions:
                        await announce(
                            client, self.device_id, DeviceKind.BODY_CAM, CAM_LAT, CAM_LON
                        )
                    self.sessions += 1
                    self.online.set()
                    async for message in client.messages:
                        command = decode(Command, message.payload)
                        self.commands.append(command)
                        ack = Ack(
                            aid=command.aid,
                            status=AckStatus.RECORDING,
                            pre_cov=command.pre,
                            ts=time.time(),
                        )
                        await client.publish(
                            TOPICS.ack(self.device_id), encode(ack), qos=1, timeout=5
                        )
            except aiomqtt.MqttError:
                # The node went (or is not ready yet): a device retries with a pause.
                self.online.clear()
                settle(client)
                await asyncio.sleep(0.2)

    def got(self, aid: str) -> list[Command]:
        return [c for c in self.commands if c.aid == aid]


@asynccontextmanager
async def running_camera(camera: Camera) -> AsyncIterator[Camera]:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(camera.run(), name=f"camera-{camera.device_id}")
        try:
            async with asyncio.timeout(20):
                await camera.online.wait()
            yield camera
        finally:
            task.cancel()


async def on_ledger(engine: Engine, aid: str) -> bool:
    return await engine.ledger.activation(aid) is not None


def verified(signer: CommandSigner, device_id: str) -> Callable[[Command], bool]:
    def check(command: Command) -> bool:
        signer.verifier().verify(
            command, agency=TOPICS.agency, device_id=device_id, now=time.time()
        )
        return True

    return check


async def test_the_engine_on_one_node_commands_a_camera_on_another(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    signer = CommandSigner.generate()
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(
            engine_on(cluster, 0, tmp_path / "ledger.sqlite3", signer, "engine-1")
        )
        camera = await stack.enter_async_context(running_camera(Camera(cluster, "bwc1", 2)))
        cew = cluster.nodes[1].mqtt_port
        await announce_cew(cew)
        await eventually(lambda: len(engine.index) == 2)

        aid = await raise_event(cew, "cew1", "e1")
        (command,) = await eventually(lambda: camera.got(aid), timeout=15)
        assert verified(signer, "bwc1")(command)
        await eventually(lambda: on_ledger(engine, aid))
        assert engine.control_link.stats.handler_errors == 0


async def test_presence_from_before_the_engine_first_started_is_known_to_it(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    # No consumer of the engine's existed when these were published: the QoS 1 store kept
    # nothing for it, the listener's retained store did.
    now = time.time()
    for node, device_id, kind in ((1, "bwc.9", DeviceKind.BODY_CAM), (2, "cew9", DeviceKind.CEW)):
        presence = Presence(online=True, ts=now, device_kind=kind)
        port = cluster.nodes[node].mqtt_port
        await publish_as(port, device_id, TOPICS.presence(device_id), encode(presence), retain=True)
    # The device's PUBACK does not wait for the listener's retained store: wait until the
    # engine's node holds both, as the engine's first start would find them.
    await retained_on(cluster.nodes[0].mqtt_port, {TOPICS.presence(d) for d in ("bwc.9", "cew9")})
    signer = CommandSigner.generate()
    async with engine_on(cluster, 0, tmp_path / "ledger.sqlite3", signer, "engine-1") as engine:

        def known() -> dict[str, str | None]:
            found = {d: engine.fleet.get(d) for d in ("bwc.9", "cew9")}
            return {d: i.kind.value if i and i.kind else None for d, i in found.items()}

        await eventually(lambda: all(known().values()), timeout=15)
        assert known() == {"bwc.9": "body_cam", "cew9": "cew"}
        assert engine.control_link.stats.handler_errors == 0


async def test_an_engine_stopped_cleanly_says_it_is_offline(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    # NATS has no last will: the engine's command link publishes it as it stops.
    status = TOPICS.engine_status("engine-1")
    async with mqtt311(cluster.nodes[2].mqtt_port, "watcher", user=DISPATCH) as watcher:
        await watcher.subscribe(status, qos=1)
        seen: list[EngineStatus] = []

        async def watch() -> None:
            async for message in watcher.messages:  # seen as it comes, not at the end
                announced = decode(EngineStatus, message.payload)
                seen.append(announced)

        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(watch())
            signer = CommandSigner.generate()
            async with engine_on(cluster, 0, tmp_path / "ledger.sqlite3", signer, "engine-1"):
                await eventually(lambda: [s.online for s in seen] == [True])
            await eventually(lambda: [s.online for s in seen] == [True, False])
            task.cancel()


@pytest.mark.time_limit(90)
@pytest.mark.logs_exception(
    BrokerError,
    reason="the engine logs a record it could not publish while the lost node's streams "
    "elect new leaders",
)
async def test_a_trigger_raised_while_the_cameras_node_is_dead_reaches_it_on_another(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    signer = CommandSigner.generate()
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(
            engine_on(cluster, 0, tmp_path / "ledger.sqlite3", signer, "engine-1")
        )
        camera = await stack.enter_async_context(running_camera(Camera(cluster, "bwc1", 2)))
        cew = cluster.nodes[1].mqtt_port
        await announce_cew(cew)
        await eventually(lambda: len(engine.index) == 2)
        first = await raise_event(cew, "cew1", "e1")
        await eventually(lambda: camera.got(first), timeout=15)

        camera.allowed.clear()  # it stays away until the trigger is durable
        cluster.kill(2)
        second = await raise_event(cew, "cew1", "e2")
        await eventually(lambda: on_ledger(engine, second), timeout=30)

        camera.node = 1  # same client id, same session, another node
        camera.allowed.set()
        await eventually(lambda: camera.got(second), timeout=45)
        (command,) = camera.got(second)
        assert verified(signer, "bwc1")(command)
        assert camera.sessions >= 2


async def test_two_engines_on_one_durable_consumer_handle_each_trigger_once(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    signer = CommandSigner.generate()
    async with AsyncExitStack() as stack:
        engines = [
            await stack.enter_async_context(
                engine_on(cluster, i, tmp_path / f"ledger-{i}.sqlite3", signer, f"engine-{i}")
            )
            for i in (0, 1)
        ]
        links = [engine.control_link for engine in engines]
        assert all(isinstance(link, NatsControl) for link in links)
        events = [link.consumers[1] for link in links if isinstance(link, NatsControl)]
        assert events[0] == events[1]  # one durable consumer for the trigger events
        camera = await stack.enter_async_context(running_camera(Camera(cluster, "bwc1", 2)))
        cew = cluster.nodes[1].mqtt_port
        await announce_cew(cew)
        for engine in engines:
            await eventually(lambda e=engine: len(e.index) == 2)  # type: ignore[misc]

        aids = [await raise_event(cew, "cew1", f"e{n}") for n in range(6)]

        async def written_once() -> bool:
            counts = [sum([await on_ledger(engine, aid) for engine in engines]) for aid in aids]
            return counts == [1] * len(aids)

        await eventually(written_once, timeout=20)
        await eventually(lambda: all(camera.got(aid) for aid in aids), timeout=15)
        assert [len(camera.got(aid)) for aid in aids] == [1] * len(aids)
        handled = [e.stats.activations for e in engines]
        assert sum(handled) == len(aids)
