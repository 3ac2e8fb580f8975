"""The fleet simulator: cruiser crews on a shift in a city, incidents, and triggers.

Each unit is a cruiser (gateway, dash camera, back-seat camera) and one or two officers
(body camera and CEW each). Every device is a real :class:`DeviceAgent` with its own MQTT
connection, persistent session and last will. What the crews do (patrols along the
streets, incidents a few an hour per crew, officers walking to a scene and drawing a
TASER, lost GPS and radio dead spots, docking at the station) is the
:class:`~actimesh.devices.simulator_world.World`'s; this module builds the fleet and
carries out what the world says with the agents: triggers, the officer's stop (the mesh
never stops a recording), connection cuts, and the offload of a docked camera's
recordings to the evidence store.

The fleet is seeded (:data:`DEFAULT_SEED` unless told otherwise): the same settings give
the same devices, crews and shift on every start. Positions carry GPS noise matching the
accuracy they report. Cameras start "warm": their buffers hold the minutes before the
simulation started, as a camera buffering since the start of the shift would.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.broker.client import MqttProtocol
from actimesh.broker.codec import encode
from actimesh.broker.messages import CAMERA_KINDS, DeviceKind, OfflineReason, Presence
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.devices.camera import Camera
from actimesh.devices.media import MediaSource, Switchable
from actimesh.devices.offload import Offloader
from actimesh.devices.recorder import RecordingStore
from actimesh.devices.reporting import ReportingSettings
from actimesh.devices.settings import MediaKind, MediaSettings, open_media_source
from actimesh.devices.simulator_streets import StreetMap
from actimesh.devices.simulator_world import Unit, Walker, World
from actimesh.errors import BrokerError, EvidenceError
from actimesh.security.registry import DeviceCredentials
from actimesh.security.signing import CommandVerifier

__all__ = ["DEFAULT_SEED", "FleetSimulator", "SimSettings", "Unit"]

log = logging.getLogger(__name__)

#: The seed of a fleet nobody gave one: every start of the demo has the same fleet.
DEFAULT_SEED = 15
#: The cameras a cruiser carries, by device id suffix; its gateway is paired with each.
_CRUISER_CAMERAS = (("dash", DeviceKind.DASH_CAM), ("rear", DeviceKind.REAR_CAM))
#: Docked cameras waiting for the offload; more are dropped (counted) and offload at
#: their next dock.
_DOCK_QUEUE = 256


@dataclass(frozen=True, slots=True)
class SimSettings:
    """The simulated fleet and its shift (see :mod:`actimesh.devices.simulator_world`)."""

    units: int = 8
    #: Centre of the synthetic patrol area, without a street map (downtown Calgary).
    center: tuple[float, float] = (51.0447, -114.0719)
    area_radius_m: float = 700.0
    cruiser_speed_mps: float = 14.0
    #: Incidents a crew sees an hour; each brings two or three crews (lights: a trigger
    #: each) and often a CEW drawn: about three triggers an hour per crew.
    incidents_per_crew_hour: float = 1.0
    #: An incident every this many seconds instead (quick runs), the first after 3 s.
    incident_every_s: float | None = None
    collision_chance: float = 0.1
    #: How long crews stay on a scene, drawn between the two (seconds), before the
    #: officers stop recording by hand; ``stop_after_s`` fixes it instead.
    on_scene_s: tuple[float, float] = (180.0, 600.0)
    stop_after_s: float | None = None
    #: After a scene, the chance a crew drives to the station to dock its cameras, and
    #: how long it stays there.
    dock_chance: float = 0.5
    dock_s: float = 120.0
    #: Coverage: GPS lost (fixes age: stale) and radio dead spots (connection lost:
    #: offline), each so many times an hour per patrolling crew, for so long.
    gps_losses_per_crew_hour: float = 1.5
    gps_loss_s: tuple[float, float] = (30.0, 120.0)
    dead_spots_per_crew_hour: float = 1.0
    dead_spot_s: tuple[float, float] = (60.0, 240.0)
    #: How many crews' first body camera films real H.264 of the test pattern instead of
    #: synthetic segments (``media.source = "h264"`` makes every camera do so).
    video_cameras: int = 0
    telemetry_interval_s: float = 1.0
    #: When devices send telemetry: every epoch (``"1hz"``, the default) or
    #: motion-scaled (:mod:`actimesh.devices.reporting`).
    reporting: ReportingSettings = field(default_factory=ReportingSettings)
    pre_roll_s: float = 30.0
    gps_accuracy_m: float = 3.0
    seed: int = DEFAULT_SEED
    #: The city the crews drive and walk in; None: a synthetic disc around ``center``.
    streets: StreetMap | None = field(default=None, compare=False, repr=False)
    #: ``media.source`` is the switch: synthetic segments (the default; thousands of
    #: cameras fit on one machine) or real H.264 of the test pattern, a thread a camera.
    media: MediaSettings = field(default_factory=MediaSettings)
    #: The MQTT version every simulated device speaks: ``"3.1.1"`` towards a broker
    #: that speaks nothing newer (the NATS cluster).
    mqtt_protocol: MqttProtocol = "5"

    def __post_init__(self) -> None:
        if not 1 <= self.units <= 2000:
            raise ValueError("the simulated fleet needs between 1 and 2000 units")
        if self.incidents_per_crew_hour < 0:
            raise ValueError("incidents_per_crew_hour cannot be negative")

    def busy(self) -> SimSettings:
        """A shift for a show: about 25 incidents an hour per crew (ten a minute for 24
        crews), short scenes and docks, so something happens all the time."""
        return replace(
            self,
            incidents_per_crew_hour=25.0,
            on_scene_s=(30.0, 60.0),
            dock_s=30.0,
            gps_losses_per_crew_hour=6.0,
            dead_spots_per_crew_hour=4.0,
            dead_spot_s=(30.0, 90.0),
        )


class FleetSimulator:
    """Builds the agents of a simulated fleet and drives them.

    ``verifier`` holds the engine's public key; the simulated cameras refuse every
    command without it, as real ones do. With ``spread_ports`` the devices are dealt in
    turn over ``broker_port`` and those (one MQTT listener per node of a cluster).
    ``evidence_url`` is where docked cameras
    offload (set it before the first dock; without it they keep their recordings).
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
        evidence_url: str | None = None,
    ) -> None:
        self.settings = settings or SimSettings()
        self.verifier = verifier
        self.topics = topics
        self.clock = clock
        self.rng = random.Random(self.settings.seed)
        self.on_trigger = on_trigger
        self.evidence_url = evidence_url
        self.store = RecordingStore(data_dir / "recordings")
        self.units: list[Unit] = []
        self.agents: list[DeviceAgent] = []
        self.triggers: dict[str, int] = {}
        #: Offloads: recordings stored, kept on the camera, docks dropped (queue full).
        self.offloaded = 0
        self.offload_kept = 0
        self.docks_dropped = 0
        self._passwords: dict[str, str] = {}
        self._docks: asyncio.Queue[Unit] = asyncio.Queue(_DOCK_QUEUE)
        self._host, self._started = broker_host, clock()
        # Devices are dealt over these in turn: a cluster's MQTT listeners, one per node.
        self._ports = (broker_port, *spread_ports)
        for n in range(self.settings.units):
            self.units.append(self._build_unit(n))
        self.world = World(
            self.units, self.settings, self.rng, self.settings.streets, self._started
        )
        for unit in self.units:
            unit.car.lat, unit.car.lon = self.world.random_point(drive=True)
            for officer in unit.officers:
                officer.lat, officer.lon = unit.car.lat, unit.car.lon

    # ------------------------------------------------------------------ building
    def _camera(
        self,
        device_id: str,
        kind: DeviceKind,
        *,
        source: MediaSource | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> Camera:
        media = self._media_of(device_id)
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

    def _media_of(self, device_id: str) -> MediaSettings:
        """What camera ``device_id`` films: the first officer's body camera of each of
        the first ``video_cameras`` crews films real H.264 (small, so a handful of
        encoder threads cost little), so offloaded recordings can be played."""
        media = self.settings.media
        unit = int(device_id[4:7]) if device_id.startswith("unit") else 0
        if (
            media.source is MediaKind.SYNTHETIC
            and device_id.endswith("-bwc1")
            and 1 <= unit <= self.settings.video_cameras
        ):
            return replace(media, source=MediaKind.H264, width=320, height=180, fps=10)
        return media

    def use_credentials(self, creds: Mapping[str, DeviceCredentials]) -> None:
        """Log every device in as itself and give every camera its Ed25519 key, so each
        manifest it writes is signed. Call before :meth:`run`, with what the registry
        issued (the registry needs the built fleet to know whom to register)."""
        for agent in self.agents:
            mine = creds[agent.device_id]
            agent.link.reconfigure(username=agent.device_id, password=mine.password)
            self._passwords[agent.device_id] = mine.password
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
        walker: Walker | None,
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
            reporting=self.settings.reporting,
            clock=self.clock,
            mqtt_protocol=self.settings.mqtt_protocol,
        )
        self.agents.append(agent)
        return agent

    def _build_unit(self, n: int) -> Unit:
        name = f"unit{n + 1:03d}"
        # A crew's make-up depends on the seed and its number alone: a larger fleet
        # keeps the devices of a smaller one, and the registry has nothing to remove.
        crew_rng = random.Random(f"{self.settings.seed}/{name}")
        acc = self.settings.gps_accuracy_m
        car = Walker(0.0, 0.0, crew_rng, acc)
        crew = 1 if crew_rng.random() < 0.5 else 2
        officers = [Walker(0.0, 0.0, crew_rng, acc) for _ in range(crew)]
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
        """Run every agent, the world and the docks until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                for agent in self.agents:
                    tg.create_task(agent.run(), name=f"sim-{agent.device_id}")
                tg.create_task(self._world(), name="sim-world")
                tg.create_task(self._docking(), name="sim-docks")
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
        last = self.clock()
        while True:
            now = self.clock()
            await self.step(now, now - last)
            last = now
            await asyncio.sleep(tick)

    async def step(self, now: float, dt: float) -> None:
        """Advance the shift by ``dt`` seconds to ``now`` (a test drives this directly,
        with a clock of its own)."""
        await self.world.step(now, dt, self)

    # ------------------------------------------------------------------ actions
    async def fire(self, agent: DeviceAgent, event_type: str) -> None:
        """A sensor raises a trigger."""
        self.triggers[event_type] = self.triggers.get(event_type, 0) + 1
        if self.on_trigger is not None:
            self.on_trigger(agent.device_id, event_type)
        await agent.raise_event(event_type)

    async def stop(self, agent: DeviceAgent) -> None:
        """The officer stops a recording by hand."""
        await agent.stop_recording()

    async def outage(self, agent: DeviceAgent, seconds: float) -> None:
        """A radio dead spot: the device drops off the broker for ``seconds`` and is
        offline meanwhile. In the field the broker notices the silence and publishes the
        device's last will; here the link closes cleanly, which discards the will, so the
        same presence (offline, ``connection_lost``) goes out first. On reconnecting the
        device announces itself online again, as always."""
        offline = Presence(
            online=False,
            ts=self.clock(),
            device_kind=agent.kind,
            unit=agent.unit,
            reason=OfflineReason.CONNECTION_LOST,
        )
        try:
            if agent.link.connected:  # (else it is offline already)
                await agent.link.publish(
                    self.topics.presence(agent.device_id), encode(offline), retain=True
                )
        except BrokerError as exc:
            log.debug("%s: offline presence not sent: %s", agent.device_id, exc)
        agent.disconnect_for(seconds)

    def dock(self, unit: Unit) -> None:
        """The crew's cameras are docked at the station: offload their recordings."""
        try:
            self._docks.put_nowait(unit)
        except asyncio.QueueFull:
            self.docks_dropped += 1

    async def _docking(self) -> None:
        while True:
            unit = await self._docks.get()
            if self.evidence_url is None:
                continue  # nowhere to offload: the recordings stay on the cameras
            for agent in unit.cameras:
                await self.offload(agent.device_id)

    async def offload(self, device_id: str) -> None:
        """Offload the stopped recordings of camera ``device_id`` to ``evidence_url``,
        logged in as the device."""
        assert self.evidence_url is not None
        auth = httpx.BasicAuth(device_id, self._passwords.get(device_id, ""))
        async with httpx.AsyncClient(base_url=self.evidence_url, auth=auth) as client:
            offloader = Offloader(client, root=self.store.root, device_id=device_id)
            try:
                report = await offloader.run()
            except EvidenceError as exc:
                self.offload_kept += 1
                log.warning("offload of %s did not run: %s", device_id, exc)
                return
        self.offloaded += len(report.stored)
        self.offload_kept += len(report.kept)
