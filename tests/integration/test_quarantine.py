"""A device that keeps sending refused messages is quarantined; honest traffic never is."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from actimesh.broker.codec import encode
from actimesh.broker.messages import (
    Alert,
    AlertKind,
    DeviceKind,
    DeviceState,
    Event,
    Telemetry,
    activation_id,
)
from actimesh.broker.mosquitto import ManagedMosquitto
from tests.integration.harness import TEST_SETTINGS, collect_alerts, mesh
from tests.waiting import eventually, quiet_for

pytestmark = pytest.mark.time_limit(60)


class FakeQuarantine:
    """Records who the engine asked to disable."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def quarantine(self, device_id: str, reason: str) -> bool:
        self.calls.append((device_id, reason))
        return True


async def test_a_flooding_device_is_quarantined_once_and_others_still_trigger(
    mosquitto: ManagedMosquitto, tmp_path: Path
) -> None:
    settings = replace(TEST_SETTINGS, quarantine_after=100)
    async with mesh("quar", mosquitto.port, tmp_path, settings=settings) as m:
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc-own",))
        m.add("bwc-own", DeviceKind.BODY_CAM, at=0.0)
        m.add("bwc-stolen", DeviceKind.BODY_CAM, at=900.0)
        await m.ready()
        assert m.engine is not None
        fake = FakeQuarantine()
        m.engine.quarantine = fake
        await m.engine.warmed.wait()
        alerts: list[Alert] = []
        async with m.client() as watcher, m.client() as stolen:
            await watcher.subscribe(m.topics.alerts(AlertKind.QUARANTINE.value), qos=1)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(collect_alerts(watcher, alerts), name="alerts")
                # A body camera may not raise TASER draws: every one is refused.
                for i in range(300):
                    draw = Event(eid=f"flood-{i}", type="taser_draw", ts=time.time())
                    await stolen.publish(m.topics.event("bwc-stolen"), encode(draw), qos=0)
                await eventually(lambda: len(alerts) == 1, 10)
                task.cancel()
        assert [d for d, _ in fake.calls] == ["bwc-stolen"]
        assert "100 refused messages" in fake.calls[0][1]
        assert alerts[0].device == "bwc-stolen"
        assert m.engine.stats.quarantined == 1
        # The other officer's trigger is untouched.
        event = await cew.raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        own = m.agents["bwc-own"]
        await eventually(lambda: any(r.command.aid == aid for r in own.received), 10)


async def test_a_telemetry_flood_is_dropped_before_decoding_and_quarantines(
    mosquitto: ManagedMosquitto, tmp_path: Path
) -> None:
    settings = replace(TEST_SETTINGS, quarantine_after=100)
    async with mesh("tmflood", mosquitto.port, tmp_path, settings=settings) as m:
        m.add("bwc-stolen", DeviceKind.BODY_CAM, at=900.0)
        await m.ready()
        engine = m.engine
        assert engine is not None
        fake = FakeQuarantine()
        engine.quarantine = fake
        await engine.warmed.wait()
        async with m.client() as stolen:
            for i in range(1_000):
                await stolen.publish(m.topics.telemetry("bwc-stolen"), _fix(i), qos=0)
        await eventually(lambda: fake.calls, 10)
        assert engine.stats.telemetry_over_rate >= 100
        assert [d for d, _ in fake.calls] == ["bwc-stolen"]
        assert "telemetry over its rate" in fake.calls[0][1]


def _fix(i: int) -> bytes:
    return encode(
        Telemetry(
            ts=time.time(),
            lat=51.05,
            lon=-114.07 + i * 1e-7,
            acc=3.0,
            state=DeviceState.BUFFERING,
        )
    )


async def test_honest_traffic_is_never_quarantined(
    mosquitto: ManagedMosquitto, tmp_path: Path
) -> None:
    """A device re-sending its TASER draw (far faster than a device does: each re-send
    waits 0.3 s or more) and fixes at its rate: nothing refused, nothing quarantined."""
    settings = replace(TEST_SETTINGS, quarantine_after=50)
    async with mesh("honest", mosquitto.port, tmp_path, settings=settings) as m:
        m.add("cew", DeviceKind.CEW, at=0.0)
        m.add("bwc-busy", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        engine = m.engine
        assert engine is not None
        fake = FakeQuarantine()
        engine.quarantine = fake
        await engine.warmed.wait()
        draw = encode(Event(eid="draw-1", type="taser_draw", ts=time.time()))
        async with m.client() as device:
            for _ in range(80):
                await device.publish(m.topics.event("cew"), draw, qos=0)
            for i in range(30):
                await device.publish(m.topics.telemetry("bwc-busy"), _fix(i), qos=0)
                await asyncio.sleep(0.1)
        await eventually(lambda: engine.stats.duplicates >= 79, 20)
        await quiet_for(0.2)  # the quarantine task had its turn
        assert engine.stats.rejected_total == 0
        assert engine.stats.telemetry_over_rate == 0
    assert fake.calls == []
