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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from actimesh.broker.client import LinkSettings, MqttLink
from actimesh.broker.codec import encode
from actimesh.broker.messages import DeviceState, Telemetry
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.broker.topics import Topics
from actimesh.devices.recorder import RecordingStore
from actimesh.dispatch.settings import DispatchSettings
from actimesh.drills.fault_fleet import EngineProc, Fleet, fire_burst, scene_devices
from actimesh.drills.fault_report import (
    FaultReport,
    FaultResult,
    measure,
    publish,
    settle,
    wait_for_answers,
)
from actimesh.errors import BrokerError
from actimesh.security.acl import SERVICE_ENGINE, AclPolicy
from actimesh.security.provision import prepare_broker, provision_agents
from actimesh.security.registry import SECRETS_DIR, Credentials
from actimesh.security.signing import CommandSigner

__all__ = ["SCENARIOS", "FaultReport", "FaultResult", "run_fault_drill"]

_HOST = "127.0.0.1"
#: The engines' settings. Every trigger must be its own activation, so incident merging
#: (which folds a CEW's repeated draws at one spot into one) is off.
ENGINE_TOML = "[engine]\nmerge_window_s = 0\n"


def _engine(*, port: int, agency: str, data_dir: Path, engine_id: str) -> EngineProc:
    """One ``actimesh engine`` on the managed Mosquitto, logged in as svc-engine (as an
    operator's config would have it), sharing the SQLite ledger of ``data_dir``."""
    config = data_dir / "engine.toml"
    password_file = json.dumps(str(data_dir / SECRETS_DIR / f"{SERVICE_ENGINE}.password"))
    login = f'[broker]\nusername = "{SERVICE_ENGINE}"\npassword_file = {password_file}\n'
    config.write_text(ENGINE_TOML + login)
    args = ["--broker", f"mqtt://{_HOST}:{port}", "--agency", agency]
    args += ["--data-dir", str(data_dir), "--engine-id", engine_id, "--config", str(config)]
    return EngineProc(args, log=data_dir / f"{engine_id}.log")


@dataclass(slots=True)
class _World:
    topics: Topics
    broker: ManagedMosquitto
    engines: list[EngineProc]
    fleet: Fleet
    root: Path
    loadgen: Credentials


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
        _engine(port=port, agency=agency, data_dir=root, engine_id=f"engine-{i + 1}")
        for i in range(replicas)
    ]
    try:
        for engine in engines:
            await engine.start()
        fleet = Fleet()
        for n in range(scenes):
            fleet.add_scene(*scene_devices(n, topics, store, verifier, lambda _k: port))
        await provision_agents(root, fleet.agents)
        await broker.areload()
        loadgen = provisioned.loadgen_login()
        yield _World(topics, broker, engines, fleet, root, loadgen)
    finally:
        for engine in engines:
            await engine.stop()
        await broker.astop()


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
    for i, agent in enumerate(world.fleet.cameras.values()):
        if i % 2 == 0:
            agent.disconnect_for(3.0)


async def _nothing(_world: _World) -> None:
    return None


def _slow_camera(world: _World) -> None:
    next(iter(world.fleet.cameras.values())).commit_delay_s = 2.0


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
        agents = world.fleet.agents
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(a.run(), name=a.device_id) for a in agents]
            load = _background_load(world.topics, world.broker.port, 300, 2.0, world.loadgen)
            tasks.append(tg.create_task(load, name="load"))
            for agent in agents:
                await agent.link.wait_connected(timeout=30)
            await asyncio.sleep(1.5)  # the engine learns every device and position
            burst = await fire_burst(world.fleet, triggers, lambda: fault(world))
            await settle(world.fleet, burst)
            await wait_for_answers(world.fleet, burst, scenario_root / "ledger.sqlite3", agency)
            for task in tasks:
                task.cancel()
        logs = [engine.log for engine in world.engines]
        ledger = scenario_root / "ledger.sqlite3"
        return await measure(world.fleet, burst, name, ledger, agency, logs=logs)


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
    return publish(console, results, root, "actimesh drill --faults")
