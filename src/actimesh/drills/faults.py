"""``actimesh drill --faults``: no activation lost or duplicated under real faults.

Each scenario runs the same work on a fresh agency: a background load of telemetry, and
a burst of trigger events from CEWs, each of which must start its officer's body camera
and the cameras standing within 30 ft. Midway through the burst one fault strikes:

* ``broker restart``: Mosquitto stopped gracefully and started again;
* ``broker kill -9``: Mosquitto killed without warning (it loses what it had
  acknowledged but not yet saved), then started again;
* ``engine kill -9``: the engine process killed mid-burst, then started again;
* ``replica killed``: two engine replicas share the events; one is killed for good;
* ``cameras drop out``: half the cameras lose the network for 3 s;
* ``slow camera``: one camera takes 2 s to commit each activation.

The engines run as separate processes (``actimesh engine``) so they can be killed for
real; the broker is the managed Mosquitto; devices run here. Afterwards the drill
counts, from the cameras and the ledger: triggers sent, activations in the ledger,
camera activations expected, camera activations recorded, the shortest pre-roll, and
any duplicate (a second activation for one trigger, or a camera attaching one
activation twice). The ledger must verify after every scenario. Any loss or duplicate
makes the drill fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from actimesh.audit import verify_ledger
from actimesh.broker.client import LinkSettings, MqttLink
from actimesh.broker.codec import encode
from actimesh.broker.messages import AckStatus, DeviceKind, DeviceState, Telemetry, activation_id
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import BrokerError
from actimesh.geofence import destination
from actimesh.ledger import open_ledger
from actimesh.lifeline import die_with_parent
from actimesh.security.acl import SERVICE_ENGINE, AclPolicy
from actimesh.security.provision import prepare_broker, provision_agents
from actimesh.security.registry import SECRETS_DIR, Credentials
from actimesh.security.signing import CommandSigner, CommandVerifier

__all__ = ["SCENARIOS", "FaultReport", "FaultResult", "run_fault_drill"]

_HOST = "127.0.0.1"
_PRE_ROLL_S = 30.0
_SETTLE_TIMEOUT_S = 45.0
#: The engines' settings. Every trigger must be its own activation, so incident merging
#: (which folds a CEW's repeated draws at one spot into one) is off.
_ENGINE_TOML = "[engine]\nmerge_window_s = 0\n"


@dataclass(slots=True)
class FaultResult:
    name: str
    triggers: int = 0
    activations: int = 0
    expected: int = 0
    recorded: int = 0
    pre_roll_min: float = _PRE_ROLL_S
    duplicates: int = 0
    ledger_ok: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return (self.triggers - self.activations) + (self.expected - self.recorded)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicates == 0
            and self.ledger_ok
            and self.pre_roll_min >= _PRE_ROLL_S - 1e-6
            and not self.problems
        )


@dataclass(slots=True)
class FaultReport:
    results: list[FaultResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


class _EngineProc:
    """One ``actimesh engine`` child process."""

    def __init__(self, *, port: int, agency: str, data_dir: Path, engine_id: str) -> None:
        config = data_dir / "engine.toml"
        # Each engine logs in as svc-engine, as an operator's config would have it.
        password_file = json.dumps(str(data_dir / SECRETS_DIR / f"{SERVICE_ENGINE}.password"))
        login = f'[broker]\nusername = "{SERVICE_ENGINE}"\npassword_file = {password_file}\n'
        config.write_text(_ENGINE_TOML + login)
        self.argv = [
            sys.executable,
            "-m",
            "actimesh",
            "engine",
            "--broker",
            f"mqtt://{_HOST}:{port}",
            "--agency",
            agency,
            "--data-dir",
            str(data_dir),
            "--engine-id",
            engine_id,
            "--config",
            str(config),
        ]
        self.log = data_dir / f"{engine_id}.log"
        self.proc: asyncio.subprocess.Process | None = None

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
class _World:
    topics: Topics
    broker: ManagedMosquitto
    engines: list[_EngineProc]
    cews: list[DeviceAgent]
    cameras: dict[str, DeviceAgent]
    expected: dict[str, set[str]]  # CEW id -> cameras each of its triggers must start
    root: Path
    loadgen: Credentials


def _scene_devices(
    n: int, topics: Topics, port: int, store: RecordingStore, verifier: CommandVerifier
) -> tuple[DeviceAgent, list[DeviceAgent]]:
    """A CEW with its officer's body camera and three other cameras within 30 ft."""
    lat0, lon0 = 51.04 + 0.01 * n, -114.07  # ~1 km apart: scenes never overlap
    now = time.time()
    cameras = []
    for name, kind, dist, bearing in (
        ("bwc", DeviceKind.BODY_CAM, 0.0, 0.0),  # the officer: the event is here
        ("bwc-near", DeviceKind.BODY_CAM, 6.0, 90.0),
        ("bwc-edge", DeviceKind.BODY_CAM, 8.8, 200.0),
        ("dash", DeviceKind.DASH_CAM, 4.0, 300.0),
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
                broker_port=port,
                position=where,
                telemetry_interval_s=0.5,
                resend_initial_s=0.5,
            )
        )
    cew = DeviceAgent(
        topics=topics,
        device_id=f"f{n}-cew",
        kind=DeviceKind.CEW,
        paired=(f"f{n}-bwc",),
        local_peers=(cameras[0],),
        broker_host=_HOST,
        broker_port=port,
        position=lambda: None,
        telemetry_interval_s=0.5,
        resend_initial_s=0.5,
    )
    return cew, cameras


async def _background_load(
    topics: Topics, port: int, devices: int, hz: float, login: Credentials
) -> None:
    """Telemetry from ``devices`` far-away virtual devices at ``hz`` each (one connection,
    the load generator's account)."""
    link = MqttLink(
        LinkSettings(
            host=_HOST,
            port=port,
            client_id=f"{topics.agency}-load",
            username=login.username,
            password=login.password,
        )
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(link.run(), name="load-link")
        while True:
            started = time.monotonic()
            now = time.time()
            for i in range(devices):
                fix = Telemetry(
                    ts=now, lat=40.0 + i * 1e-4, lon=-100.0, acc=5.0, state=DeviceState.BUFFERING
                )
                with contextlib.suppress(BrokerError):
                    await link.publish(
                        topics.telemetry(f"load{i}"), encode(fix), qos=0, timeout=1.0
                    )
            await asyncio.sleep(max(0.0, 1.0 / hz - (time.monotonic() - started)))


@contextlib.asynccontextmanager
async def _world(root: Path, agency: str, scenes: int, replicas: int) -> AsyncIterator[_World]:
    port = free_port()
    topics = Topics(agency)
    store = RecordingStore(root / "recordings", durable=False)
    # The secured broker, as `actimesh up` runs it; the background load has an account.
    access = AclPolicy(agency, DispatchSettings().source_device)
    provisioned = await asyncio.to_thread(prepare_broker, root, access, loadgen=True)
    broker = ManagedMosquitto(MosquittoConfig(port=port, data_dir=provisioned.broker_dir))
    # The engines load this key from the data directory they share; cameras get its
    # public half, as devices are provisioned with keys/engine-signing.pub.
    verifier = CommandSigner.from_data_dir(root).verifier()
    await broker.astart()
    engines = [
        _EngineProc(port=port, agency=agency, data_dir=root, engine_id=f"engine-{i + 1}")
        for i in range(replicas)
    ]
    try:
        for engine in engines:
            await engine.start()
        cews, cameras, expected = [], {}, {}
        for n in range(scenes):
            cew, cams = _scene_devices(n, topics, port, store, verifier)
            cews.append(cew)
            cameras.update({c.device_id: c for c in cams})
            expected[cew.device_id] = {c.device_id for c in cams}
        await provision_agents(root, [*cews, *cameras.values()])
        await broker.areload()
        loadgen = provisioned.loadgen_login()
        yield _World(topics, broker, engines, cews, cameras, expected, root, loadgen)
    finally:
        for engine in engines:
            await engine.stop()
        await broker.astop()


async def _settle(world: _World, aids: dict[str, str]) -> None:
    """Until every trigger is confirmed and every expected camera is recording it."""

    def done() -> bool:
        if any(cew.unconfirmed for cew in world.cews):
            return False
        for aid, cew_id in aids.items():
            for cam in world.expected[cew_id]:
                agent = world.cameras[cam]
                if not any(
                    r.command.aid == aid and r.result.status is AckStatus.RECORDING
                    for r in agent.received
                ):
                    return False
        return True

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_SETTLE_TIMEOUT_S):
            while not done():
                await asyncio.sleep(0.1)


async def _measure(world: _World, name: str, aids: dict[str, str]) -> FaultResult:
    result = FaultResult(name, triggers=len(aids))
    async with open_ledger(world.root / "ledger.sqlite3") as ledger:
        in_ledger = set(await ledger.activation_ids(limit=1_000_000))
        result.activations = len(in_ledger & set(aids))
        # Every row must be one of our triggers: anything else is a duplicate activation.
        result.duplicates += len(in_ledger - set(aids))
    report = await asyncio.to_thread(verify_ledger, world.root / "ledger.sqlite3")
    result.ledger_ok = report.ok
    if not report.ok:
        result.problems.append(report.summary())
    for aid, cew_id in aids.items():
        for cam in world.expected[cew_id]:
            result.expected += 1
            got = [
                r
                for r in world.cameras[cam].received
                if r.command.aid == aid and r.result.status is AckStatus.RECORDING
            ]
            if got:
                result.recorded += 1
                result.pre_roll_min = min(result.pre_roll_min, got[0].result.pre_roll_covered_s)
            elif len(result.problems) < 10:
                seen = [
                    r.result.status.value
                    for r in world.cameras[cam].received
                    if r.command.aid == aid
                ]
                result.problems.append(f"{cam} did not record {aid} (answers: {seen or 'none'})")
    for agent in world.cameras.values():
        assert agent.camera is not None
        recording = agent.camera.recording
        if recording is not None:
            attached = [a.aid for a in recording.activations]
            result.duplicates += len(attached) - len(set(attached))
    return result


Fault = Callable[[_World], Awaitable[None]]


async def _restart_broker(world: _World) -> None:
    await world.broker.arestart()


async def _kill_broker(world: _World) -> None:
    world.broker.kill()
    await asyncio.sleep(0.5)
    await world.broker.astart()


async def _kill_engine(world: _World) -> None:
    await world.engines[0].kill()
    await asyncio.sleep(0.5)
    await world.engines[0].start()


async def _kill_replica(world: _World) -> None:
    await world.engines[0].kill()


async def _drop_cameras(world: _World) -> None:
    for i, agent in enumerate(world.cameras.values()):
        if i % 2 == 0:
            agent.disconnect_for(3.0)


async def _nothing(_world: _World) -> None:
    return None


def _slow_camera(world: _World) -> None:
    next(iter(world.cameras.values())).commit_delay_s = 2.0


SCENARIOS: tuple[tuple[str, Fault, int], ...] = (
    ("no fault", _nothing, 1),
    ("broker restart", _restart_broker, 1),
    ("broker kill -9", _kill_broker, 1),
    ("engine kill -9", _kill_engine, 1),
    ("replica killed", _kill_replica, 2),
    ("cameras drop out", _drop_cameras, 1),
    ("slow camera", _nothing, 1),
)


async def _scenario(
    index: int, name: str, fault: Fault, replicas: int, root: Path, *, triggers: int, scenes: int
) -> FaultResult:
    scenario_root = root / f"scenario-{index}"
    scenario_root.mkdir(parents=True, exist_ok=True)
    agency = f"fault{index}"
    async with _world(scenario_root, agency, scenes, replicas) as world:
        if name == "slow camera":
            _slow_camera(world)
        agents = [*world.cews, *world.cameras.values()]
        aids: dict[str, str] = {}
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(a.run(), name=a.device_id) for a in agents]
            load = _background_load(world.topics, world.broker.port, 300, 2.0, world.loadgen)
            tasks.append(tg.create_task(load, name="load"))
            for agent in agents:
                await agent.link.wait_connected(timeout=30)
            await asyncio.sleep(1.5)  # the engine learns every device and position
            for i in range(triggers):
                if i == triggers // 2:
                    await fault(world)
                cew = world.cews[i % len(world.cews)]
                # While the broker is down the device keeps the event and re-sends it.
                event = await cew.raise_event("taser_draw")
                aids[activation_id(cew.device_id, event.eid)] = cew.device_id
                await asyncio.sleep(0.1)
            await _settle(world, aids)
            for task in tasks:
                task.cancel()
        return await _measure(world, name, aids)


def _table(report: FaultReport) -> Table:
    table = Table(title="actimesh drill --faults")
    for col in (
        "scenario",
        "triggers",
        "activations",
        "cameras expected",
        "cameras recorded",
        "pre-roll min",
        "lost",
        "duplicated",
        "ledger",
        "result",
    ):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in report.results:
        table.add_row(
            r.name,
            str(r.triggers),
            str(r.activations),
            str(r.expected),
            str(r.recorded),
            f"{r.pre_roll_min:.1f} s",
            str(r.lost),
            str(r.duplicates),
            "verified" if r.ledger_ok else "[red]FAILED[/red]",
            "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]",
        )
    return table


async def run_fault_drill(
    console: Console, *, root: Path, short: bool = False, only: str | None = None
) -> FaultReport:
    """Run every fault scenario (``short``: fewer triggers, for CI) and print the table."""
    triggers, scenes = (12, 3) if short else (40, 6)
    results = []
    for index, (name, fault, replicas) in enumerate(SCENARIOS, start=1):
        if only is not None and only != name:
            continue
        console.print(f"[dim]fault drill: {name} ({triggers} triggers, {scenes} scenes)…[/dim]")
        result = await _scenario(
            index, name, fault, replicas, root, triggers=triggers, scenes=scenes
        )
        results.append(result)
    report = FaultReport(results)
    console.print(_table(report))
    for r in report.results:
        for problem in r.problems:
            console.print(f"[red]{r.name}: {problem}[/red]")
    (root / "fault-drill.json").write_text(
        json.dumps([{**asdict(r), "lost": r.lost, "ok": r.ok} for r in results], indent=2)
    )
    console.print("[bold green]fault drill passed" if report.ok else "[bold red]fault drill FAILED")
    return report
