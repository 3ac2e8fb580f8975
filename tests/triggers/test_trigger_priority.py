"""Triggers first: a telemetry batch waits while a trigger is being handled, boundedly.

On the in-process bus, a trigger whose handling is held at an await (as a ledger
lookup or the persister's back-pressure hold it) must not have telemetry batches run
in front of it; and a handler stuck for good must not stop the positions either.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from actimesh.broker.codec import encode
from actimesh.broker.intake import Delivery
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import DeviceKind, DeviceState, Event, Telemetry
from actimesh.triggers import intake as intake_module
from actimesh.triggers.engine import Engine
from tests.triggers.test_engine_on_memory_bus import LAT, LON, TOPICS, announce, running
from tests.waiting import eventually


def _hold_control(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold every control message at an await until ``release``; ``held`` once one is."""
    held, release = asyncio.Event(), asyncio.Event()
    real = engine.intake.handle

    async def handle(delivery: Delivery, partition: int | None = None) -> None:
        held.set()
        await release.wait()
        await real(delivery, partition)

    monkeypatch.setattr(engine.intake, "handle", handle)
    return held, release


async def _trigger_and_fix(bus: MemoryBus) -> tuple[asyncio.Task[int], asyncio.Task[int]]:
    draw = Event(eid="e1", type="taser_draw", ts=time.time(), lat=LAT, lon=LON, acc=3.0)
    event = asyncio.create_task(bus.deliver(TOPICS.event("cew1"), encode(draw)))
    fix = Telemetry(ts=time.time(), state=DeviceState.BUFFERING, lat=LAT, lon=LON, acc=3.0)
    telemetry = asyncio.create_task(bus.deliver(TOPICS.telemetry("bwc-1"), encode(fix)))
    return event, telemetry


async def test_telemetry_waits_while_a_trigger_is_handled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_module, "_YIELD_MAX_S", 30.0)
    async with running(tmp_path) as (engine, bus, wire, _signer):
        await announce(bus, "cew1", DeviceKind.CEW, LAT, LON)
        await announce(bus, "bwc-1", DeviceKind.BODY_CAM, LAT, LON)
        stats = engine.stats
        indexed = stats.telemetry
        held, release = _hold_control(engine, monkeypatch)
        event, telemetry = await _trigger_and_fix(bus)
        async with asyncio.timeout(10):
            await held.wait()
        await eventually(lambda: stats.telemetry_deferred == 1)
        assert stats.telemetry == indexed  # the fix waits behind the trigger
        release.set()
        async with asyncio.timeout(10):
            assert await event == 1
            assert await telemetry == 1
        assert stats.telemetry == indexed + 1
        assert wire.on(TOPICS.command("bwc-1"))


async def test_a_stuck_trigger_handler_holds_telemetry_only_briefly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path) as (engine, bus, _wire, _signer):
        await announce(bus, "cew1", DeviceKind.CEW, LAT, LON)
        await announce(bus, "bwc-1", DeviceKind.BODY_CAM, LAT, LON)
        stats = engine.stats
        indexed = stats.telemetry
        held, release = _hold_control(engine, monkeypatch)
        event, telemetry = await _trigger_and_fix(bus)
        async with asyncio.timeout(10):
            await held.wait()
            assert await telemetry == 1  # while the trigger is still held
        assert stats.telemetry == indexed + 1
        assert stats.telemetry_deferred == 1
        release.set()
        async with asyncio.timeout(10):
            assert await event == 1
