"""Fixtures for the dispatch tests: a real dispatch service (uvicorn on a free loopback
port) beside a real engine, devices and Mosquitto (tests/integration/harness.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

from actimesh.broker.codec import encode
from actimesh.broker.messages import DeviceKind, DeviceState, Presence, Telemetry
from actimesh.devices.agent import DeviceAgent
from actimesh.dispatch.service import DispatchService
from actimesh.dispatch.settings import DispatchSettings
from actimesh.geofence import destination
from actimesh.triggers.rules import DEFAULT_RULES
from tests.integration.harness import CENTER, HOST, Mesh

#: Quick enough for tests, the same code paths as the defaults.
FAST = DispatchSettings(
    port=0,
    ack_timeout_s=1.5,
    frame_interval_s=0.1,
    webhook_backoff_initial_s=0.2,
    webhook_backoff_max_s=0.5,
    webhook_timeout_s=2.0,
    webhook_reconcile_s=0.5,
)


@contextlib.asynccontextmanager
async def running_dispatch(
    m: Mesh, root: Path, settings: DispatchSettings = FAST, **changes: Any
) -> AsyncIterator[DispatchService]:
    """A dispatch service on ``m``'s broker and ledger, stopped (cancelled) on exit."""
    service = DispatchService(
        topics=m.topics,
        broker_host=HOST,
        broker_port=m.port,
        settings=replace(settings, **changes),
        data_dir=root,
        ledger_path=root / "ledger.sqlite3",
        max_fix_age_s=10.0,
        event_types=tuple(r.event_type for r in DEFAULT_RULES),
    )
    task = m.tg.create_task(service.run(), name="dispatch")
    m.tasks["dispatch"] = task
    try:
        async with asyncio.timeout(15):
            await service.ready.wait()
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        m.tasks.pop("dispatch", None)


def api(service: DispatchService) -> httpx.AsyncClient:
    """An HTTP client for the service (loopback, no proxies from the environment)."""
    return httpx.AsyncClient(base_url=service.url, timeout=10.0, trust_env=False)


def add(
    m: Mesh,
    device_id: str,
    kind: DeviceKind,
    *,
    unit: str,
    at: float | None = None,
    bearing: float = 0.0,
    paired: tuple[str, ...] = (),
    age: float = 0.0,
) -> DeviceAgent:
    """``Mesh.add`` with a unit (the agent announces it when it connects)."""
    agent = m.add(device_id, kind, at=at, bearing=bearing, paired=paired, age=age)
    agent.unit = unit
    return agent


async def silent_camera(m: Mesh, device_id: str, *, unit: str, at: float, bearing: float) -> None:
    """A body camera that is on the map and gets commands but never answers them."""
    lat, lon = destination(*CENTER, bearing, at)
    presence = Presence(online=True, ts=time.time(), device_kind=DeviceKind.BODY_CAM, unit=unit)
    fix = Telemetry(ts=time.time(), state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=2.0)
    async with m.client() as client:
        await client.publish(m.topics.presence(device_id), encode(presence), qos=1, retain=True)
        await client.publish(m.topics.telemetry(device_id), encode(fix), qos=1)


async def keep_fresh(m: Mesh, device_id: str, *, at: float, bearing: float) -> None:
    """Keep a fake device's fix fresh, as its telemetry would (until cancelled)."""
    lat, lon = destination(*CENTER, bearing, at)
    async with aiomqtt.Client(HOST, m.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        while True:
            fix = Telemetry(ts=time.time(), state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=2.0)
            await client.publish(m.topics.telemetry(device_id), encode(fix), qos=0)
            await asyncio.sleep(0.5)


async def eventually(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(every)
