"""Officers' devices for `up_world`: in the probe's process, or in one of their own.

Each officer has a CEW paired with a body camera, 150 m from the next officer, so a
draw commands that officer's camera and nobody else's. In the field the devices are
not on the engine's host: :class:`OfficersProcess` runs them in a process of their own
(``python -m tests.integration.officers``, driven over stdin and stdout), so a draw is
timed without the engine's process in between (not a test).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from actimesh.broker.messages import DeviceKind, activation_id
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.security.signing import CommandVerifier, engine_key_paths
from tests.integration.harness import CENTER, fixed
from tests.waiting import eventually

AGENCY = "upw"
#: Degrees of latitude between officers: about 150 m.
_APART = 0.00135


@dataclass(frozen=True)
class OfficerSpec:
    """One officer's CEW and camera, with their logins, and their place in the row."""

    cew: str
    cew_password: str
    camera: str
    camera_password: str
    n: int


async def commanded_after(camera: DeviceAgent, aid: str, since: float, timeout: float) -> float:
    """Seconds from ``since`` (wall clock) until ``camera`` received the command of ``aid``."""
    await eventually(lambda: any(r.command.aid == aid for r in camera.received), timeout, 0.002)
    return next(r.received_at for r in camera.received if r.command.aid == aid) - since


def officer_devices(root: Path, port: int, spec: OfficerSpec) -> tuple[DeviceAgent, DeviceAgent]:
    """The officer's CEW and camera, not yet running."""
    at = (CENTER[0] + spec.n * _APART, CENTER[1])
    cew = _agent(
        root, spec.cew, DeviceKind.CEW, spec.cew_password, port, at=at, paired=(spec.camera,)
    )
    return cew, _agent(root, spec.camera, DeviceKind.BODY_CAM, spec.camera_password, port, at=at)


async def draw(officer: tuple[DeviceAgent, DeviceAgent], timeout: float) -> float:
    """A TASER draw; seconds until the officer's camera received the engine's command."""
    cew, camera = officer
    event = await cew.raise_event("taser_draw")
    return await commanded_after(camera, activation_id(cew.device_id, event.eid), event.ts, timeout)


def _agent(
    root: Path,
    device_id: str,
    kind: DeviceKind,
    password: str,
    port: int,
    *,
    at: tuple[float, float],
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


class OfficersProcess:
    """The officers' devices in a child process: ``draw()`` asks it for one draw, each
    officer in turn, and gets back the seconds it took."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def start(cls, root: Path, port: int, specs: list[OfficerSpec]) -> OfficersProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.officers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        officers = cls(proc)
        spec = {"root": str(root), "port": port, "officers": [asdict(s) for s in specs]}
        assert await officers._ask(json.dumps(spec), 60) == "ready"
        return officers

    async def draw(self, timeout: float = 30.0) -> float:
        return float(await self._ask(f"draw {timeout}", timeout + 5))

    async def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        async with asyncio.timeout(10):
            await self._proc.wait()

    async def _ask(self, line: str, timeout: float) -> str:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write(line.encode() + b"\n")
        await self._proc.stdin.drain()
        async with asyncio.timeout(timeout):
            answer = (await self._proc.stdout.readline()).decode().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"the officers' process failed: {answer or 'it exited'}")
        return answer


async def _serve() -> None:
    loop = asyncio.get_running_loop()

    async def line() -> str:
        return await loop.run_in_executor(None, sys.stdin.readline)

    spec = json.loads(await line())
    root, port = Path(spec["root"]), int(spec["port"])
    officers = [officer_devices(root, port, OfficerSpec(**o)) for o in spec["officers"]]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(a.run(), name=a.device_id) for pair in officers for a in pair]
        for pair in officers:
            for agent in pair:
                await agent.link.wait_connected(timeout=30)
        print("ready", flush=True)  # noqa: T201 - the protocol with OfficersProcess
        turn = 0
        while request := (await line()).split():
            try:
                took = await draw(officers[turn % len(officers)], float(request[1]))
            except TimeoutError as exc:
                print(f"error {exc}", flush=True)  # noqa: T201
                continue
            turn += 1
            print(took, flush=True)  # noqa: T201
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    asyncio.run(_serve())
