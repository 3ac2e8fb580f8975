"""Two engines owning geographic partitions on a real Mosquitto (MQTT 5).

The same as tests/broker/test_nats_partitions.py, on the embedded default broker: the
relay's share of raw telemetry and each partition's share of trigger events are MQTT
shared subscriptions. A camera 9 m across a partition boundary is commanded, by the
trigger's owner alone, and each engine indexes and receives only its share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    Command,
    DeviceKind,
    DeviceState,
    Event,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.mosquitto import ManagedMosquitto
from actimesh.broker.topics import Topics
from actimesh.broker.transport import MqttTransport
from actimesh.geofence import destination
from actimesh.security.acl import SERVICE_ENGINE
from actimesh.triggers import Engine
from tests.conftest import SecureBroker
from tests.engines import running
from tests.partitions import FAR, cells, each_hears_its_share, near_a_boundary, two_engines
from tests.waiting import eventually

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


@asynccontextmanager
async def partitioned(
    transport: Callable[[], MqttTransport], topics: Topics, tmp_path: Path
) -> AsyncIterator[list[Engine]]:
    async with AsyncExitStack() as stack:
        engines = await two_engines(stack, topics, transport, tmp_path)
        async with running(engines, warm_within=30) as started:
            yield started


async def report(
    client: aiomqtt.Client,
    topics: Topics,
    device_id: str,
    kind: DeviceKind,
    at: tuple[float, float],
) -> None:
    now = time.time()
    presence = encode(Presence(online=True, ts=now, device_kind=kind))
    await client.publish(topics.presence(device_id), presence, qos=1, retain=True)
    fix = Telemetry(ts=now, state=DeviceState.BUFFERING, lat=at[0], lon=at[1], acc=2.0)
    await client.publish(topics.telemetry(device_id), encode(fix), qos=0)


#: A device's own MQTT connection: ``login(device_id)``.
Login = Callable[[str], aiomqtt.Client]


async def across_the_boundary(engines: list[Engine], topics: Topics, login: Login) -> None:
    """Each engine indexes and receives its share; the camera 9 m across the boundary
    from a TASER draw is commanded, by the owner of the draw's position alone."""
    trigger, owner = near_a_boundary()
    across = destination(*trigger, 90.0, 9.0)
    partitions = cells()
    assert partitions.owner(*across) != owner
    kinds = {"cew1": DeviceKind.CEW} | {name: DeviceKind.BODY_CAM for name, _ in FAR}
    reported = {"cew1": trigger, **dict(FAR)}
    async with login("bwc-across") as camera:
        await camera.subscribe(topics.command("bwc-across"), qos=1)
        await report(camera, topics, "bwc-across", DeviceKind.BODY_CAM, across)
        for name, at in reported.items():
            async with login(name) as device:
                await report(device, topics, name, kinds[name], at)
        reported["bwc-across"] = across
        await each_hears_its_share(engines, partitions, reported)

        now = time.time()
        draw = Event(eid="e1", type="taser_draw", ts=now, lat=trigger[0], lon=trigger[1])
        async with login("cew1") as cew:
            await cew.publish(topics.event("cew1"), encode(draw), qos=1)
        async with asyncio.timeout(15):
            message = await anext(aiter(camera.messages))
        aid = activation_id("cew1", "e1")
        assert decode(Command, message.payload).aid == aid
        await eventually(lambda: engines[1 - owner].stats.events_elsewhere == 1)
        await eventually(lambda: engines[owner].ledger.activation(aid))
        assert engines[1 - owner].stats.events == 0


@pytest.mark.time_limit(60)
async def test_a_camera_across_the_boundary_is_commanded_and_each_engine_hears_its_share(
    mosquitto: ManagedMosquitto, agency: str, tmp_path: Path
) -> None:
    topics = Topics(agency)

    def login(device_id: str) -> aiomqtt.Client:
        return aiomqtt.Client(HOST, mosquitto.port, identifier=f"{agency}-{device_id}")

    def transport() -> MqttTransport:
        return MqttTransport(HOST, mosquitto.port)

    async with partitioned(transport, topics, tmp_path) as engines:
        await across_the_boundary(engines, topics, login)


@pytest.mark.time_limit(90)
async def test_the_same_on_a_secured_broker_with_the_engine_account(
    secure_mosquitto: SecureBroker, agency: str, tmp_path: Path
) -> None:
    """The engine account may join the relay's share group and read the relayed
    telemetry; each device logs in as itself."""
    topics = Topics(agency)
    logins = {
        name: secure_mosquitto.add_device(name, kind).mqtt
        for name, kind in [
            ("cew1", DeviceKind.CEW),
            ("bwc-across", DeviceKind.BODY_CAM),
            *((name, DeviceKind.BODY_CAM) for name, _at in FAR),
        ]
    }
    engine = secure_mosquitto.services[SERVICE_ENGINE]

    def login(device_id: str) -> aiomqtt.Client:
        creds = logins[device_id]
        return aiomqtt.Client(
            HOST,
            secure_mosquitto.port,
            identifier=secure_mosquitto.client_id(device_id),
            username=creds.username,
            password=creds.password,
        )

    def transport() -> MqttTransport:
        return MqttTransport(
            HOST, secure_mosquitto.port, username=engine.username, password=engine.password
        )

    async with partitioned(transport, topics, tmp_path) as engines:
        await across_the_boundary(engines, topics, login)
