"""One officer's TASER draws on a secured NATS cluster, with a thief on it (not a test).

What tests/broker/test_nats_floods.py and ``flood_probe --cluster`` share: a data
directory whose registry holds an officer's CEW and body camera and a stolen body camera
and CEW; a three-node cluster whose accounts are that registry's (auth callouts binding
client ids); the engine ``actimesh cluster up`` builds (:func:`build_engine` on
:class:`NatsTransport`, the registry as its directory, :func:`cluster_quarantine`), on
node 0; the officer's CEW on node 1's MQTT 3.1.1 listener and the camera on node 2's.
The thief logs in on node 1, beside the officer's CEW.

:meth:`ClusterWorld.draw` times one draw from the CEW's PUBLISH to the camera's receipt
of its command (the camera acknowledges it, as a camera does).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt

from actimesh.broker.client import _no_lost_cancel
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
from actimesh.broker.nats import NatsCluster, NatsTransport
from actimesh.broker.topics import DeviceChannel, Topics, device_client_id
from actimesh.geofence import InclusionPolicy, destination
from actimesh.ledger import SqliteLedger
from actimesh.runtime.compose import build_engine, cluster_quarantine, open_directory
from actimesh.runtime.config import Settings
from actimesh.security.acl import SERVICE_DISPATCH, SERVICE_ENGINE
from actimesh.security.nats_access import NATS_CLUSTER_DIR, registry_nats_access
from actimesh.security.provision import BROKER_DIR
from actimesh.security.registry import SECRETS_DIR, Registry
from actimesh.triggers import Engine, EngineSettings

__all__ = [
    "AGENCY",
    "FLOODS",
    "OFFICER_CAM",
    "OFFICER_CEW",
    "STOLEN_CAM",
    "STOLEN_CEW",
    "TOPICS",
    "ClusterWorld",
    "cluster_world",
    "fair_settings",
]

AGENCY = "ag"
TOPICS = Topics(AGENCY)
OFFICER_CEW, OFFICER_CAM = "cew-1", "bwc-own"
STOLEN_CAM, STOLEN_CEW = "bwc-stolen", "cew-stolen"
LAT, LON = 51.0447, -114.0719
CAM_LAT, CAM_LON = destination(LAT, LON, 90.0, 5.0)
HOST = "127.0.0.1"

#: Each flood: (the thief, its channel, the QoS). Events, acknowledgements and presence
#: reach the engine only at QoS 1 (stored in JetStream); telemetry is QoS 0 core NATS.
FLOODS: dict[str, tuple[str, DeviceChannel, int]] = {
    "events": (STOLEN_CAM, DeviceChannel.EVENT, 1),  # a body camera may not raise draws
    "acks": (STOLEN_CAM, DeviceChannel.ACK, 1),  # for activations that never commanded it
    "rate": (STOLEN_CEW, DeviceChannel.EVENT, 1),  # its own draws, far over its rate
    "presence": (STOLEN_CAM, DeviceChannel.PRESENCE, 1),
    "telemetry": (STOLEN_CAM, DeviceChannel.TELEMETRY, 0),
}


def fair_settings(**changes: Any) -> EngineSettings:
    """The engine's settings with the limits one officer drawing forty times a second
    needs (every draw commands the camera anew, within the CEW's control and storm
    budgets); the thief has the same limits, nothing else is lifted."""
    base = EngineSettings(
        engine_id="engine-1",
        warmup_s=0.01,
        ack_timeout_s=30.0,
        freeze_heap=False,
        merge_window_s=0.0,
        device_rate_per_s=50.0,
        control_rate_per_s=100.0,
    )
    return replace(base, **changes)


def _client(port: int, device_id: str, password: str, *, clean: bool = True) -> aiomqtt.Client:
    client = aiomqtt.Client(
        HOST,
        port,
        identifier=device_client_id(AGENCY, device_id),
        username=device_id,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=clean,
        timeout=10,
        keepalive=10,
    )
    _no_lost_cancel(client)  # aiomqtt's waits can lose a cancellation on 3.11
    return client


@dataclass
class _Camera:
    """The officer's body camera: a persistent session subscribed to its commands, each
    answered ``recording``; when each activation's command arrived (monotonic)."""

    client: aiomqtt.Client
    arrived: dict[str, float] = field(default_factory=dict)
    waiting: dict[str, asyncio.Event] = field(default_factory=dict)

    async def run(self) -> None:
        async for message in self.client.messages:
            at = time.monotonic()
            assert isinstance(message.payload, bytes)
            command = decode(Command, message.payload)
            self.arrived.setdefault(command.aid, at)
            if (event := self.waiting.pop(command.aid, None)) is not None:
                event.set()
            ack = Ack(aid=command.aid, status=AckStatus.RECORDING, pre_cov=30.0, ts=time.time())
            await self.client.publish(TOPICS.ack(OFFICER_CAM), encode(ack), qos=1, timeout=10)


@dataclass
class ClusterWorld:
    data_dir: Path
    cluster: NatsCluster
    passwords: dict[str, str]
    engine: Engine
    ledger_path: Path
    _cew: aiomqtt.Client
    _camera: _Camera
    _eids: itertools.count[int] = field(default_factory=itertools.count)

    def login(self, device_id: str) -> tuple[str, str, str]:
        """(username, password, client id) of ``device_id``."""
        return device_id, self.passwords[device_id], device_client_id(AGENCY, device_id)

    def flood(self, kind: str) -> tuple[int, str, str, tuple[str, str, str], int]:
        """What :func:`~tests.integration.flood_probe.flooding` takes for ``kind``: the
        port (node 1), topic, kind, login and QoS."""
        thief, channel, qos = FLOODS[kind]
        port = self.cluster.nodes[1].mqtt_port
        return port, TOPICS.device(thief, channel), kind, self.login(thief), qos

    async def draw(self) -> float:
        """Seconds from the officer's TASER draw to its camera's command."""
        eid = f"draw-{next(self._eids)}"
        aid = activation_id(OFFICER_CEW, eid)
        arrived = self._camera.waiting[aid] = asyncio.Event()
        event = Event(eid=eid, type="taser_draw", ts=time.time(), lat=LAT, lon=LON, acc=3.0)
        started = time.monotonic()
        await self._cew.publish(TOPICS.event(OFFICER_CEW), encode(event), qos=1, timeout=10)
        async with asyncio.timeout(30):
            await arrived.wait()
        return self._camera.arrived[aid] - started


def _registry(root: Path, settings: Settings) -> tuple[dict[str, str], str]:
    """The fleet's passwords and the engine's. The agency's policy is recorded, as
    ``actimesh up`` records it: every later apply (a quarantine, ``actimesh devices
    enable``) renders the accounts for it."""
    with Registry.open(root) as registry:
        registry.write_broker_files(root / BROKER_DIR, settings.acl_policy())
        services = registry.ensure_service_accounts(root / SECRETS_DIR)
        fleet = {
            OFFICER_CEW: DeviceKind.CEW,
            OFFICER_CAM: DeviceKind.BODY_CAM,
            STOLEN_CAM: DeviceKind.BODY_CAM,
            STOLEN_CEW: DeviceKind.CEW,
        }
        passwords = {d: registry.add(d, kind).password for d, kind in fleet.items()}
    passwords[SERVICE_DISPATCH] = services[SERVICE_DISPATCH].password
    return passwords, services[SERVICE_ENGINE].password


@asynccontextmanager
async def cluster_world(root: Path, engine_settings: EngineSettings) -> AsyncIterator[ClusterWorld]:
    """The world above, the engine warm and the camera's position known to it."""
    settings = Settings(
        agency=AGENCY,
        data_dir=root,
        engine=engine_settings,
        policy=InclusionPolicy(max_fix_age_s=3600.0),  # one fix for the whole run
    )
    passwords, engine_password = await asyncio.to_thread(_registry, root, settings)
    with Registry.open(root) as registry:
        access = registry_nats_access(registry, settings.acl_policy())
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(
            NatsCluster(root / NATS_CLUSTER_DIR, size=3, access=access)
        )
        ledger_path = root / "ledger.sqlite3"
        ledger = await stack.enter_async_context(SqliteLedger(ledger_path))
        directory = await stack.enter_async_context(open_directory(settings))
        transport = NatsTransport(
            [cluster.nodes[0].nats_url], user=SERVICE_ENGINE, password=engine_password
        )
        engine = build_engine(settings, transport, ledger, directory, cluster_quarantine(settings))
        tg = await stack.enter_async_context(asyncio.TaskGroup())
        running = [tg.create_task(engine.run(), name="engine")]

        def stop() -> None:
            for task in running:
                task.cancel()

        stack.callback(stop)
        async with asyncio.timeout(30):
            await engine.warmed.wait()
        camera_client = _client(
            cluster.nodes[2].mqtt_port, OFFICER_CAM, passwords[OFFICER_CAM], clean=False
        )
        await stack.enter_async_context(camera_client)
        await camera_client.subscribe(TOPICS.command(OFFICER_CAM), qos=1)
        camera = _Camera(camera_client)
        running.append(tg.create_task(camera.run(), name="camera"))
        now = time.time()
        presence = Presence(online=True, ts=now, device_kind=DeviceKind.BODY_CAM)
        await camera_client.publish(TOPICS.presence(OFFICER_CAM), encode(presence), qos=1)
        fix = Telemetry(ts=now, state=DeviceState.BUFFERING, lat=CAM_LAT, lon=CAM_LON, acc=3.0)
        await camera_client.publish(TOPICS.telemetry(OFFICER_CAM), encode(fix), qos=0)
        cew = _client(cluster.nodes[1].mqtt_port, OFFICER_CEW, passwords[OFFICER_CEW])
        await stack.enter_async_context(cew)
        async with asyncio.timeout(20):
            while engine.index.get(OFFICER_CAM) is None:
                await asyncio.sleep(0.02)
        stack.callback(stop)  # before the devices' connections close
        yield ClusterWorld(root, cluster, passwords, engine, ledger_path, cew, camera)
