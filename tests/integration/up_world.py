"""`actimesh up` as an operator runs it, with officers' CEWs and body cameras logged in as
themselves: for tests and probes of the whole set of processes (not a test)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from actimesh.adapters import AdapterSettings
from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import free_port
from actimesh.devices.agent import DeviceAgent
from actimesh.runtime import run_up
from actimesh.runtime.config import load_settings
from actimesh.security.registry import DeviceCredentials, Registry
from tests.integration.officers import (
    AGENCY,
    OfficerSpec,
    OfficersProcess,
    draw,
    officer_devices,
)
from tests.waiting import eventually


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
    #: The officers' devices when they run in a process of their own (``officers``
    #: is empty then).
    remote: OfficersProcess | None = None
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
        if self.remote is not None:
            return await self.remote.draw(timeout)
        officer = self.officers[self._draws % len(self.officers)]
        self._draws += 1
        return await draw(officer, timeout)


@contextlib.asynccontextmanager
async def running_up(
    root: Path,
    *,
    officers: int = 1,
    storm_limits: bool = False,
    devices_elsewhere: bool = False,
    adapters: AdapterSettings | None = None,
) -> AsyncIterator[UpWorld]:
    """`up` on ``root`` (fixed ports, so a restarted web child keeps its address), with
    ``officers`` CEWs, each with its body camera (``cew-1``/``bwc-1``, ...).

    Each draw commands its camera anew, rather than joining the incident before it.
    The storm limits on one device's events are lifted, so that one officer may draw
    many times in quick succession, unless ``storm_limits``: then the defaults hold
    (10 at once), and a probe draws from enough officers to stay within them. With
    ``devices_elsewhere`` the officers' devices run in a process of their own, as in the
    field, so that what a draw is timed with does not share the engine's process.
    ``adapters``: the device-protocol adapters it runs (none by default).
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
    if adapters is not None:
        settings = replace(settings, adapters=adapters)
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
        specs = [
            OfficerSpec(cew.device_id, cew.password, cam.device_id, cam.password, n)
            for n, (cew, cam) in enumerate(pairs)
        ]
        remote = None
        officer_agents: list[tuple[DeviceAgent, DeviceAgent]] = []
        tasks = []
        if devices_elsewhere:
            remote = await OfficersProcess.start(root, port, specs)
        else:
            officer_agents = [officer_devices(root, port, spec) for spec in specs]
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
            remote=remote,
        )
        # The engine has heard each camera's fix once a draw commands it.
        for _ in specs:
            await world.draw()
        try:
            yield world
        finally:
            if remote is not None:
                await remote.close()
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
            if b"actimesh.runtime.child" in argv:
                found[argv[argv.index(b"actimesh.runtime.child") + 1].decode()] = int(pid)
    return found
