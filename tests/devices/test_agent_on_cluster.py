"""Device agents on MQTT 3.1.1, on a three-node NATS cluster.

The cluster's MQTT listener speaks 3.1.1 only. A real body camera (its agent and its
camera core) connects to one node, a CEW to another, the engine to a third through the
NATS transport: a TASER draw ends with the camera's pre-event buffer committed and its
``recording`` answer in the engine's ledger, as it does on Mosquitto over MQTT 5.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actimesh.broker.messages import AckStatus, DeviceKind, activation_id
from actimesh.broker.nats import NatsCluster
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.geofence import InclusionPolicy, destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings
from tests.broker.nats_secured import access_for, engine_transport, password_of
from tests.waiting import eventually

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
TOPICS = Topics("am-nats-agents")
#: A NATS server refuses a client id with a dot; device ids may hold one (``~`` stands in).
DOTTED = Topics("am.nats")
LAT, LON = 51.0447, -114.0719  # Calgary
CAM_LAT, CAM_LON = destination(LAT, LON, 90.0, 5.0)


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[NatsCluster]:
    """Admitting the agency and devices of the test's parameters (or the plain ones)."""
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    topics: Topics = params.get("topics", TOPICS)
    fleet = [
        (params.get("bwc_id", "bwc1"), DeviceKind.BODY_CAM),
        (params.get("cew_id", "cew1"), DeviceKind.CEW),
    ]
    access = access_for(topics.agency, fleet)
    async with NatsCluster(tmp_path / "nats", size=3, access=access) as running:
        yield running


def at(lat: float, lon: float) -> Position:
    return Position(lat, lon, 3.0, time.time())


def device(
    cluster: NatsCluster,
    node: int,
    device_id: str,
    kind: DeviceKind,
    lat: float,
    lon: float,
    signer: CommandSigner,
    camera: Camera | None = None,
    topics: Topics = TOPICS,
) -> DeviceAgent:
    return DeviceAgent(
        topics=topics,
        device_id=device_id,
        kind=kind,
        broker_host=HOST,
        broker_port=cluster.nodes[node].mqtt_port,
        username=device_id,
        password=password_of(device_id),
        position=lambda: at(lat, lon),
        camera=camera,
        verifier=signer.verifier(),
        telemetry_interval_s=0.2,
        resend_initial_s=0.3,
        mqtt_protocol="3.1.1",
    )


def test_a_device_can_be_told_to_speak_3_1_1() -> None:
    signer = CommandSigner.generate()
    common = {
        "topics": TOPICS,
        "device_id": "cew9",
        "kind": DeviceKind.CEW,
        "broker_host": HOST,
        "broker_port": 1883,
        "position": lambda: None,
        "verifier": signer.verifier(),
    }
    assert DeviceAgent(**common).link.settings.protocol == "5"  # type: ignore[arg-type]
    told = DeviceAgent(**common, mqtt_protocol="3.1.1")  # type: ignore[arg-type]
    assert told.link.settings.protocol == "3.1.1"
    assert told.link.settings.session_expiry_s > 0  # a persistent session still


@pytest.mark.time_limit(60)
@pytest.mark.parametrize(
    ("topics", "bwc_id", "cew_id"),
    [(TOPICS, "bwc1", "cew1"), (DOTTED, "bwc.1", "cew.1")],
    ids=["plain-ids", "dotted-ids"],
)
async def test_a_taser_draw_on_one_node_starts_a_body_camera_on_another(
    cluster: NatsCluster, tmp_path: Path, topics: Topics, bwc_id: str, cew_id: str
) -> None:
    signer = CommandSigner.generate()
    store = RecordingStore(tmp_path / "recordings")
    camera = Camera(
        device_id=bwc_id,
        kind=DeviceKind.BODY_CAM,
        source=SyntheticSource(bwc_id),
        store=store,
        started_at=time.time() - 60.0,
    )
    bwc = device(cluster, 2, bwc_id, DeviceKind.BODY_CAM, CAM_LAT, CAM_LON, signer, camera, topics)
    cew = device(cluster, 1, cew_id, DeviceKind.CEW, LAT, LON, signer, topics=topics)
    async with SqliteLedger(tmp_path / "ledger.sqlite3") as ledger:
        engine = Engine(
            topics=topics,
            transport=engine_transport(cluster, 0),
            ledger=ledger,
            rules=DEFAULT_RULES,
            policy=InclusionPolicy(),
            signer=signer,
            settings=EngineSettings(warmup_s=0.01, engine_id="engine-1", ack_timeout_s=30.0),
        )
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(engine.run(), name="engine-1"),
                tg.create_task(bwc.run(), name=bwc_id),
                tg.create_task(cew.run(), name=cew_id),
            ]
            try:
                async with asyncio.timeout(30):
                    await engine.warmed.wait()
                    await bwc.link.wait_connected(timeout=30)
                    await cew.link.wait_connected(timeout=30)
                await eventually(lambda: len(engine.index) == 2, timeout=20)

                event = await cew.raise_event("taser_draw")
                aid = activation_id(cew_id, event.eid)
                await eventually(lambda: bwc.received, timeout=15)
                (got,) = bwc.received
                assert got.command.aid == aid
                assert got.result.status is AckStatus.RECORDING
                assert got.result.recording_id is not None
                assert got.result.pre_roll_covered_s > 0  # the buffer before the draw
                assert store.path_of(bwc_id, got.result.recording_id).is_dir()

                async def recorded() -> list[str]:
                    acks = await ledger.acks(aid)
                    statuses = [a.status for a in acks if a.device_id == bwc_id]
                    return statuses if AckStatus.RECORDING.value in statuses else []

                statuses = await eventually(recorded, timeout=15)
                # Its first answer at once, the second once the buffer was committed.
                assert statuses.index("received") < statuses.index("recording")
                assert bwc.stats.rejected_commands == 0
                assert engine.control_link.stats.handler_errors == 0
            finally:
                for task in tasks:
                    task.cancel()
