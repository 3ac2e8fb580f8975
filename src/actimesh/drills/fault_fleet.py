"""What every fault drill runs, whatever the shape of the mesh under it: the simulated
scenes (a CEW, its officer's body camera and three other cameras within 30 ft, with
pre-event buffers), a burst of triggers with one fault in the middle, and the engine
processes that the faults kill.

:mod:`.faults` runs them against Mosquitto and SQLite, :mod:`.cluster_faults` against a
NATS cluster and PostgreSQL; :mod:`.fault_report` counts the outcome the same way for both.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from actimesh.broker.client import MqttProtocol
from actimesh.broker.messages import DeviceKind, activation_id
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.errors import BrokerError
from actimesh.geofence import destination
from actimesh.lifeline import die_with_parent
from actimesh.security.signing import CommandVerifier

__all__ = ["PRE_ROLL_S", "Burst", "EngineProc", "Fleet", "fire_burst", "scene_devices"]

PRE_ROLL_S = 30.0
_HOST = "127.0.0.1"


class EngineProc:
    """One ``actimesh engine`` child process (``args``: what follows ``actimesh engine``)."""

    def __init__(self, args: Sequence[str], *, log: Path) -> None:
        self.argv = [sys.executable, "-m", "actimesh", "engine", *args]
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent(),
            )
        # Ready when it says so on its log (it prints once connected and subscribed).
        async with asyncio.timeout(30):
            while b"engine " not in self.log.read_bytes():
                if self.proc.returncode is not None:
                    raise BrokerError(f"engine exited: {self.log.read_text()[-300:]}")
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                await self.kill()


@dataclass(slots=True)
class Fleet:
    """The scenes' devices, and which cameras each CEW's triggers must start."""

    cews: list[DeviceAgent] = field(default_factory=list)
    cameras: dict[str, DeviceAgent] = field(default_factory=dict)
    expected: dict[str, set[str]] = field(default_factory=dict)

    @property
    def agents(self) -> list[DeviceAgent]:
        return [*self.cews, *self.cameras.values()]

    def add_scene(self, cew: DeviceAgent, cameras: Sequence[DeviceAgent]) -> None:
        self.cews.append(cew)
        self.cameras.update({c.device_id: c for c in cameras})
        self.expected[cew.device_id] = {c.device_id for c in cameras}


@dataclass(slots=True)
class Burst:
    """The triggers of one scenario: activation id -> CEW, when each was raised, and
    when the fault struck (wall clock, as the cameras stamp what they receive)."""

    aids: dict[str, str] = field(default_factory=dict)
    raised_at: dict[str, float] = field(default_factory=dict)
    fault_at: float | None = None


def scene_devices(
    n: int,
    topics: Topics,
    store: RecordingStore,
    verifier: CommandVerifier,
    port_of: Callable[[int], int],
    *,
    protocol: MqttProtocol = "5",
) -> tuple[DeviceAgent, list[DeviceAgent]]:
    """Scene ``n``: a CEW with its officer's body camera and three other cameras within
    30 ft. ``port_of(k)`` is the broker port of the scene's ``k``-th device (the CEW is 0)."""
    lat0, lon0 = 51.04 + 0.01 * n, -114.07  # ~1 km apart: scenes never overlap
    now = time.time()
    cameras = []
    for k, (name, kind, dist, bearing) in enumerate(
        (
            ("bwc", DeviceKind.BODY_CAM, 0.0, 0.0),  # the officer: the event is here
            ("bwc-near", DeviceKind.BODY_CAM, 6.0, 90.0),
            ("bwc-edge", DeviceKind.BODY_CAM, 8.8, 200.0),
            ("dash", DeviceKind.DASH_CAM, 4.0, 300.0),
        ),
        start=1,
    ):
        device_id = f"f{n}-{name}"
        lat, lon = destination(lat0, lon0, bearing, dist)

        def where(lat: float = lat, lon: float = lon) -> Position:
            return Position(lat, lon, 0.0, time.time())

        camera = Camera(
            device_id=device_id,
            kind=kind,
            source=SyntheticSource(device_id, segment_bytes=128),
            store=store,
            started_at=now - 200.0,
            # Recall: a camera out of coverage for a while still gets its full pre-roll.
            late_allowance_s=120.0,
        )
        cameras.append(
            DeviceAgent(
                topics=topics,
                device_id=device_id,
                kind=kind,
                camera=camera,
                verifier=verifier,
                broker_host=_HOST,
                broker_port=port_of(k),
                position=where,
                telemetry_interval_s=0.5,
                resend_initial_s=0.5,
                mqtt_protocol=protocol,
            )
        )
    cew = DeviceAgent(
        topics=topics,
        device_id=f"f{n}-cew",
        kind=DeviceKind.CEW,
        paired=(f"f{n}-bwc",),
        local_peers=(cameras[0],),
        broker_host=_HOST,
        broker_port=port_of(0),
        position=lambda: None,
        telemetry_interval_s=0.5,
        resend_initial_s=0.5,
        mqtt_protocol=protocol,
    )
    return cew, cameras


async def fire_burst(
    fleet: Fleet, triggers: int, strike: Callable[[], Awaitable[None]], *, gap_s: float = 0.1
) -> Burst:
    """``triggers`` draws dealt over the CEWs, ``gap_s`` apart; ``strike`` (the fault)
    midway. While a broker is down a device keeps the event and sends it again."""
    burst = Burst()
    for i in range(triggers):
        if i == triggers // 2:
            burst.fault_at = time.time()
            await strike()
        cew = fleet.cews[i % len(fleet.cews)]
        raised = time.time()
        event = await cew.raise_event("taser_draw")
        aid = activation_id(cew.device_id, event.eid)
        burst.aids[aid] = cew.device_id
        burst.raised_at[aid] = raised
        await asyncio.sleep(gap_s)
    return burst
