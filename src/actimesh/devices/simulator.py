"""The fleet simulator: cruiser crews patrolling a city area, incidents, and triggers.

Each unit is a cruiser (gateway, dash camera, back-seat camera) and one or two officers
(body camera and CEW each). Every device is a real :class:`DeviceAgent` with its own MQTT
connection, persistent session and last will. Between incidents units patrol; an incident
sends two or three units to one spot with their emergency lights on, their officers step
out and stand within a few metres of each other, and one of them draws a TASER — so a
trigger near several officers activates all of their cameras, as in the field. Now and
then a cruiser has a collision. An officer stops a recording some time later: the mesh
never does.

Positions carry GPS noise matching the accuracy they report. Cameras start "warm": their
buffers hold the minutes before the simulation started, as a camera buffering since the
start of the shift would.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.broker.client import MqttProtocol
from actimesh.broker.messages import CAMERA_KINDS, DeviceKind
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.devices.camera import Camera
from actimesh.devices.media import MediaSource, Switchable
from actimesh.devices.recorder import RecordingStore
from actimesh.devices.settings import MediaKind, MediaSettings, open_media_source
from actimesh.geofence import destination, distance_m
from actimesh.security.registry import DeviceCredentials
from actimesh.security.signing import CommandVerifier

__all__ = ["FleetSimulator", "SimSettings", "Unit"]

log = logging.getLogger(__name__)

_EARTH_M_PER_DEG = 111_320.0
#: The cameras a cruiser carries, by device id suffix; its gateway is paired with each.
_CRUISER_CAMERAS = (("dash", DeviceKind.DASH_CAM), ("rear", DeviceKind.REAR_CAM))


@dataclass(frozen=True, slots=True)
class SimSettings:
    """The simulated fleet."""

    units: int = 8
    #: Centre of the patrol area (default: downtown Calgary).
    center: tuple[float, float] = (51.0447, -114.0719)
    area_radius_m: float = 700.0
    cruiser_speed_mps: float = 14.0
    incident_every_s: float = 20.0
    collision_chance: float = 0.1
    #: How long officers keep recording after an incident before stopping by hand.
    stop_after_s: float = 45.0
    telemetry_interval_s: float = 1.0
    pre_roll_s: float = 30.0
    gps_accuracy_m: float = 3.0
    seed: int | None = None
    #: ``media.source`` is the switch: synthetic segments (the default; thousands of
    #: cameras fit on one machine) or real H.264 of the test pattern, a thread a camera.
    media: MediaSettings = field(default_factory=MediaSettings)
    #: The MQTT version every simulated device speaks: ``"3.1.1"`` towards a broker
    #: that speaks nothing newer (the NATS cluster).
    mqtt_protocol: MqttProtocol = "5"

    def __post_init__(self) -> None:
        if not 1 <= self.units <= 2000:
            raise ValueError("the simulated fleet needs between 1 and 2000 units")


class _Mode(StrEnum):
    PATROL = "patrol"
    RESPONDING = "responding"
    ON_SCENE = "on_scene"


@dataclass(slots=True)
class _Walker:
    """A moving thing with a true position; devices report it with GPS noise."""

    lat: float
    lon: float
    rng: random.Random
    acc: float

    def fix(self, now: float) -> Position:
        # Report a noisy fix whose error matches the claimed 1-sigma accuracy.
        north = self.rng.gauss(0.0, self.acc / math.sqrt(2))
        east = self.rng.gauss(0.0, self.acc / math.sqrt(2))
        lat = self.lat + north / _EARTH_M_PER_DEG
        lon = self.lon + east / (_EARTH_M_PER_DEG * max(0.01, math.cos(math.radians(self.lat))))
        return Position(lat, lon, self.acc, now)


@dataclass(slots=True)
class Unit:
    """A cruiser crew."""

    name: str
    car: _Walker
    officers: list[_Walker]
    gateway: DeviceAgent | None = None
    cameras: list[DeviceAgent] = field(default_factory=list)
    body_cams: list[DeviceAgent] = field(default_factory=list)
    cews: list[DeviceAgent] = field(default_factory=list)
    mode: _Mode = _Mode.PATROL
    target: tuple[float, float] | None = None
    scene: tuple[float, float] | None = None
    since: float = 0.0
    tased: bool = False


class FleetSimulator:
    """Builds the agents of a simulated fleet and drives them.

    ``verifier`` holds the engine's public key; the simulated cameras refuse every
    command without it, as real ones do. With ``spread_ports`` the devices are dealt in
    turn over ``broker_port`` and those (one MQTT listener per node of a cluster).
    """

    def __init__(
        self,
        *,
        topics: Topics,
        broker_host: str,
        broker_port: int,
        data_dir: Path,
        settings: SimSettings | None = None,
        clock: Callable[[], float] = time.time,
        on_trigger: Callable[[str, str], None] | None = None,
        verifier: CommandVerifier | None = None,
        spread_ports: Sequence[int] = (),
    ) -> None:
        self.settings = settings or SimSettings()
        self.verifier = verifier
        self.topics = topics
        self.clock = clock
        self.rng = random.Random(self.settings.seed)
        self.on_trigger = on_trigger
        self.store = RecordingStore(data_dir / "recordings")
        self.units: list[Unit] = []
        self.agents: list[DeviceAgent] = []
        self.triggers: dict[str, int] = {}
        self._host, self._started = broker_host, clock()
        # Devices are dealt over these in turn: a cluster's MQTT listeners, one per node.
        self._ports = (broker_port, *spread_ports)
        for n in range(self.settings.units):
            self.units.append(self._build_unit(n))

    # ------------------------------------------------------------------ building
    def _random_point(self) -> tuple[float, float]:
        lat0, lon0 = self.settings.center
        bearing = self.rng.uniform(0, 360)
        dist = self.settings.area_radius_m * math.sqrt(self.rng.random())
        return destination(lat0, lon0, bearing, dist)

    def _camera(
        self,
        device_id: str,
        kind: DeviceKind,
        *,
        source: MediaSource | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> Camera:
        media = self.settings.media
        if source is None:
            # The fleet films the pattern (device "none"): a thousand cameras cannot share
            # one sensor. A fleet on a test clock encodes on demand instead of live.
            source = open_media_source(
                media, device_id, device="none", live=self.clock is time.time, clock=self.clock
            )
        # Synthetic cameras start warm: the buffer already holds the pre-roll, as after a
        # shift's start. Real video has to be filmed (and encoding 90 s of it for every
        # camera at start-up would stall the machine), so those start now.
        warm = media.source is MediaKind.SYNTHETIC
        return Camera(
            device_id=device_id,
            kind=kind,
            source=source,
            store=self.store,
            pre_roll_s=self.settings.pre_roll_s,
            started_at=self._started - (self.settings.pre_roll_s + 60.0 if warm else 0.0),
            stealth=media.stealth,
            buffer_audio=media.buffer_audio,
            cancel_window_s=media.cancel_window_s,
            signing_key=key,
        )

    def use_credentials(self, creds: Mapping[str, DeviceCredentials]) -> None:
        """Log every device in as itself and give every camera its Ed25519 key, so each
        manifest it writes is signed. Call before :meth:`run`, with what the registry
        issued (the registry needs the built fleet to know whom to register)."""
        for agent in self.agents:
            mine = creds[agent.device_id]
            agent.link.reconfigure(username=agent.device_id, password=mine.password)
            if agent.camera is not None:
                key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(mine.private_key))
                # Same source (its capture thread keeps running), now with the key.
                agent.camera = self._camera(
                    agent.device_id, agent.kind, source=agent.camera.source, key=key
                )

    def _agent(
        self,
        device_id: str,
        *,
        kind: DeviceKind,
        unit: Unit,
        walker: _Walker | None,
        paired: tuple[str, ...] = (),
        peers: tuple[DeviceAgent, ...] = (),
    ) -> DeviceAgent:
        camera = self._camera(device_id, kind) if kind in CAMERA_KINDS else None

        def position() -> Position | None:
            return walker.fix(self.clock()) if walker is not None else None

        agent = DeviceAgent(
            topics=self.topics,
            device_id=device_id,
            kind=kind,
            unit=unit.name,
            paired=paired,
            camera=camera,
            verifier=self.verifier,
            local_peers=peers,
            broker_host=self._host,
            broker_port=self._ports[len(self.agents) % len(self._ports)],
            position=position,
            telemetry_interval_s=self.settings.telemetry_interval_s,
            clock=self.clock,
            mqtt_protocol=self.settings.mqtt_protocol,
        )
        self.agents.append(agent)
        return agent

    def _build_unit(self, n: int) -> Unit:
        name = f"unit{n + 1:03d}"
        lat, lon = self._random_point()
        acc = self.settings.gps_accuracy_m
        car = _Walker(lat, lon, self.rng, acc)
        crew = 1 if self.rng.random() < 0.5 else 2
        officers = [_Walker(lat, lon, self.rng, acc) for _ in range(crew)]
        unit = Unit(name, car, officers)
        cruiser = tuple(
            self._agent(f"{name}-{suffix}", kind=kind, unit=unit, walker=car)
            for suffix, kind in _CRUISER_CAMERAS
        )
        unit.cameras += cruiser
        unit.gateway = self._agent(
            f"{name}-gw",
            kind=DeviceKind.GATEWAY,
            unit=unit,
            walker=car,
            paired=tuple(camera.device_id for camera in cruiser),
            peers=cruiser,
        )
        for i, walker in enumerate(officers):
            body = self._agent(
                f"{name}-bwc{i + 1}", kind=DeviceKind.BODY_CAM, unit=unit, walker=walker
            )
            cew = self._agent(
                f"{name}-cew{i + 1}",
                kind=DeviceKind.CEW,
                unit=unit,
                walker=None,
                paired=(body.device_id,),
                peers=(body,),
            )
            unit.cameras.append(body)
            unit.body_cams.append(body)
            unit.cews.append(cew)
        return unit

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        """Run every agent and the world until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                for agent in self.agents:
                    tg.create_task(agent.run(), name=f"sim-{agent.device_id}")
                tg.create_task(self._world(), name="sim-world")
        finally:
            self.close()

    def close(self) -> None:
        """Stop the cameras' capture threads (real video only; idempotent)."""
        for agent in self.agents:
            camera = agent.camera
            if camera is not None and isinstance(camera.source, Switchable):
                camera.source.switch_off()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            for agent in self.agents:
                await agent.link.wait_connected(timeout=timeout)

    async def _world(self) -> None:
        await self.wait_connected()
        tick = 0.5
        next_incident = self.clock() + 3.0
        while True:
            now = self.clock()
            for unit in self.units:
                await self._step(unit, now, tick)
            if now >= next_incident:
                await self._start_incident(now)
                next_incident = now + self.settings.incident_every_s
            await asyncio.sleep(tick)

    async def _fire(self, agent: DeviceAgent, event_type: str) -> None:
        self.triggers[event_type] = self.triggers.get(event_type, 0) + 1
        if self.on_trigger is not None:
            self.on_trigger(agent.device_id, event_type)
        await agent.raise_event(event_type)

    async def _start_incident(self, now: float) -> None:
        free = [u for u in self.units if u.mode is _Mode.PATROL]
        if not free:
            return
        scene = self._random_point()
        lat, lon = scene
        free.sort(key=lambda u: distance_m(u.car.lat, u.car.lon, lat, lon))
        responders = free[: self.rng.randint(2, 3)]
        for unit in responders:
            unit.mode = _Mode.RESPONDING
            unit.scene = scene
            # Park within 8-20 m of the scene, each at its own bearing.
            unit.target = destination(lat, lon, self.rng.uniform(0, 360), self.rng.uniform(8, 20))
            unit.since = now
            unit.tased = False
            if unit.gateway is not None:
                await self._fire(unit.gateway, "emergency_lights")
        if self.rng.random() < self.settings.collision_chance and len(free) > len(responders):
            crash = free[-1]
            if crash.gateway is not None:
                await self._fire(crash.gateway, "collision")
                crash.mode = _Mode.ON_SCENE
                crash.scene = (crash.car.lat, crash.car.lon)
                crash.since = now
                crash.tased = True

    async def _step(self, unit: Unit, now: float, dt: float) -> None:
        if unit.mode is _Mode.PATROL and unit.target is None:
            unit.target = self._random_point()
        if unit.mode in (_Mode.PATROL, _Mode.RESPONDING) and unit.target is not None:
            arrived = self._move(unit.car, unit.target, self.settings.cruiser_speed_mps * dt)
            for officer in unit.officers:
                officer.lat, officer.lon = unit.car.lat, unit.car.lon
            if arrived:
                if unit.mode is _Mode.RESPONDING and unit.scene is not None:
                    unit.mode = _Mode.ON_SCENE
                    unit.since = now
                    for officer in unit.officers:
                        # Officers walk up to within a few metres of the scene.
                        officer.lat, officer.lon = destination(
                            *unit.scene, self.rng.uniform(0, 360), self.rng.uniform(0.5, 4.0)
                        )
                unit.target = None
        elif unit.mode is _Mode.ON_SCENE:
            if not unit.tased and now - unit.since > 4.0 and unit.cews:
                unit.tased = True
                if self.rng.random() < 0.6:
                    await self._fire(self.rng.choice(unit.cews), "taser_draw")
            if now - unit.since > self.settings.stop_after_s:
                for agent in unit.cameras:
                    await agent.stop_recording()
                unit.mode = _Mode.PATROL
                unit.scene = None
                unit.target = None

    @staticmethod
    def _move(walker: _Walker, target: tuple[float, float], step_m: float) -> bool:
        remaining = distance_m(walker.lat, walker.lon, *target)
        if remaining <= step_m:
            walker.lat, walker.lon = target
            return True
        frac = step_m / remaining
        walker.lat += (target[0] - walker.lat) * frac
        walker.lon += (target[1] - walker.lon) * frac
        return False
