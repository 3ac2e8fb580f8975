"""``actimesh drill --media real``: real H.264 from filming to retention, in real time.

A small fleet of cameras films the test pattern live (one capture thread each, small
frames to keep the CPU low) on a secured broker with the real engine. The drill waits
until every camera's buffer holds the whole pre-roll *as filmed* (no segment is
backfilled: each camera is switched on only once its capture thread is delivering
frames, and every source must report no filled segment), then fires two TASER draws:

* scene A: the officer's paired body camera, a second officer 5 m away and a cruiser's
  dash camera 7 m away record; a body camera 40 m away must not;
* scene B, 2 km off: the officer's paired body camera only.

The cameras record a few seconds live and the officers stop them. Then every
recording is checked as an investigator would: the manifest verifies with the key the
registry holds for the camera, and ``recording.ts`` is decoded with PyAV: its first
frame lies at least 30 s before the event, its frames follow each other at exactly
``1/fps`` with no gap, and the manifest's times agree with the video's own clock.

Each camera then offloads over HTTP (the upload API on a loopback port) to the evidence
store, which checks the signature and every SHA-256 before it issues a receipt; the
camera deletes its copy only on that receipt. Scene B's activation is linked to a
case, and evidence retention runs with a clock 14 months ahead: scene A's recordings
are deleted, scene B's is kept. Finally the ledger's hash chain must verify.

The data directory keeps what is left: ``evidence/<device>/<recording>/`` holds the
case-linked recording (manifest, ``recording.ts``, receipt); ``ledger.sqlite3`` the
activations, uploads, the case link and the deletions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from rich.console import Console
from rich.table import Table

from actimesh.audit import link_case, verify_ledger
from actimesh.broker.messages import AckStatus, DeviceKind, activation_id
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.broker.topics import Topics
from actimesh.broker.transport import MqttTransport
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.devices.camera import Camera
from actimesh.devices.h264 import PTS_HZ
from actimesh.devices.h264_live import LiveH264Source
from actimesh.devices.manifest import verify_manifest
from actimesh.devices.offload import Offloader
from actimesh.devices.recorder import RecordingStore
from actimesh.devices.settings import MediaKind, MediaSettings, open_media_source
from actimesh.dispatch.settings import DispatchSettings
from actimesh.evidence import (
    DiskStore,
    EvidenceService,
    EvidenceSettings,
    RegistryKeys,
    Uploads,
    UploadServer,
    apply_evidence_retention,
    create_upload_app,
)
from actimesh.geofence import InclusionPolicy, destination
from actimesh.ledger import open_ledger
from actimesh.security.acl import SERVICE_ENGINE, AclPolicy
from actimesh.security.provision import prepare_broker
from actimesh.security.registry import DeviceCredentials, DeviceSpec
from actimesh.security.signing import CommandSigner, CommandVerifier
from actimesh.triggers.engine import Engine
from actimesh.triggers.rules import DEFAULT_RULES

__all__ = ["MEDIA", "PRE_ROLL_S", "CameraResult", "MediaDrillReport", "run_media_drill"]

PRE_ROLL_S = 30.0
#: Small frames at 10 fps: five live encoders stay at a few per cent of a core.
MEDIA = MediaSettings(
    source=MediaKind.H264, device="none", width=320, height=180, fps=10, max_kbps=400
)
#: Evidence retention runs with a clock this far ahead (14 months, past the 13).
RETENTION_AHEAD_S = 14 * 30.44 * 86_400.0
CASE_ID = "MD-DRILL-1"
_PTS_WRAP = 1 << 33
_TIMEOUT_S = 30.0
_ACK_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Place:
    name: str
    kind: DeviceKind
    distance_m: float
    bearing_deg: float
    paired: bool = False
    expect: bool = True


@dataclass(frozen=True, slots=True)
class _SceneSpec:
    prefix: str
    center: tuple[float, float]
    places: tuple[_Place, ...]
    #: This scene's activation is linked to a case: its recordings outlive retention.
    case: bool = False


_SCENES = (
    _SceneSpec(
        "a",
        (51.0447, -114.0719),
        (
            _Place("bwc", DeviceKind.BODY_CAM, 0.5, 0.0, paired=True),
            _Place("bwc5m", DeviceKind.BODY_CAM, 5.0, 60.0),
            _Place("dash7m", DeviceKind.DASH_CAM, 7.0, 200.0),
            _Place("bwc40m", DeviceKind.BODY_CAM, 40.0, 300.0, expect=False),
        ),
    ),
    _SceneSpec(
        "b",
        (51.0627, -114.0719),  # 2 km north
        (_Place("bwc", DeviceKind.BODY_CAM, 0.5, 90.0, paired=True),),
        case=True,
    ),
)


@dataclass(slots=True)
class CameraResult:
    """What the drill found for one camera."""

    device_id: str
    kind: str
    distance_m: float
    expected: bool
    commanded: bool = False
    recording_id: str | None = None
    bytes: int = 0
    frames: int = 0
    duration_s: float = 0.0
    #: First frame's time (from the video's own clock) minus the event time.
    first_minus_event_s: float = math.nan
    filled_segments: int = 0
    verified: bool = False
    offloaded: bool = False
    stored_verified: bool = False
    #: ``deleted``, ``kept (case)`` or what retention did not do.
    retention: str = "-"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class MediaDrillReport:
    """The outcome of :func:`run_media_drill`; ``ok`` decides the exit code."""

    cameras: list[CameraResult]
    wall_s: float = 0.0
    ledger_ok: bool = False
    problems: list[str] = field(default_factory=list)
    evidence_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.ledger_ok and not self.problems and all(c.ok for c in self.cameras)


@dataclass(slots=True)
class _Scene:
    spec: _SceneSpec
    trigger: DeviceAgent
    cameras: dict[str, DeviceAgent]
    results: dict[str, CameraResult]
    aid: str | None = None
    event_ts: float = math.nan


def _device_id(scene: _SceneSpec, name: str) -> str:
    return f"{scene.prefix}-{name}"


def _specs() -> list[DeviceSpec]:
    """The fleet as the registry sees it (registered before any device is built, so each
    camera is built with its own signing key)."""
    out = []
    for scene in _SCENES:
        paired = tuple(_device_id(scene, p.name) for p in scene.places if p.paired)
        out += [DeviceSpec(_device_id(scene, p.name), p.kind, scene.prefix) for p in scene.places]
        out.append(DeviceSpec(_device_id(scene, "cew"), DeviceKind.CEW, scene.prefix, paired))
    return out


def _fixed(lat: float, lon: float) -> Position:
    # A drill fix is exact and fresh: the 30 ft verdicts must not depend on GPS noise.
    return Position(lat, lon, 0.0, time.time())


async def _open_sources(device_ids: list[str]) -> dict[str, LiveH264Source]:
    """A live source per camera, each already delivering frames."""
    sources: dict[str, LiveH264Source] = {}
    try:
        for device_id in device_ids:
            source = await asyncio.to_thread(open_media_source, MEDIA, device_id, live=True)
            assert isinstance(source, LiveH264Source)  # MEDIA films the pattern live
            sources[device_id] = source
        async with asyncio.timeout(_TIMEOUT_S):
            while any(s.stats.frames < 2 for s in sources.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except BaseException:
        for source in sources.values():
            source.switch_off()
        raise
    return sources


def _build(
    topics: Topics,
    port: int,
    *,
    store: RecordingStore,
    creds: dict[str, DeviceCredentials],
    sources: dict[str, LiveH264Source],
    verifier: CommandVerifier,
) -> list[_Scene]:
    scenes = []
    # Switched on now, after its capture thread is running: the first segment of every
    # camera is filmed in full, none is made up.
    now = time.time()
    for spec in _SCENES:
        cameras: dict[str, DeviceAgent] = {}
        results: dict[str, CameraResult] = {}
        for p in spec.places:
            device_id = _device_id(spec, p.name)
            lat, lon = destination(*spec.center, p.bearing_deg, p.distance_m)
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(creds[device_id].private_key))
            camera = Camera(
                device_id=device_id,
                kind=p.kind,
                source=sources[device_id],
                store=store,
                pre_roll_s=PRE_ROLL_S,
                started_at=now,
                signing_key=key,
            )
            cameras[device_id] = DeviceAgent(
                topics=topics,
                device_id=device_id,
                kind=p.kind,
                unit=spec.prefix,
                camera=camera,
                verifier=verifier,
                broker_host="127.0.0.1",
                broker_port=port,
                position=functools.partial(_fixed, lat, lon),
                telemetry_interval_s=0.5,
                username=device_id,
                password=creds[device_id].password,
            )
            results[device_id] = CameraResult(device_id, p.kind.value, p.distance_m, p.expect)
        paired = [cameras[_device_id(spec, p.name)] for p in spec.places if p.paired]
        trigger_id = _device_id(spec, "cew")
        trigger = DeviceAgent(
            topics=topics,
            device_id=trigger_id,
            kind=DeviceKind.CEW,
            unit=spec.prefix,
            paired=[a.device_id for a in paired],
            local_peers=paired,
            broker_host="127.0.0.1",
            broker_port=port,
            # A CEW has no GPS: the engine borrows its paired body camera's fix.
            position=lambda: None,
            telemetry_interval_s=0.5,
            username=trigger_id,
            password=creds[trigger_id].password,
        )
        scenes.append(_Scene(spec, trigger, cameras, results))
    return scenes


async def _wait_indexed(engine: Engine, scenes: list[_Scene]) -> None:
    wanted = [d for s in scenes for d in s.cameras]
    async with asyncio.timeout(_TIMEOUT_S):
        while not all(d in engine.index for d in wanted):  # noqa: ASYNC110 - engine has no event
            await asyncio.sleep(0.05)
        await engine.warmed.wait()


async def _wait_pre_roll(scenes: list[_Scene], console: Console) -> None:
    """Until every camera's buffer reaches the pre-roll back from now, as filmed."""
    cameras = [a.camera for s in scenes for a in s.cameras.values() if a.camera is not None]
    started = time.monotonic()
    console.print(f"media drill: filming until every buffer holds {PRE_ROLL_S:.0f} s of pre-roll")
    async with asyncio.timeout(PRE_ROLL_S + _TIMEOUT_S):
        while True:
            now = time.time()
            earliest = [c.buffer.earliest_start() for c in cameras]
            if all(e is not None and e <= now - PRE_ROLL_S - 0.2 for e in earliest):
                break
            await asyncio.sleep(0.25)
    console.print(f"media drill: buffers full after {time.monotonic() - started:.1f} s")


async def _fire(scenes: list[_Scene]) -> None:
    for scene in scenes:
        event = await scene.trigger.raise_event("taser_draw")
        scene.aid = activation_id(scene.trigger.device_id, event.eid)
        scene.event_ts = event.ts


def _commanded(agent: DeviceAgent, aid: str) -> tuple[bool, str | None]:
    for rc in agent.received:
        if rc.command.aid == aid:
            ok = rc.result.status is AckStatus.RECORDING and rc.result.recording_id is not None
            return ok, rc.result.recording_id
    return False, None


async def _await_commands(scenes: list[_Scene]) -> None:
    """Until every camera that should has the engine's command (or the timeout)."""

    def pending() -> bool:
        for scene in scenes:
            assert scene.aid is not None
            for device_id, agent in scene.cameras.items():
                if scene.results[device_id].expected and not _commanded(agent, scene.aid)[0]:
                    return True
        return False

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_ACK_TIMEOUT_S):
            while pending():  # noqa: ASYNC110 - the agents expose a list, not an event
                await asyncio.sleep(0.02)


def _decode(path: Path) -> list[int]:
    """Decode every video frame of ``path``; their presentation timestamps (90 kHz, as
    written: 33 bits, wrapping)."""
    pts: list[int] = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            if frame.pts is None:
                raise ValueError(f"{path.name}: a frame without a timestamp")
            pts.append(int(frame.pts))
    return pts


def _unwrap(pts: int, near: float) -> float:
    """Seconds of a 33-bit MPEG-TS timestamp, taken in the wrap nearest to ``near``."""
    wraps = round((near * PTS_HZ - pts) / _PTS_WRAP)
    return (pts + wraps * _PTS_WRAP) / PTS_HZ


def _check_file(result: CameraResult, folder: Path, event_ts: float, key: Ed25519PublicKey) -> None:
    check = verify_manifest(folder, key)
    result.verified = check.ok
    result.problems += [f"manifest: {p}" for p in check.problems[:3]]
    manifest = check.manifest
    if manifest is None:
        return
    media = folder / str(manifest["media"]["file"])
    result.bytes = media.stat().st_size
    fps = MEDIA.fps
    pts = _decode(media)
    result.frames = len(pts)
    if not pts:
        result.problems.append(f"{media.name} has no video frame")
        return
    step = PTS_HZ // fps
    gaps = [i for i in range(1, len(pts)) if (pts[i] - pts[i - 1]) % _PTS_WRAP != step]
    if gaps:
        result.problems.append(f"{len(gaps)} discontinuities, first after frame {gaps[0]}")
    first = _unwrap(pts[0], float(manifest["first_frame_at"]))
    result.duration_s = len(pts) / fps
    result.first_minus_event_s = first - event_ts
    if abs(first - float(manifest["first_frame_at"])) > 1.0 / fps:
        result.problems.append("the manifest's first_frame_at disagrees with the video's clock")
    if result.first_minus_event_s > -PRE_ROLL_S + 1e-6:
        result.problems.append(
            f"first frame only {-result.first_minus_event_s:.2f} s before the event"
        )


async def _film(root: Path, console: Console) -> tuple[list[_Scene], dict[str, DeviceCredentials]]:
    """Broker, engine and fleet: buffer, trigger, record, stop. The cameras' recordings
    stay in ``root/recordings``."""
    topics = Topics("mediadrill")
    port = free_port()
    access = AclPolicy(topics.agency, DispatchSettings().source_device)
    provisioned = await asyncio.to_thread(prepare_broker, root, access, devices=_specs())
    creds = dict(provisioned.devices)
    engine_login = provisioned.service(SERVICE_ENGINE)
    signer = CommandSigner.generate()
    store = RecordingStore(root / "recordings")
    camera_ids = [_device_id(s, p.name) for s in _SCENES for p in s.places]
    sources = await _open_sources(camera_ids)
    try:
        async with (
            ManagedMosquitto(MosquittoConfig(port=port, data_dir=provisioned.broker_dir)),
            open_ledger(root / "ledger.sqlite3") as ledger,
        ):
            engine = Engine(
                topics=topics,
                transport=MqttTransport(
                    "127.0.0.1",
                    port,
                    username=engine_login.username,
                    password=engine_login.password,
                ),
                ledger=ledger,
                rules=DEFAULT_RULES,
                policy=InclusionPolicy(),
                signer=signer,
            )
            scenes = _build(
                topics,
                port,
                store=store,
                creds=creds,
                sources=sources,
                verifier=signer.verifier(),
            )
            agents = [a for s in scenes for a in (s.trigger, *s.cameras.values())]
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(engine.run(), name="mediadrill-engine")]
                async with asyncio.timeout(_TIMEOUT_S):
                    await engine.ready.wait()
                tasks += [tg.create_task(a.run(), name=f"mediadrill-{a.device_id}") for a in agents]
                for agent in agents:
                    await agent.link.wait_connected(timeout=_TIMEOUT_S)
                await _wait_indexed(engine, scenes)
                await _wait_pre_roll(scenes, console)
                await _fire(scenes)
                await _await_commands(scenes)
                # The officers keep filming a few seconds, then stop on the camera.
                await asyncio.sleep(6.0)
                for scene in scenes:
                    for agent in scene.cameras.values():
                        await agent.stop_recording()
                for task in tasks:
                    task.cancel()
    finally:
        for source in sources.values():
            source.switch_off()
    for scene in scenes:
        for device_id, result in scene.results.items():
            result.filled_segments = sources[device_id].stats.filled
    return scenes, creds


def _check_recordings(
    root: Path, scenes: list[_Scene], creds: dict[str, DeviceCredentials]
) -> None:
    for scene in scenes:
        assert scene.aid is not None
        for device_id, agent in scene.cameras.items():
            result = scene.results[device_id]
            result.commanded, result.recording_id = _commanded(agent, scene.aid)
            if result.filled_segments:
                result.problems.append(f"{result.filled_segments} segment(s) not filmed in full")
            if not result.expected:
                if agent.received:
                    result.problems.append("commanded, but it is outside 30 ft")
                continue
            if not result.commanded or result.recording_id is None:
                result.problems.append("not commanded (or not recording)")
                continue
            public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(creds[device_id].public_key))
            folder = root / "recordings" / device_id / result.recording_id
            try:
                _check_file(result, folder, scene.event_ts, public)
            except (OSError, ValueError, KeyError, av.FFmpegError) as exc:
                result.problems.append(f"recording unreadable: {exc}")


async def _evidence(
    root: Path, scenes: list[_Scene], creds: dict[str, DeviceCredentials], report: MediaDrillReport
) -> None:
    """Offload over HTTP, verify in the store, link scene B to a case, apply retention."""
    settings = EvidenceSettings(port=0)
    service = EvidenceService(
        store=DiskStore(settings.root(root)),
        staging=settings.root(root) / ".uploads",
        keys=RegistryKeys(root),
        ledger_location=root / "ledger.sqlite3",
        settings=settings,
    )
    report.evidence_dir = settings.root(root)
    recorded = [
        (scene, scene.results[d])
        for scene in scenes
        for d in scene.cameras
        if scene.results[d].recording_id is not None
    ]
    async with service:
        server = UploadServer(create_upload_app(Uploads(service)), host="127.0.0.1", port=0)
        async with asyncio.TaskGroup() as tg:
            serving = tg.create_task(server.run(), name="mediadrill-evidence")
            async with asyncio.timeout(_TIMEOUT_S):
                await server.ready.wait()
            for _scene, result in recorded:
                device_id = result.device_id
                auth = (device_id, creds[device_id].password)
                async with httpx.AsyncClient(
                    base_url=server.url, auth=auth, timeout=30.0, trust_env=False
                ) as client:
                    done = await Offloader(
                        client, root=root / "recordings", device_id=device_id
                    ).run()
                assert result.recording_id is not None
                gone = not (root / "recordings" / device_id / result.recording_id).exists()
                result.offloaded = result.recording_id in done.stored and gone
                if not result.offloaded:
                    why = done.kept.get(result.recording_id, "no receipt, or the copy remains")
                    result.problems.append(f"offload: {why}")
            serving.cancel()
        for _scene, result in recorded:
            if not result.offloaded or result.recording_id is None:
                continue
            stored = await service.get(result.device_id, result.recording_id)
            check = await service.verify(stored)
            result.stored_verified = check.ok
            if not check.ok:
                result.problems.append(f"store: {check.problems[0]}")
        for scene in scenes:
            if scene.spec.case and scene.aid is not None:
                await link_case(root / "ledger.sqlite3", CASE_ID, scene.aid, by="media drill")
        later = time.time() + RETENTION_AHEAD_S
        retention = await apply_evidence_retention(service, now=later)
        report.problems += [f"retention: {p}" for p in retention.problems]
        for scene, result in recorded:
            subject = f"{result.device_id}/{result.recording_id}"
            if subject in retention.deleted:
                result.retention = "deleted"
            elif subject in retention.kept_for_case:
                result.retention = f"kept: {CASE_ID}"
            want = f"kept: {CASE_ID}" if scene.spec.case else "deleted"
            if result.offloaded and result.retention != want:
                result.problems.append(f"retention: {result.retention}, expected {want}")
    ledger = await asyncio.to_thread(verify_ledger, root / "ledger.sqlite3")
    report.ledger_ok = ledger.ok
    if not ledger.ok:
        report.problems.append(f"ledger does not verify: {ledger.findings[0]}")


def _table(report: MediaDrillReport) -> Table:
    table = Table(
        title="actimesh drill --media real",
        caption=(
            "1st frame: the video's first frame minus the event time; verified: signature and "
            "every SHA-256, on the camera and again in the store"
        ),
    )
    cols = (
        "camera",
        "dist",
        "recorded",
        "size",
        "duration",
        "frames",
        "1st frame",
        "verified",
        "offloaded",
        "retention",
        "",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("camera", "retention") else "right")
    for c in report.cameras:
        recorded = c.recording_id is not None
        table.add_row(
            f"{c.device_id} ({c.kind.removesuffix('_cam')})",
            f"{c.distance_m:g} m",
            "yes" if c.commanded else ("no, right" if not c.expected else "NO"),
            f"{c.bytes / 1024:.0f} KiB" if recorded else "-",
            f"{c.duration_s:.1f} s" if recorded else "-",
            str(c.frames) if recorded else "-",
            f"{c.first_minus_event_s:+.2f} s" if recorded else "-",
            ("yes" if c.verified and c.stored_verified else "NO") if recorded else "-",
            ("yes" if c.offloaded else "NO") if recorded else "-",
            c.retention,
            "[green]PASS[/green]" if c.ok else "[red]FAIL[/red]",
        )
    return table


async def run_media_drill(console: Console, *, root: Path) -> MediaDrillReport:
    """Run the media drill (about 40 s of real time) in ``root`` and print its table.
    The caller turns ``report.ok`` into the exit code."""
    started = time.monotonic()
    scenes, creds = await _film(root, console)
    _check_recordings(root, scenes, creds)
    report = MediaDrillReport([r for s in scenes for r in s.results.values()])
    await _evidence(root, scenes, creds, report)
    report.wall_s = time.monotonic() - started
    console.print(_table(report))
    for c in report.cameras:
        for problem in c.problems:
            console.print(f"[red]{c.device_id}: {problem}[/red]")
    for problem in report.problems:
        console.print(f"[red]{problem}[/red]")
    console.print(f"wall time {report.wall_s:.1f} s")
    verdict = "[bold green]media drill passed" if report.ok else "[bold red]media drill FAILED"
    console.print(verdict)
    return report
