"""A small mesh for integration tests: the real engine and real device agents on a real
Mosquitto, in one TaskGroup that the test leaves by cancelling.

Each mesh has its own engine signing key (in memory): its engines sign with it and its
cameras verify with its public half, as a deployment's do with ``keys/engine-signing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiomqtt

from actimesh.broker.codec import decode
from actimesh.broker.messages import Alert, DeviceKind
from actimesh.broker.topics import Topics
from actimesh.broker.transport import MqttTransport
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.devices.reporting import ReportingSettings
from actimesh.dispatch.settings import DispatchSettings
from actimesh.geofence import InclusionPolicy, destination
from actimesh.ledger import Ledger, open_ledger
from actimesh.security.signing import CommandSigner
from actimesh.triggers.engine import Engine
from actimesh.triggers.fleet import DeviceDirectory
from actimesh.triggers.rules import DEFAULT_RULES
from actimesh.triggers.settings import EngineSettings
from tests.waiting import eventually, quiet_for

HOST = "127.0.0.1"
CENTER = (51.0447, -114.0719)
#: The dispatch console's device id, the only sender of ``dispatch_zone`` events.
DISPATCH_SOURCE = DispatchSettings().source_device
#: Fast timings for tests. Incident merging is off: many tests raise one trigger again
#: and again at one spot to measure or count it, which is just what merging folds into
#: one activation; the storm-control tests turn it on.
#: Many engines share the test process: none freezes its heap (``freeze_heap``).
TEST_SETTINGS = EngineSettings(
    ack_timeout_s=0.5, warmup_s=0.3, merge_window_s=0.0, freeze_heap=False
)


def fixed(
    lat: float, lon: float, acc: float = 0.0, age: float = 0.0, speed: float | None = None
) -> Callable[[], Position]:
    return lambda: Position(lat, lon, acc, time.time() - age, speed)


def no_fix() -> Position | None:
    return None


@dataclass
class Mesh:
    topics: Topics
    port: int
    root: Path
    engine: Engine | None
    tg: asyncio.TaskGroup
    signer: CommandSigner
    settings: EngineSettings = TEST_SETTINGS
    directory: DeviceDirectory | None = None
    #: Where the engine's ledger is (a PostgreSQL URL, or None: ``root/ledger.sqlite3``).
    ledger_url: str | None = None
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
        reporting: ReportingSettings | None = None,
        speed: float | None = None,
    ) -> DeviceAgent:
        """Add a device ``at`` metres from the centre (None: no GPS fix) and start it;
        ``reporting`` says when it sends telemetry (default: every 0.2 s epoch)."""
        position: Callable[[], Position | None] = no_fix
        if at is not None:
            lat, lon = destination(*CENTER, bearing, at)
            position = fixed(lat, lon, acc, age, speed)
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
            verifier=self.signer.verifier(),
            local_peers=tuple(self.agents[d] for d in local),
            telemetry_interval_s=0.2,
            reporting=reporting,
            resend_initial_s=0.3,
        )
        self.agents[device_id] = agent
        self.start(device_id)
        return agent

    @contextlib.asynccontextmanager
    async def running_engine(
        self, ledger: Ledger, engine_id: str = "engine-1"
    ) -> AsyncIterator[Engine]:
        """(Another) engine on this mesh's broker, with the mesh's key, for the block.

        It is stopped when the block ends, however it ends: open its ledger outside the
        block, so that no engine ever writes to a ledger that has closed.
        """
        engine = build_engine(
            self.topics,
            self.port,
            ledger,
            signer=self.signer,
            settings=replace(self.settings, engine_id=engine_id),
            directory=self.directory,
        )
        self.tasks[engine_id] = self.tg.create_task(engine.run(), name=engine_id)
        try:
            yield engine
        finally:
            await self.stop(engine_id)

    async def stop(self, *names: str, timeout: float = 5.0) -> None:
        """Cancel these tasks (engines, agents) and wait until they have stopped."""
        tasks = [self.tasks[name] for name in names]
        for task in tasks:
            task.cancel()
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        assert not pending, f"still running {timeout:g} s after cancel: {pending}"

    def start(self, device_id: str) -> None:
        """(Re)start a device's agent, as when it is switched on."""
        agent = self.agents[device_id]
        self.tasks[device_id] = self.tg.create_task(agent.run(), name=device_id)

    async def ready(self, timeout: float = 10.0) -> None:
        """Every agent connected and, when an engine runs, known to it with its fix."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with asyncio.timeout(timeout):
            for agent in self.agents.values():
                await agent.link.wait_connected(timeout=timeout)
        engine = self.engine
        if engine is None:
            return

        def engine_knows_every_agent() -> bool:
            return all(
                (info := engine.fleet.get(d)) is not None
                and info.kind is not None
                and (a.position() is None or d in engine.index)
                for d, a in self.agents.items()
            )

        await eventually(engine_knows_every_agent, timeout=max(deadline - loop.time(), 0.0))

    async def commanded(self, aid: str, expected: set[str], quiet_s: float = 0.3) -> set[str]:
        """Cameras that received a command for ``aid``: wait for ``expected``, then a
        little longer so that unexpected ones would show up too."""

        def got() -> set[str]:
            return {
                d for d, a in self.agents.items() if any(r.command.aid == aid for r in a.received)
            }

        with contextlib.suppress(TimeoutError):
            await eventually(lambda: expected <= got(), timeout=5.0, every=0.01)
        await quiet_for(quiet_s)
        return got()

    def client(self) -> aiomqtt.Client:
        """A plain outside MQTT client (integrator or attacker)."""
        return aiomqtt.Client(HOST, self.port, protocol=aiomqtt.ProtocolVersion.V5)


def build_engine(
    topics: Topics,
    port: int,
    ledger: Ledger,
    *,
    signer: CommandSigner,
    settings: EngineSettings = TEST_SETTINGS,
    policy: InclusionPolicy | None = None,
    directory: DeviceDirectory | None = None,
    owntracks: bool = False,
) -> Engine:
    """An engine as the mesh builds it (not started); ``owntracks``: it reads the
    OwnTracks app's locations too."""
    return Engine(
        topics=topics,
        transport=MqttTransport(HOST, port),
        ledger=ledger,
        rules=DEFAULT_RULES,
        policy=policy or InclusionPolicy(),
        signer=signer,
        settings=settings,
        directory=directory,
        dispatch_source=DISPATCH_SOURCE,
        owntracks=owntracks,
    )


@contextlib.asynccontextmanager
async def mesh(
    agency: str,
    port: int,
    root: Path,
    *,
    engine: bool = True,
    policy: InclusionPolicy | None = None,
    settings: EngineSettings = TEST_SETTINGS,
    directory: DeviceDirectory | None = None,
    ledger_url: str | None = None,
    owntracks: bool = False,
) -> AsyncIterator[Mesh]:
    """A mesh on the broker at ``port``; its engine (unless ``engine=False``) runs with
    ``settings`` and, if given, the device ``directory``, and writes ``agency``'s ledger
    at ``ledger_url`` (PostgreSQL), or else in ``root/ledger.sqlite3``."""
    topics = Topics(agency)
    signer = CommandSigner.generate()
    location = root / "ledger.sqlite3" if ledger_url is None else ledger_url
    async with open_ledger(location, agency=agency) as ledger:
        eng = None
        if engine:
            eng = build_engine(
                topics,
                port,
                ledger,
                signer=signer,
                settings=settings,
                policy=policy,
                directory=directory,
                owntracks=owntracks,
            )
        try:
            async with asyncio.TaskGroup() as tg:
                m = Mesh(topics, port, root, eng, tg, signer, settings, directory, ledger_url)
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


async def collect_alerts(client: aiomqtt.Client, alerts: list[Alert]) -> None:
    """Each alert ``client`` receives (on what it subscribed to), decoded into
    ``alerts``, until cancelled."""
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        alerts.append(decode(Alert, message.payload))
