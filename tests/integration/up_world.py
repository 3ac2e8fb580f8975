"""`actimesh up` as an operator runs it, with a CEW and its body camera logged in as
themselves: for tests and probes of the whole set of processes (not a test)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import free_port
from actimesh.broker.topics import Topics
from actimesh.config import load_settings
from actimesh.devices.agent import DeviceAgent
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.runtime import run_up
from actimesh.security.registry import DeviceCredentials, Registry
from actimesh.security.signing import CommandVerifier, engine_key_paths
from actimesh.triggers.fanout import activation_id
from tests.integration.harness import CENTER, fixed
from tests.waiting import eventually

AGENCY = "upw"


@dataclass
class UpWorld:
    """A running `up`: its output, web addresses and its officers' devices."""

    root: Path
    out: io.StringIO
    dispatch_url: str
    evidence_url: str
    admin_password: str
    #: Each officer's CEW and the body camera paired with it, 150 m from the next.
    officers: list[tuple[DeviceAgent, DeviceAgent]]
    #: Registered devices nobody runs: an attacker's stolen camera and CEW.
    stolen: dict[str, DeviceCredentials]
    broker_port: int
    _draws: int = 0

    @property
    def cew(self) -> DeviceAgent:
        return self.officers[0][0]

    @property
    def camera(self) -> DeviceAgent:
        return self.officers[0][1]

    async def draw(self, timeout: float = 30.0) -> float:
        """Raise a TASER draw, each officer in turn; seconds from the draw until that
        officer's camera received the engine's command (by the camera's clock, which is
        this host's: not counting the camera's own commit to storage, a cost of the
        camera, not of the mesh)."""
        cew, camera = self.officers[self._draws % len(self.officers)]
        self._draws += 1
        event = await cew.raise_event("taser_draw")
        return await commanded_after(
            camera, activation_id(cew.device_id, event.eid), event.ts, timeout
        )


async def commanded_after(camera: DeviceAgent, aid: str, since: float, timeout: float) -> float:
    """Seconds from ``since`` (wall clock) until ``camera`` received the command of ``aid``."""
    await eventually(lambda: any(r.command.aid == aid for r in camera.received), timeout, 0.002)
    return next(r.received_at for r in camera.received if r.command.aid == aid) - since


def _agent(
    root: Path,
    device_id: str,
    kind: DeviceKind,
    password: str,
    port: int,
    *,
    at: tuple[float, float] = CENTER,
    paired: tuple[str, ...] = (),
) -> DeviceAgent:
    camera = None
    if kind is DeviceKind.BODY_CAM:
        camera = Camera(
            device_id=device_id,
            kind=kind,
            source=SyntheticSource(device_id),
            store=RecordingStore(root / "camera"),
            started_at=time.time() - 60,
        )
    return DeviceAgent(
        topics=Topics(AGENCY),
        device_id=device_id,
        kind=kind,
        broker_host="127.0.0.1",
        broker_port=port,
        position=fixed(*at),
        paired=paired,
        camera=camera,
        verifier=CommandVerifier.from_file(engine_key_paths(root)[1]),
        telemetry_interval_s=0.2,
        username=device_id,
        password=password,
        resend_initial_s=0.3,
    )


@contextlib.asynccontextmanager
async def running_up(
    root: Path, *, officers: int = 1, storm_limits: bool = False
) -> AsyncIterator[UpWorld]:
    """`up` on ``root`` (fixed ports, so a restarted web child keeps its address), with
    ``officers`` CEWs, each with its body camera (``cew-1``/``bwc-1``, ...).

    Each draw commands its camera anew, rather than joining the incident before it.
    The storm limits on one device's events are lifted, so that one officer may draw
    many times in quick succession, unless ``storm_limits``: then the defaults hold
    (10 at once), and a probe draws from enough officers to stay within them.
    """
    with Registry.open(root) as registry:
        pairs = []
        for i in range(1, officers + 1):
            cam = registry.add(f"bwc-{i}", DeviceKind.BODY_CAM)  # before the CEW pairs it
            pairs.append((registry.add(f"cew-{i}", DeviceKind.CEW, paired=(f"bwc-{i}",)), cam))
        stolen = {
            "bwc-stolen": registry.add("bwc-stolen", DeviceKind.BODY_CAM),
            "cew-stolen": registry.add("cew-stolen", DeviceKind.CEW),
        }
    port = free_port()
    settings = load_settings(data_dir=root, broker_port=port, agency=AGENCY)
    engine = replace(settings.engine, merge_window_s=0.0)
    if not storm_limits:
        engine = replace(engine, device_burst=1000.0, device_rate_per_s=100.0)
    settings = replace(
        settings,
        engine=engine,
        dispatch=replace(settings.dispatch, port=free_port()),
        evidence=replace(settings.evidence, port=free_port()),
    )
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False)
    async with asyncio.TaskGroup() as tg:
        up = tg.create_task(run_up(settings, None, console), name="up")
        await eventually(lambda: "Ctrl-C" in out.getvalue(), timeout=60)
        text = out.getvalue()
        dispatch = re.search(r"dispatch (http://127\.0\.0\.1:\d+)", text)
        evidence = re.search(r"evidence (http://127\.0\.0\.1:\d+)", text)
        admin = re.search(r"user admin, password (\S+)\n", text)
        assert dispatch is not None, text
        assert evidence is not None, text
        assert admin is not None, text
        lat, lon = CENTER
        officer_agents = [
            (
                _agent(
                    root,
                    cew.device_id,
                    DeviceKind.CEW,
                    cew.password,
                    port,
                    at=at,
                    paired=(cam.device_id,),
                ),
                _agent(root, cam.device_id, DeviceKind.BODY_CAM, cam.password, port, at=at),
            )
            for n, (cew, cam) in enumerate(pairs)
            for at in [(lat + n * 0.00135, lon)]  # 150 m apart: nobody else's camera
        ]
        agents = [a for pair in officer_agents for a in pair]
        tasks = [tg.create_task(a.run(), name=a.device_id) for a in agents]
        for agent in agents:
            await agent.link.wait_connected(timeout=30)
        world = UpWorld(
            root,
            out,
            dispatch.group(1),
            evidence.group(1),
            admin.group(1),
            officer_agents,
            stolen=stolen,
            broker_port=port,
        )
        # The engine has heard each camera's fix once a draw commands it.
        for _ in officer_agents:
            await world.draw()
        try:
            yield world
        finally:
            for task in (*tasks, up):
                task.cancel()


def web_children() -> dict[str, int]:
    """The pids of this process's supervised web children, by name."""
    found: dict[str, int] = {}
    for path in Path("/proc/self/task").glob("*/children"):
        for pid in path.read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"actimesh.supervisor" in argv:
                found[argv[argv.index(b"actimesh.supervisor") + 1].decode()] = int(pid)
    return found
