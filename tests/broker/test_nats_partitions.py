"""Two engines owning geographic partitions on a three-node NATS cluster.

Each engine serves one of two partitions (2 km cells, rendezvous hashing, the 30 ft
rules). Devices on
MQTT 3.1.1 report where they are; the engines relay the raw fixes between them (a queue
group on core NATS) and each indexes only its own partition's fixes and the halo. A
TASER draw 3 m from a partition boundary commands the camera 9 m away on the other
side of it, planned by the trigger's owner alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    Command,
    DeviceKind,
    DeviceState,
    Event,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.nats import NatsCluster
from actimesh.geofence import destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import Engine, EngineSettings, StaticDirectory
from tests.broker.nats_secured import access_for, engine_transport
from tests.broker.test_nats_engine import TOPICS, mqtt311, publish_as, settle
from tests.engines import running as running_engines
from tests.partitions import FAR, POLICY, RULES, cells, each_hears_its_share, near_a_boundary
from tests.waiting import eventually

pytestmark = pytest.mark.integration

DIRECTORY = StaticDirectory()
DIRECTORY.add("cew1", DeviceKind.CEW)
DIRECTORY.add("bwc-across", DeviceKind.BODY_CAM)
for _name, _at in FAR:
    DIRECTORY.add(_name, DeviceKind.BODY_CAM)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    fleet = [("cew1", DeviceKind.CEW), ("bwc-across", DeviceKind.BODY_CAM)]
    fleet += [(name, DeviceKind.BODY_CAM) for name, _at in FAR]
    async with NatsCluster(tmp_path / "nats", size=3, access=access_for(TOPICS.agency, fleet)) as c:
        yield c


@asynccontextmanager
async def running(
    cluster: NatsCluster,
    tmp_path: Path,
    signer: CommandSigner,
    engine_id: str,
    served: tuple[int, ...],
    *,
    node: int = 0,
    warmup_s: float = 0.01,
) -> AsyncIterator[Engine]:
    """An engine serving the partitions ``served``, until the block ends (a clean stop)."""
    async with SqliteLedger(tmp_path / f"{engine_id}.sqlite3") as ledger:
        engine = Engine(
            topics=TOPICS,
            transport=engine_transport(cluster, node),
            ledger=ledger,
            rules=RULES,
            policy=POLICY,
            signer=signer,
            # What each device is comes from the registry, as in a deployment: a
            # restarted engine on NATS sees no retained presence (docs/SCALING.md).
            directory=DIRECTORY,
            settings=EngineSettings(
                engine_id=engine_id,
                warmup_s=warmup_s,
                ack_timeout_s=30.0,
                partitions=2,
                partition=served,
            ),
        )
        async with running_engines([engine], warm_within=30):
            yield engine


@asynccontextmanager
async def partitioned(cluster: NatsCluster, tmp_path: Path) -> AsyncIterator[list[Engine]]:
    signer = CommandSigner.generate()
    async with (
        running(cluster, tmp_path, signer, "engine-0", (0,), node=0) as e0,
        running(cluster, tmp_path, signer, "engine-1", (1,), node=1) as e1,
    ):
        yield [e0, e1]


async def report(port: int, device_id: str, kind: DeviceKind, at: tuple[float, float]) -> None:
    """A device says it is online (QoS 1, retained) and where it is (QoS 0)."""
    now = time.time()
    presence = encode(Presence(online=True, ts=now, device_kind=kind))
    await publish_as(port, device_id, TOPICS.presence(device_id), presence, retain=True)
    fix = Telemetry(ts=now, state=DeviceState.BUFFERING, lat=at[0], lon=at[1], acc=2.0)
    async with mqtt311(port, device_id) as client:
        await client.publish(TOPICS.telemetry(device_id), encode(fix), qos=0)


async def camera(
    port: int, device_id: str, at: tuple[float, float], got: list[Command], every: float = 0.0
) -> None:
    """A body camera at ``at`` that records every command it gets and says so; it
    reports its fix once, or every ``every`` seconds as a real one does."""
    client = mqtt311(port, device_id)
    try:
        async with client, asyncio.TaskGroup() as tg:
            await client.subscribe(TOPICS.command(device_id), qos=1)
            now = time.time()
            presence = encode(Presence(online=True, ts=now, device_kind=DeviceKind.BODY_CAM))
            await client.publish(TOPICS.presence(device_id), presence, qos=1, retain=True)
            tg.create_task(_fixes(client, device_id, at, every))
            async for message in client.messages:
                command = decode(Command, message.payload)
                got.append(command)
                ack = Ack(aid=command.aid, status=AckStatus.RECORDING, pre_cov=command.pre, ts=now)
                await client.publish(TOPICS.ack(device_id), encode(ack), qos=1, timeout=5)
    except aiomqtt.MqttError:
        settle(client)
        raise


async def _fixes(
    client: aiomqtt.Client, device_id: str, at: tuple[float, float], every: float
) -> None:
    while True:
        fix = Telemetry(ts=time.time(), state=DeviceState.BUFFERING, lat=at[0], lon=at[1], acc=2.0)
        await client.publish(TOPICS.telemetry(device_id), encode(fix), qos=0)
        if not every:
            return
        await asyncio.sleep(every)  # a device's reporting interval, not a wait on a condition


@pytest.mark.time_limit(90)
async def test_a_camera_across_the_boundary_is_commanded_and_each_engine_hears_its_share(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    trigger, owner = near_a_boundary()
    across = destination(*trigger, 90.0, 9.0)
    partitions = cells()
    assert partitions.owner(*across) != owner
    async with partitioned(cluster, tmp_path) as engines:
        got: list[Command] = []
        async with asyncio.TaskGroup() as tg:
            cam = tg.create_task(camera(cluster.nodes[2].mqtt_port, "bwc-across", across, got))
            port = cluster.nodes[1].mqtt_port
            await report(port, "cew1", DeviceKind.CEW, trigger)
            for name, at in FAR:
                await report(port, name, DeviceKind.BODY_CAM, at)
            reported = {"cew1": trigger, "bwc-across": across, **dict(FAR)}
            await each_hears_its_share(engines, partitions, reported)

            draw = Event(
                eid="e1", type="taser_draw", ts=time.time(), lat=trigger[0], lon=trigger[1]
            )
            await publish_as(port, "cew1", TOPICS.event("cew1"), encode(draw))
            aid = activation_id("cew1", "e1")
            await eventually(lambda: [c.aid for c in got] == [aid], timeout=15)
            await eventually(lambda: engines[1 - owner].stats.events_elsewhere == 1)
            assert await engines[owner].ledger.activation(aid) is not None
            assert await engines[1 - owner].ledger.activation(aid) is None
            assert engines[1 - owner].stats.events == 0
            cam.cancel()


@pytest.mark.time_limit(120)
async def test_a_survivor_given_a_dead_engines_partition_plans_the_events_waiting_for_it(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """Failover by configuration: the owner's engine is gone when the trigger is raised;
    the event waits in its partition's durable consumer until the survivor, restarted
    with that partition added, plans it and commands the camera across the boundary."""
    trigger, owner = near_a_boundary()
    other = 1 - owner
    across = destination(*trigger, 90.0, 9.0)
    assert cells().owner(*across) == other
    signer = CommandSigner.generate()
    port = cluster.nodes[1].mqtt_port
    got: list[Command] = []
    async with asyncio.TaskGroup() as tg:
        cam = tg.create_task(
            camera(cluster.nodes[2].mqtt_port, "bwc-across", across, got, every=0.5)
        )
        now = time.time()
        presence = encode(Presence(online=True, ts=now, device_kind=DeviceKind.CEW))
        await publish_as(port, "cew1", TOPICS.presence("cew1"), presence, retain=True)
        async with running(cluster, tmp_path, signer, "engine-a", (other,)) as a:
            async with running(cluster, tmp_path, signer, "engine-b", (owner,), node=1) as b:
                await eventually(lambda: "bwc-across" in a.index and "bwc-across" in b.index)
            # engine-b is gone: the trigger's partition has no engine.
            draw = Event(eid="e1", type="taser_draw", ts=now, lat=trigger[0], lon=trigger[1])
            await publish_as(port, "cew1", TOPICS.event("cew1"), encode(draw))
            await eventually(lambda: a.stats.events_elsewhere == 1, timeout=15)
            assert got == []
        aid = activation_id("cew1", "e1")
        served = (0, 1)
        async with running(cluster, tmp_path, signer, "engine-a", served, warmup_s=2.0) as survivor:
            await eventually(lambda: [c.aid for c in got] == [aid], timeout=20)
            assert survivor.stats.events == 1
            await eventually(lambda: survivor.ledger.activation(aid))
        cam.cancel()
