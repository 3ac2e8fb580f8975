"""``actimesh drill``: a self-check of the whole activation path on a real broker.

The drill starts its own mesh and engine, places cameras at known distances around
each trigger type — inside and just outside 30 ft, paired and unpaired, with stale and
fresh fixes, offline, and without any GPS fix — fires the triggers over MQTT, and checks
that exactly the right cameras committed recordings whose pre-roll reaches back 30 s from
the event's time. The scenes are where geometry breaks naive code: Calgary, Alert at
82.5° N, and Taveuni (Fiji) astride the 180th meridian.

Drill fixes report 0 m accuracy so that the 30 ft boundary is exact; one camera sits
just outside 30 ft with a 1.5 m accuracy to show the inclusion policy's margin (commanded
under the default ``inclusive`` policy, not under ``centre``).

The mesh is a parameter (:data:`MeshFactory`): a managed Mosquitto and a SQLite ledger
(:func:`mosquitto_mesh`, ``actimesh drill``) or the cluster shape
(:func:`~actimesh.drills.cluster_faults.cluster_mesh`, ``actimesh drill --cluster``).
Only where the devices connect and how they log in differ; the scenes, rounds and
checks below are the one definition both run, so the cluster cannot pass an easier
drill.

Expected outcomes are written down here as geometry, not computed by the engine's code,
so the drill can disagree with the engine. Any miss, false activation or short pre-roll
makes it exit non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from actimesh.broker.client import MqttProtocol
from actimesh.broker.messages import AckStatus, DeviceKind, activation_id
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.broker.topics import Topics
from actimesh.broker.transport import MqttTransport, Transport
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.dispatch.settings import DispatchSettings
from actimesh.drills._scratch import scratch_dir
from actimesh.geofence import InclusionMode, InclusionPolicy, destination
from actimesh.ledger import Ledger, open_ledger
from actimesh.security.acl import SERVICE_ENGINE, AclPolicy
from actimesh.security.provision import prepare_broker, provision_fleet, specs_of
from actimesh.security.registry import Credentials, DeviceCredentials
from actimesh.security.signing import CommandSigner, CommandVerifier
from actimesh.stats import percentile
from actimesh.triggers.engine import Engine
from actimesh.triggers.rules import DEFAULT_RULES, THIRTY_FEET_M
from actimesh.triggers.settings import EngineSettings

__all__ = [
    "DrillMesh",
    "DrillReport",
    "MeshFactory",
    "Placement",
    "Scenario",
    "default_scenarios",
    "mosquitto_mesh",
    "run_drill",
    "sign_in",
]

PRE_ROLL_S = 30.0
_ACK_TIMEOUT_S = 5.0
_QUIET_S = 0.4  # how long to watch for commands nobody should get


@dataclass(frozen=True, slots=True)
class Placement:
    """A camera placed around a scene, and whether it must be commanded."""

    name: str
    kind: DeviceKind
    distance_m: float | None  # None: the device has no GPS fix
    bearing_deg: float = 0.0
    acc_m: float = 0.0
    fix_age_s: float = 0.0
    paired: bool = False
    online: bool = True
    expect: bool = False
    #: The reason the ledger must give for leaving it out (when not expected).
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """One trigger at one place with cameras around it."""

    name: str
    event_type: str
    trigger_kind: DeviceKind
    center: tuple[float, float]
    trigger_has_fix: bool
    placements: tuple[Placement, ...]
    #: The event happened this long before it is sent (a late command).
    late_by_s: float = 0.0


def default_scenarios(policy: InclusionPolicy) -> tuple[Scenario, ...]:
    """The standard drill. ``policy`` decides the one accuracy-margin placement."""
    inside, outside = 9.0, 9.3
    assert inside < THIRTY_FEET_M < outside
    margin_expected = policy.mode is InclusionMode.INCLUSIVE
    b, d, r = DeviceKind.BODY_CAM, DeviceKind.DASH_CAM, DeviceKind.REAR_CAM
    return (
        Scenario(
            "taser draw, Calgary",
            "taser_draw",
            DeviceKind.CEW,
            (51.0447, -114.0719),
            trigger_has_fix=False,  # a CEW has no GPS: it borrows its body camera's fix
            placements=(
                Placement("own-bwc", b, 0.5, 0, paired=True, expect=True),
                Placement("bwc-9.0m", b, inside, 40, expect=True),
                Placement("bwc-9.3m", b, outside, 130, reason="too_far"),
                Placement("dash-6m", d, 6.0, 200, expect=True),
                Placement("rear-stale", r, 5.0, 250, fix_age_s=20.0, reason="stale"),
                Placement("bwc-offline", b, 4.0, 300, online=False, reason="offline"),
                Placement(
                    "bwc-10m-acc1.5",
                    b,
                    10.0,
                    330,
                    acc_m=1.5,
                    expect=margin_expected,
                    reason=None if margin_expected else "too_far",
                ),
                Placement("bwc-25m", b, 25.0, 90),
            ),
        ),
        Scenario(
            "emergency lights, Alert 82.5°N",
            "emergency_lights",
            DeviceKind.GATEWAY,
            (82.5018, -62.3481),
            trigger_has_fix=True,
            placements=(
                Placement("own-dash-nofix", d, None, paired=True, expect=True),
                Placement("own-rear-nofix", r, None, paired=True, expect=True),
                Placement("bwc-9.0m", b, inside, 10, expect=True),
                Placement("bwc-9.3m", b, outside, 190, reason="too_far"),
            ),
        ),
        Scenario(
            "collision, Taveuni across 180°",
            "collision",
            DeviceKind.GATEWAY,
            (-16.8, 179.99995),
            trigger_has_fix=False,  # no fix: the engine uses its paired dash camera's
            placements=(
                Placement("own-dash", d, 0.5, 0, paired=True, expect=True),
                Placement("own-rear", r, None, paired=True, expect=True),
                Placement("bwc-east-9.0m", b, inside, 90, expect=True),  # lon wraps to -180
                Placement("bwc-west-9.3m", b, outside, 270, reason="too_far"),
            ),
        ),
        Scenario(
            "taser draw sent 5 s late",
            "taser_draw",
            DeviceKind.CEW,
            (40.7128, -74.0060),
            trigger_has_fix=False,
            late_by_s=5.0,
            placements=(
                Placement("own-bwc", b, 0.0, 0, paired=True, expect=True),
                Placement("bwc-5m", b, 5.0, 45, expect=True),
            ),
        ),
    )


@dataclass(slots=True)
class ScenarioResult:
    name: str
    event_type: str
    expected: set[str] = field(default_factory=set)
    commanded: set[str] = field(default_factory=set)
    missed: set[str] = field(default_factory=set)
    false: set[str] = field(default_factory=set)
    pre_roll_min: float = PRE_ROLL_S
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missed or self.false or self.problems)


@dataclass(slots=True)
class DrillReport:
    results: list[ScenarioResult]
    duplicate_ignored: bool

    @property
    def latencies_ms(self) -> list[float]:
        return [x for r in self.results for x in r.latencies_ms]

    @property
    def ok(self) -> bool:
        return self.duplicate_ignored and all(r.ok for r in self.results)


@dataclass(slots=True)
class _Scene:
    scenario: Scenario
    trigger: DeviceAgent
    cameras: dict[str, DeviceAgent]  # device id -> agent
    placement_of: dict[str, Placement]


def _fixed(lat: float, lon: float, acc: float, age: float) -> Position:
    return Position(lat, lon, acc, time.time() - age)


def _camera(
    device_id: str,
    kind: DeviceKind,
    store: RecordingStore,
    started_at: float,
    key: Ed25519PrivateKey | None = None,
) -> Camera:
    return Camera(
        device_id=device_id,
        kind=kind,
        source=SyntheticSource(device_id),
        store=store,
        pre_roll_s=PRE_ROLL_S,
        started_at=started_at,
        signing_key=key,
    )


def sign_in(agents: list[DeviceAgent], creds: Mapping[str, DeviceCredentials]) -> None:
    """Each device logs in as itself; each camera signs its manifests with its own key
    (given now: the registry issues keys for devices already built)."""
    for agent in agents:
        mine = creds[agent.device_id]
        agent.link.reconfigure(username=agent.device_id, password=mine.password)
        if agent.camera is not None:
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(mine.private_key))
            agent.camera = _camera(
                agent.device_id, agent.kind, agent.camera.store, agent.camera.started_at, key
            )


def _build(
    index: int,
    scenario: Scenario,
    *,
    topics: Topics,
    host: str,
    port: int,
    store: RecordingStore,
    verifier: CommandVerifier,
    mqtt_protocol: MqttProtocol = "5",
) -> _Scene:
    prefix = f"s{index}"
    lat0, lon0 = scenario.center
    cameras: dict[str, DeviceAgent] = {}
    placement_of: dict[str, Placement] = {}
    now = time.time()
    for p in scenario.placements:
        device_id = f"{prefix}-{p.name}".replace(".", "_")
        if p.distance_m is None:
            position = None
        else:
            lat, lon = destination(lat0, lon0, p.bearing_deg, p.distance_m)
            position = (lat, lon, p.acc_m, p.fix_age_s)
        # Warm: buffering since well before the drill (as since the shift began).
        camera = _camera(device_id, p.kind, store, now - PRE_ROLL_S - 60.0)

        def where(pos: tuple[float, float, float, float] | None = position) -> Position | None:
            return None if pos is None else _fixed(*pos)

        cameras[device_id] = DeviceAgent(
            topics=topics,
            device_id=device_id,
            kind=p.kind,
            unit=prefix,
            camera=camera,
            verifier=verifier,
            broker_host=host,
            broker_port=port,
            position=where,
            telemetry_interval_s=0.5,
            mqtt_protocol=mqtt_protocol,
        )
        placement_of[device_id] = p
    paired = [a for d, a in cameras.items() if placement_of[d].paired]

    def trigger_where() -> Position | None:
        return _fixed(lat0, lon0, 0.0, 0.0) if scenario.trigger_has_fix else None

    trigger = DeviceAgent(
        topics=topics,
        device_id=f"{prefix}-{scenario.trigger_kind.value}",
        kind=scenario.trigger_kind,
        unit=prefix,
        paired=[a.device_id for a in paired],
        local_peers=() if scenario.late_by_s else paired,
        broker_host=host,
        broker_port=port,
        position=trigger_where,
        telemetry_interval_s=0.5,
        mqtt_protocol=mqtt_protocol,
    )
    return _Scene(scenario, trigger, cameras, placement_of)


def _verify_recording(store_root: Path, device_id: str, rec: str, ets: float) -> str | None:
    """Check the committed recording on disk; return a problem or None."""
    manifest_path = store_root / device_id / rec / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return f"{device_id}: manifest {manifest_path} unreadable ({exc})"
    segments = manifest.get("segments", [])
    if not segments:
        return f"{device_id}: recording {rec} has no segments"
    first = segments[0]
    if first["start"] > ets - PRE_ROLL_S + 1e-6:
        return f"{device_id}: recording starts {ets - first['start']:.1f} s before the event"
    for seg in segments:
        data = (manifest_path.parent / seg["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != seg["sha256"]:
            return f"{device_id}: segment {seg['file']} does not match its hash"
    return None


async def _wait_indexed(engine: Engine, scenes: list[_Scene], timeout: float) -> None:
    """Until the engine has every online placed camera with a fix at a fresh position."""
    wanted: list[str] = []
    for scene in scenes:
        for device_id, p in scene.placement_of.items():
            if p.online and p.distance_m is not None:
                wanted.append(device_id)
    async with asyncio.timeout(timeout):
        while True:
            known = all(engine.fleet.get(d) is not None for s in scenes for d in s.cameras)
            if known and all(d in engine.index for d in wanted):
                return
            await asyncio.sleep(0.05)


async def _run_round(
    scene: _Scene, engine: Engine, store_root: Path, result: ScenarioResult
) -> str:
    scenario = scene.scenario
    expected = {d for d, p in scene.placement_of.items() if p.expect and p.online}
    result.expected = expected
    sent_at = time.time()
    event = await scene.trigger.raise_event(scenario.event_type, at=sent_at - scenario.late_by_s)
    aid = activation_id(scene.trigger.device_id, event.eid)

    def got() -> dict[str, float]:
        out: dict[str, float] = {}
        for device_id, agent in scene.cameras.items():
            for rc in agent.received:
                if rc.command.aid == aid:
                    out.setdefault(device_id, rc.received_at)
        return out

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_ACK_TIMEOUT_S):
            while not expected <= set(got()):
                await asyncio.sleep(0.005)
    await asyncio.sleep(_QUIET_S)
    received = got()
    commanded = set(received)
    result.commanded |= commanded
    result.missed |= expected - commanded
    result.false |= commanded - expected
    for device_id, at in received.items():
        result.latencies_ms.append((at - sent_at) * 1000)
        agent = scene.cameras[device_id]
        rc = next(r for r in agent.received if r.command.aid == aid)
        if rc.result.status is not AckStatus.RECORDING or rc.result.recording_id is None:
            result.problems.append(f"{device_id}: {rc.result.status} {rc.result.detail}")
            continue
        if abs(rc.command.ets - event.ts) > 1e-6:
            result.problems.append(f"{device_id}: command carries the wrong event time")
        result.pre_roll_min = min(result.pre_roll_min, rc.result.pre_roll_covered_s)
        if rc.result.pre_roll_covered_s < PRE_ROLL_S - 1e-6:
            result.problems.append(
                f"{device_id}: pre-roll {rc.result.pre_roll_covered_s:.1f} s < {PRE_ROLL_S:.0f}"
            )
        problem = _verify_recording(store_root, device_id, rc.result.recording_id, event.ts)
        if problem:
            result.problems.append(problem)
    await _check_ledger(scene, engine, aid, result)
    return aid


async def _check_ledger(scene: _Scene, engine: Engine, aid: str, result: ScenarioResult) -> None:
    found = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_ACK_TIMEOUT_S):
            while found is None:
                found = await engine.ledger.activation(aid)
                if found is None:
                    await asyncio.sleep(0.02)
    if found is None:
        result.problems.append(f"activation {aid} is not in the ledger")
        return
    _row, decisions = found
    reasons = {d.device_id: d for d in decisions}
    for device_id, p in scene.placement_of.items():
        decision = reasons.get(device_id)
        if p.expect and p.online and (decision is None or not decision.commanded):
            result.problems.append(f"ledger does not show {device_id} as commanded")
        if p.reason is not None and (decision is None or decision.reason != p.reason):
            got = "nothing" if decision is None else decision.reason
            result.problems.append(f"ledger gives {got} for {device_id}, expected {p.reason}")


def _table(report: DrillReport) -> Table:
    table = Table(title="actimesh drill", show_lines=False)
    for col in (
        "scenario",
        "trigger",
        "expected",
        "commanded",
        "missed",
        "false",
        "pre-roll min",
        "p50 ms",
        "p99 ms",
        "result",
    ):
        table.add_column(col, justify="right" if col not in ("scenario", "trigger") else "left")
    for r in report.results:
        table.add_row(
            r.name,
            r.event_type,
            str(len(r.expected)),
            str(len(r.commanded)),
            str(len(r.missed)),
            str(len(r.false)),
            f"{r.pre_roll_min:.1f} s",
            f"{percentile(r.latencies_ms, 50):.2f}",
            f"{percentile(r.latencies_ms, 99):.2f}",
            "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]",
        )
    return table


def _secured_broker(root: Path, topics: Topics, port: int) -> tuple[MosquittoConfig, Credentials]:
    """The broker as `actimesh up` runs it (accounts, ACL, no anonymous access), and the
    engine's login to it."""
    access = AclPolicy(topics.agency, DispatchSettings().source_device)
    provisioned = prepare_broker(root, access)
    config = MosquittoConfig(port=port, data_dir=provisioned.broker_dir)
    return config, provisioned.service(SERVICE_ENGINE)


@dataclass(frozen=True, slots=True)
class DrillMesh:
    """What the drill's engine runs on: its transport and ledger, and ``where``, for the
    console. The mesh has logged the drill's devices in and placed them on its brokers."""

    transport: Transport
    ledger: Ledger
    where: str


#: Starts a mesh under ``root`` for ``topics`` that admits exactly ``agents`` (each as
#: itself, its camera signing with its own key) and points each at its broker.
MeshFactory = Callable[
    [Path, Topics, list[DeviceAgent]], contextlib.AbstractAsyncContextManager[DrillMesh]
]


@contextlib.asynccontextmanager
async def mosquitto_mesh(
    root: Path, topics: Topics, agents: list[DeviceAgent]
) -> AsyncIterator[DrillMesh]:
    """One managed Mosquitto and a SQLite ledger: the plain drill's mesh."""
    port = free_port()
    broker_cfg, engine_login = await asyncio.to_thread(_secured_broker, root, topics, port)
    async with (
        ManagedMosquitto(broker_cfg) as broker,
        open_ledger(root / "ledger.sqlite3") as ledger,
    ):
        creds = await asyncio.to_thread(provision_fleet, root, specs_of(agents))
        sign_in(agents, creds)
        for agent in agents:
            agent.link.settings = replace(agent.link.settings, host="127.0.0.1", port=port)
        await broker.areload()
        transport = MqttTransport(
            "127.0.0.1", port, username=engine_login.username, password=engine_login.password
        )
        yield DrillMesh(transport, ledger, f"broker mqtt://127.0.0.1:{port}")


async def run_drill(
    console: Console,
    *,
    rounds: int = 5,
    data_dir: Path | None = None,
    policy: InclusionPolicy | None = None,
    scenarios: tuple[Scenario, ...] | None = None,
    mqtt_protocol: MqttProtocol = "5",
    mesh: MeshFactory = mosquitto_mesh,
) -> DrillReport:
    """Run the drill and print its table. The caller turns ``report.ok`` into an exit code.

    ``mqtt_protocol``: what the drill's devices speak (the engine speaks MQTT 5 on
    Mosquitto). ``mesh``: what it runs on, a managed Mosquitto unless given (the cluster
    shape is :func:`~actimesh.drills.cluster_faults.cluster_mesh`); the scenes, rounds and
    checks are the same on any.

    ``scenarios`` defaults to :func:`default_scenarios` for ``policy``; passing scenarios
    written for another policy is how the tests prove the drill catches a wrong engine.
    """
    policy = policy or InclusionPolicy()
    scenarios = scenarios or default_scenarios(policy)
    with scratch_dir(data_dir) as root:
        topics = Topics("drill")
        store = RecordingStore(root / "recordings")
        # A key for this run only: the drill's data directory is scratch.
        signer = CommandSigner.generate()
        verifier = signer.verifier()
        # The mesh places each device once its brokers' ports exist.
        scenes = [
            _build(
                i + 1,
                s,
                topics=topics,
                host="127.0.0.1",
                port=0,
                store=store,
                verifier=verifier,
                mqtt_protocol=mqtt_protocol,
            )
            for i, s in enumerate(scenarios)
        ]
        results = [ScenarioResult(s.name, s.event_type) for s in scenarios]
        # Every drill device logs in as itself, pinned to its own topics.
        agents = [a for s in scenes for a in (s.trigger, *s.cameras.values())]
        async with mesh(root, topics, agents) as bus:
            engine = Engine(
                topics=topics,
                transport=bus.transport,
                ledger=bus.ledger,
                rules=DEFAULT_RULES,
                policy=policy,
                signer=signer,
                # Each round fires the same trigger at the same cameras again and checks
                # each is commanded: incident merging would fold the rounds into one.
                settings=EngineSettings(merge_window_s=0.0),
            )
            async with asyncio.TaskGroup() as tg:
                engine_task = tg.create_task(engine.run(), name="drill-engine")
                async with asyncio.timeout(30):
                    await engine.ready.wait()
                tasks = {a.device_id: tg.create_task(a.run(), name=a.device_id) for a in agents}
                for agent in agents:
                    await agent.link.wait_connected(timeout=30)
                # Cameras placed "offline" were online, then powered off (last presence).
                for scene in scenes:
                    for device_id, p in scene.placement_of.items():
                        if not p.online:
                            await _wait_indexed_one(engine, device_id)
                            await scene.cameras[device_id].power_off()
                            await tasks[device_id]
                await _wait_offline(engine, scenes)
                await _wait_indexed(engine, scenes, timeout=30)
                async with asyncio.timeout(30):
                    await engine.warmed.wait()
                console.print(
                    f"drill: {len(agents)} devices on {len(scenes)} scenes, {rounds} round(s), "
                    f"policy {policy.mode.value}, {bus.where}"
                )
                last: tuple[_Scene, str] | None = None
                for _ in range(rounds):
                    for scene, result in zip(scenes, results, strict=True):
                        aid = await _run_round(scene, engine, root / "recordings", result)
                        last = (scene, aid)
                duplicate_ignored = await _check_duplicate(engine, last)
                for task in (engine_task, *tasks.values()):
                    task.cancel()
    report = DrillReport(results, duplicate_ignored)
    console.print(_table(report))
    lat = report.latencies_ms
    console.print(
        f"trigger-to-command latency over {len(lat)} commands: "
        f"p50 {percentile(lat, 50):.2f} ms, p99 {percentile(lat, 99):.2f} ms, "
        f"max {max(lat, default=float('nan')):.2f} ms, "
        f"mean {statistics.fmean(lat) if lat else float('nan'):.2f} ms"
    )
    console.print(
        "duplicate event: " + ("ignored" if duplicate_ignored else "[red]ACTIVATED AGAIN[/red]")
    )
    for r in report.results:
        for problem in r.problems:
            console.print(f"[red]{r.name}: {problem}[/red]")
        for device_id in sorted(r.missed):
            console.print(f"[red]{r.name}: MISSED {device_id}[/red]")
        for device_id in sorted(r.false):
            console.print(f"[red]{r.name}: FALSE ACTIVATION {device_id}[/red]")
    verdict = "[bold green]drill passed" if report.ok else "[bold red]drill FAILED"
    console.print(verdict)
    return report


async def _wait_indexed_one(engine: Engine, device_id: str) -> None:
    async with asyncio.timeout(30):
        while device_id not in engine.index:
            await asyncio.sleep(0.05)


async def _wait_offline(engine: Engine, scenes: list[_Scene]) -> None:
    offline = [d for s in scenes for d, p in s.placement_of.items() if not p.online]
    async with asyncio.timeout(30):
        while any((info := engine.fleet.get(d)) is None or info.online for d in offline):
            await asyncio.sleep(0.05)


async def _check_duplicate(engine: Engine, last: tuple[_Scene, str] | None) -> bool:
    """Resend the last event verbatim: the engine must not activate it again."""
    if last is None:
        return False
    scene, _aid = last
    before = engine.stats.duplicates
    commands_before = sum(len(a.received) for a in scene.cameras.values())
    await scene.trigger.resend_last_event()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_ACK_TIMEOUT_S):
            while engine.stats.duplicates == before:
                await asyncio.sleep(0.01)
    await asyncio.sleep(_QUIET_S)
    commands_after = sum(len(a.received) for a in scene.cameras.values())
    return engine.stats.duplicates == before + 1 and commands_after == commands_before
