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
from contextlib import AsyncExitStack, asynccontextmanager
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
from actimesh.geofence import InclusionPolicy, PartitionMap, destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings, RuleTable
from actimesh.triggers.partitions import halo_for
from tests.broker.nats_secured import access_for, engine_transport
from tests.broker.test_nats_engine import TOPICS, mqtt311, publish_as, settle
from tests.waiting import eventually

pytestmark = pytest.mark.integration

POLICY = InclusionPolicy()
#: The 30 ft rules. With dispatch zones (up to 1 km) the halo is 1 km wide, and most
#: of these 20 km would be in both partitions' halos (docs/SCALING.md).
RULES = RuleTable({t: r for t, r in DEFAULT_RULES.rules.items() if r.radius_m < 100.0})
CALGARY = (51.0447, -114.0719)
#: Devices spread over 20 km around the trigger, in both partitions.
FAR = [(f"far-{i}", destination(*CALGARY, 45.0 * i, 2500.0 + 1500.0 * i)) for i in range(8)]


def cells() -> PartitionMap:
    return PartitionMap(2, halo_m=halo_for(RULES, POLICY))


def near_a_boundary() -> tuple[tuple[float, float], int]:
    """A point 3 m west of where the owner changes, going east from Calgary; its owner."""
    partitions = cells()
    owner, step = partitions.owner(*CALGARY), 0.0
    while partitions.owner(*destination(*CALGARY, 90.0, step + 3.0)) == owner:
        step += 1.0
        assert step < 50_000, "no boundary within 50 km east"
    return destination(*CALGARY, 90.0, step), owner


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    fleet = [("cew1", DeviceKind.CEW), ("bwc-across", DeviceKind.BODY_CAM)]
    fleet += [(name, DeviceKind.BODY_CAM) for name, _at in FAR]
    async with NatsCluster(tmp_path / "nats", size=3, access=access_for(TOPICS.agency, fleet)) as c:
        yield c


@asynccontextmanager
async def partitioned(cluster: NatsCluster, tmp_path: Path) -> AsyncIterator[list[Engine]]:
    signer = CommandSigner.generate()
    async with AsyncExitStack() as stack:
        engines = []
        for k in (0, 1):
            ledger = await stack.enter_async_context(SqliteLedger(tmp_path / f"l{k}.sqlite3"))
            settings = EngineSettings(
                engine_id=f"engine-{k}",
                warmup_s=0.01,
                ack_timeout_s=30.0,
                partitions=2,
                partition=(k,),
            )
            engines.append(
                Engine(
                    topics=TOPICS,
                    transport=engine_transport(cluster, k),
                    ledger=ledger,
                    rules=RULES,
                    policy=POLICY,
                    signer=signer,
                    settings=settings,
                )
            )
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(e.run(), name=e.settings.engine_id) for e in engines]
            async with asyncio.timeout(30):
                for engine in engines:
                    await engine.warmed.wait()
            try:
                yield engines
            finally:
                for task in tasks:
                    task.cancel()


async def report(port: int, device_id: str, kind: DeviceKind, at: tuple[float, float]) -> None:
    """A device says it is online (QoS 1, retained) and where it is (QoS 0)."""
    now = time.time()
    presence = encode(Presence(online=True, ts=now, device_kind=kind))
    await publish_as(port, device_id, TOPICS.presence(device_id), presence, retain=True)
    fix = Telemetry(ts=now, state=DeviceState.BUFFERING, lat=at[0], lon=at[1], acc=2.0)
    async with mqtt311(port, device_id) as client:
        await client.publish(TOPICS.telemetry(device_id), encode(fix), qos=0)


async def camera(port: int, device_id: str, at: tuple[float, float], got: list[Command]) -> None:
    """A body camera at ``at`` that records every command it gets and says so."""
    client = mqtt311(port, device_id)
    try:
        async with client:
            await client.subscribe(TOPICS.command(device_id), qos=1)
            now = time.time()
            presence = encode(Presence(online=True, ts=now, device_kind=DeviceKind.BODY_CAM))
            await client.publish(TOPICS.presence(device_id), presence, qos=1, retain=True)
            fix = Telemetry(ts=now, state=DeviceState.BUFFERING, lat=at[0], lon=at[1], acc=2.0)
            await client.publish(TOPICS.telemetry(device_id), encode(fix), qos=0)
            async for message in client.messages:
                command = decode(Command, message.payload)
                got.append(command)
                ack = Ack(aid=command.aid, status=AckStatus.RECORDING, pre_cov=command.pre, ts=now)
                await client.publish(TOPICS.ack(device_id), encode(ack), qos=1, timeout=5)
    except aiomqtt.MqttError:
        settle(client)
        raise


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
            expected = [
                {d for d, at in reported.items() if k in partitions.partitions_for(*at)}
                for k in (0, 1)
            ]
            await eventually(
                lambda: [{d for d in reported if d in e.index} for e in engines] == expected,
                timeout=20,
            )
            # Each engine indexed its share and no more: it received only that.
            received = [e.telemetry_link.stats.received for e in engines]
            assert received == [len(share) for share in expected]
            assert all(0 < n < len(reported) for n in received), received
            assert sum(e.stats.relayed for e in engines) == len(reported)

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
