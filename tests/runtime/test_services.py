"""One service per process, as the cluster's systemd units run them: an engine on a real
NATS cluster, the dispatch on its MQTT 3.1.1 listener, the evidence upload API."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from actimesh.broker.nats import NatsCluster
from actimesh.errors import ConfigError
from actimesh.private import write_private
from actimesh.runtime.config import Settings
from actimesh.runtime.services import check_nats_urls, run_dispatch, run_evidence, run_nats_engine
from actimesh.triggers.settings import EngineSettings
from tests.broker.nats_secured import DISPATCH, ENGINE, access_for, password_of
from tests.waiting import eventually

# No "." in it: the server refuses one in an MQTT client id, and the dispatch's carry
# the agency (broker/nats/cluster.py).
AGENCY = "svc-test"

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(60)]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    access = access_for(AGENCY, [])
    async with NatsCluster(tmp_path / "nats", size=3, access=access) as running:
        yield running


def _settings(tmp_path: Path) -> Settings:
    base = Settings(agency=AGENCY, data_dir=tmp_path / "data")
    return replace(
        base,
        engine=EngineSettings(engine_id="engine-7", warmup_s=0.01),
        dispatch=replace(base.dispatch, port=0),
        evidence=replace(base.evidence, port=0),
    )


async def _until_printed(run: Callable[[Console], Coroutine[Any, Any, None]], text: str) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(run(console))
        try:
            await eventually(lambda: text in out.getvalue() or task.done(), timeout=30)
            assert text in out.getvalue(), out.getvalue()
        finally:
            task.cancel()
    return out.getvalue()


def _as(settings: Settings, account: str, tmp_path: Path) -> Settings:
    """``settings`` logging in as ``account``, its password in a file of its own (0600)."""
    path = tmp_path / f"{account}.password"
    write_private(path, password_of(account) + "\n")
    return replace(settings, broker=replace(settings.broker, username=account, password_file=path))


async def test_each_service_runs_on_its_own(cluster: NatsCluster, tmp_path: Path) -> None:
    settings = _as(_settings(tmp_path), ENGINE, tmp_path)
    urls = cluster.nats_urls
    printed = await _until_printed(
        lambda c: run_nats_engine(settings, urls, c), "engine engine-7 on NATS"
    )
    assert urls[0] in printed
    dispatch = _as(settings, DISPATCH, tmp_path)
    dispatch = replace(
        dispatch,
        broker_url=f"mqtt://127.0.0.1:{cluster.nodes[1].mqtt_port}",
        broker=replace(dispatch.broker, mqtt_protocol="3.1.1"),
    )
    printed = await _until_printed(lambda c: run_dispatch(dispatch, c), "dispatch http://")
    assert "feed MQTT 3.1.1" in printed
    assert "user admin, password" in printed  # the first start makes the admin
    await _until_printed(lambda c: run_evidence(settings, c), "evidence http://")


async def test_dispatch_needs_a_broker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --broker"):
        await run_dispatch(_settings(tmp_path), Console(file=io.StringIO()))


async def test_an_engine_on_nats_must_log_in(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"set \[broker\] username and password_file"):
        await run_nats_engine(
            _settings(tmp_path), ["nats://127.0.0.1:4222"], Console(file=io.StringIO())
        )


@pytest.mark.parametrize("bad", ["http://h:4222", "nats://h", "nats://:4222", "h:4222"])
def test_nats_urls_are_checked(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"write nats://HOST:PORT"):
        check_nats_urls([bad])
