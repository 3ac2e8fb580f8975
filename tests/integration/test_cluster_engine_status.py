"""The engine status on a NATS cluster, which has no last will: an engine killed outright
(kill -9) stops renewing its online status, and the dispatch's live state sees it go
stale within the status's ttl; one stopped cleanly says offline itself."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiomqtt
import pytest

from actimesh.broker.client import _no_lost_cancel
from actimesh.broker.codec import decode
from actimesh.broker.messages import EngineStatus
from actimesh.broker.nats import NatsCluster
from actimesh.broker.topics import Topics
from actimesh.dispatch.state import LiveState
from actimesh.private import write_private
from tests.broker.nats_secured import DISPATCH, ENGINE, access_for, password_of
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(60)]

SRC = Path(__file__).parents[2] / "src"
AGENCY = "status.test"
EVERY_S = 0.3  # the engine renews its status this often; the ttl is three times that


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    async with NatsCluster(tmp_path / "nats", size=3, access=access_for(AGENCY, [])) as running:
        yield running


@contextmanager
def engine_process(cluster: NatsCluster, tmp_path: Path, engine_id: str) -> Iterator[int]:
    """``actimesh engine --nats`` as its unit runs it; yields the pid."""
    config = tmp_path / f"{engine_id}.toml"
    password = tmp_path / f"{engine_id}.password"
    write_private(password, password_of(ENGINE) + "\n")
    config.write_text(
        f'agency = "{AGENCY}"\ndata_dir = "{tmp_path / engine_id}"\n'
        f'[engine]\nengine_id = "{engine_id}"\nstatus_every_s = {EVERY_S}\nwarmup_s = 0.01\n'
        f'[broker]\nusername = "{ENGINE}"\npassword_file = "{password}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "actimesh", "engine", "--config", str(config)]
        + [arg for url in cluster.nats_urls for arg in ("--nats", url)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


class Watcher:
    """The dispatch's view of engine statuses, fed over MQTT 3.1.1 from a node."""

    def __init__(self) -> None:
        self.state = LiveState(max_fix_age_s=10.0)
        self.received: dict[str, int] = {}

    def engine(self, engine_id: str) -> dict[str, object]:
        self.state.expire(time.time())
        return self.state.engines.get(engine_id, {})

    async def run(self, port: int) -> None:
        client = aiomqtt.Client(
            "127.0.0.1",
            port,
            username=DISPATCH,
            password=password_of(DISPATCH),
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=10,
        )
        _no_lost_cancel(client)
        prefix = f"{Topics(AGENCY).prefix}/engine/"
        async with client:
            await client.subscribe(f"{prefix}+/status", qos=1)
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                status = decode(EngineStatus, payload)
                self.received[status.engine] = self.received.get(status.engine, 0) + 1
                self.state.engine_status(status.engine, status, time.time())


async def test_a_killed_engine_goes_stale_and_a_stopped_one_says_offline(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    watcher = Watcher()
    async with asyncio.TaskGroup() as tg:
        watching = tg.create_task(watcher.run(cluster.nodes[1].mqtt_port))
        try:
            with engine_process(cluster, tmp_path, "engine-k") as pid:
                # Renewed well within its ttl: online throughout several ttl periods.
                await eventually(lambda: watcher.received.get("engine-k", 0) >= 8, timeout=30)
                engine = watcher.engine("engine-k")
                assert engine["online"] is True
                assert engine["ttl"] == pytest.approx(3 * EVERY_S)
                os.kill(pid, signal.SIGKILL)
                await eventually(lambda: watcher.engine("engine-k")["stale"], timeout=10)
                assert watcher.engine("engine-k")["online"] is False
                assert watcher.state.stats.engines_stale == 1

            with engine_process(cluster, tmp_path, "engine-t") as pid:
                await eventually(lambda: watcher.engine("engine-t").get("online"), timeout=30)
                os.kill(pid, signal.SIGTERM)
                await eventually(lambda: watcher.engine("engine-t")["online"] is False, timeout=10)
                assert watcher.engine("engine-t")["stale"] is False  # it said so itself
        finally:
            watching.cancel()
