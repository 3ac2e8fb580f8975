"""A small mesh for integration tests: the real engine and real device agents on a real
Mosquitto, in one TaskGroup that the test leaves by cancelling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from actimesh.broker.messages import DeviceKind
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.geofence import InclusionPolicy, destination
from actimesh.triggers.engine import Engine
from actimesh.triggers.ledger import Ledger
from actimesh.triggers.rules import DEFAULT_RULES
from actimesh.triggers.settings import EngineSettings

HOST = "127.0.0.1"
CENTER = (51.0447, -114.0719)


def fixed(lat: float, lon: float, acc: float = 0.0, age: float = 0.0) -> Callable[[], Position]:
    return lambda: Position(lat, lon, acc, time.time() - age)


def no_fix() -> Position | None:
    return None


@dataclass
class Mesh:
    topics: Topics
    port: int
    root: Path
    engine: Engine | None
    tg: asyncio.TaskGroup
    agents: dict[str, DeviceAgent] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    @property
    def store(self) -> RecordingStore:
        return RecordingStore(self.root / "recordings")

    def add(
        self,
        device_id: str,
        kind: DeviceKind,
        *,
        at: float | None = None,
        bearing: float = 0.0,
        acc: float = 0.0,
        age: float = 0.0,
        paired: tuple[str, ...] = (),
        local: tuple[str, ...] = (),
        warm_s: float = 60.0,
        recall_s: float = 10.0,
    ) -> DeviceAgent:
        """Add a device ``at`` metres from the centre (None: no GPS fix) and start it."""
        position: Callable[[], Position | None] = no_fix
        if at is not None:
            lat, lon = destination(*CENTER, bearing, at)
            position = fixed(lat, lon, acc, age)
        camera = None
        if kind in (DeviceKind.BODY_CAM, DeviceKind.DASH_CAM, DeviceKind.REAR_CAM):
            camera = Camera(
                device_id=device_id,
                kind=kind,
                source=SyntheticSource(device_id),
                store=self.store,
                started_at=time.time() - warm_s,
                late_allowance_s=recall_s,
            )
        agent = DeviceAgent(
            topics=self.topics,
            device_id=device_id,
            kind=kind,
            broker_host=HOST,
            broker_port=self.port,
            position=position,
            paired=paired,
            camera=camera,
            local_peers=tuple(self.agents[d] for d in local),
            telemetry_interval_s=0.2,
            resend_initial_s=0.3,
        )
        self.agents[device_id] = agent
        self.start(device_id)
        return agent

    def start_engine(self, ledger: Ledger, engine_id: str = "engine-1") -> Engine:
        """Start (another) engine on this mesh's broker."""
        engine = Engine(
            topics=self.topics,
            broker_host=HOST,
            broker_port=self.port,
            ledger=ledger,
            rules=DEFAULT_RULES,
            policy=InclusionPolicy(),
            settings=EngineSettings(engine_id=engine_id, ack_timeout_s=0.5, warmup_s=0.3),
        )
        self.tasks[engine_id] = self.tg.create_task(engine.run(), name=engine_id)
        return engine

    def start(self, device_id: str) -> None:
        """(Re)start a device's agent, as when it is switched on."""
        agent = self.agents[device_id]
        self.tasks[device_id] = self.tg.create_task(agent.run(), name=device_id)

    async def ready(self, timeout: float = 10.0) -> None:
        """Every agent connected and, when an engine runs, known to it with its fix."""
        async with asyncio.timeout(timeout):
            for agent in self.agents.values():
                await agent.link.wait_connected(timeout=timeout)
            engine = self.engine
            if engine is None:
                return
            while not all(
                (info := engine.fleet.get(d)) is not None
                and info.kind is not None
                and (a.position() is None or d in engine.index)
                for d, a in self.agents.items()
            ):
                await asyncio.sleep(0.02)

    async def commanded(self, aid: str, expected: set[str], quiet_s: float = 0.3) -> set[str]:
        """Cameras that received a command for ``aid``: wait for ``expected``, then a
        little longer so that unexpected ones would show up too."""

        def got() -> set[str]:
            return {
                d for d, a in self.agents.items() if any(r.command.aid == aid for r in a.received)
            }

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while not expected <= got():
                    await asyncio.sleep(0.01)
        await asyncio.sleep(quiet_s)
        return got()

    def client(self) -> aiomqtt.Client:
        """A plain outside MQTT client (integrator or attacker)."""
        return aiomqtt.Client(HOST, self.port, protocol=aiomqtt.ProtocolVersion.V5)


@contextlib.asynccontextmanager
async def mesh(
    agency: str,
    port: int,
    root: Path,
    *,
    engine: bool = True,
    policy: InclusionPolicy | None = None,
) -> AsyncIterator[Mesh]:
    topics = Topics(agency)
    async with Ledger(root / "ledger.sqlite3") as ledger:
        eng = None
        if engine:
            eng = Engine(
                topics=topics,
                broker_host=HOST,
                broker_port=port,
                ledger=ledger,
                rules=DEFAULT_RULES,
                policy=policy or InclusionPolicy(),
                settings=EngineSettings(ack_timeout_s=0.5, warmup_s=0.3),
            )
        try:
            async with asyncio.TaskGroup() as tg:
                m = Mesh(topics, port, root, eng, tg)
                if eng is not None:
                    m.tasks["engine"] = tg.create_task(eng.run(), name="engine")
                    async with asyncio.timeout(10):
                        await eng.ready.wait()
                yield m
                for task in m.tasks.values():
                    task.cancel()
        except BaseExceptionGroup as group:
            # Surface the first real failure rather than a group of one.
            raise group.exceptions[0] from group
