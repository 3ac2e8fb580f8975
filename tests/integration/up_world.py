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
    """A running `up`: its output, web addresses and two devices of its registry."""

    root: Path
    out: io.StringIO
    dispatch_url: str
    evidence_url: str
    admin_password: str
    cew: DeviceAgent
    camera: DeviceAgent
    #: Registered devices nobody runs: an attacker's stolen camera and CEW.
    stolen: dict[str, DeviceCredentials]
    broker_port: int

    async def draw(self, timeout: float = 30.0) -> float:
        """Raise a TASER draw; seconds from the draw until the paired camera received
        the engine's command (by the camera's clock, which is this host's: not counting
        the camera's own commit to storage, a cost of the camera, not of the mesh)."""
        event = await self.cew.raise_event("taser_draw")
        return await commanded_after(
            self.camera, activation_id(self.cew.device_id, event.eid), event.ts, timeout
        )


async def commanded_after(camera: DeviceAgent, aid: str, since: float, timeout: float) -> float:
    """Seconds from ``since`` (wall clock) until ``camera`` received the command of ``aid``."""
    await eventually(lambda: any(r.command.aid == aid for r in camera.received), timeout, 0.002)
    return next(r.received_at for r in camera.received if r.command.aid == aid) - since


def _agent(root: Path, device_id: str, kind: DeviceKind, password: str, port: int) -> DeviceAgent:
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
        position=fixed(*CENTER),
        paired=("bwc-1",) if kind is DeviceKind.CEW else (),
        camera=camera,
        verifier=CommandVerifier.from_file(engine_key_paths(root)[1]),
        telemetry_interval_s=0.2,
        username=device_id,
        password=password,
        resend_initial_s=0.3,
    )


@contextlib.asynccontextmanager
async def running_up(root: Path) -> AsyncIterator[UpWorld]:
    """`up` on ``root`` (fixed ports, so a restarted web child keeps its address)."""
    with Registry.open(root) as registry:
        cam = registry.add("bwc-1", DeviceKind.BODY_CAM)
        cew = registry.add("cew-1", DeviceKind.CEW, paired=("bwc-1",))
        stolen = {
            "bwc-stolen": registry.add("bwc-stolen", DeviceKind.BODY_CAM),
            "cew-stolen": registry.add("cew-stolen", DeviceKind.CEW),
        }
    port = free_port()
    settings = load_settings(data_dir=root, broker_port=port, agency=AGENCY)
    settings = replace(
        settings,
        # Each draw commands the camera again, rather than joining the incident before
        # it, and a probe's draws in quick succession stay within the CEW's rate.
        engine=replace(
            settings.engine, merge_window_s=0.0, device_burst=1000.0, device_rate_per_s=100.0
        ),
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
        agents = (
            _agent(root, "cew-1", DeviceKind.CEW, cew.password, port),
            _agent(root, "bwc-1", DeviceKind.BODY_CAM, cam.password, port),
        )
        tasks = [tg.create_task(a.run(), name=a.device_id) for a in agents]
        for agent in agents:
            await agent.link.wait_connected(timeout=30)
        world = UpWorld(
            root,
            out,
            dispatch.group(1),
            evidence.group(1),
            admin.group(1),
            *agents,
            stolen=stolen,
            broker_port=port,
        )
        # The engine has heard the camera's fix once a draw commands it.
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
