"""The slow-down on a real broker: an engine forced to shed telemetry asks devices to
slow down (signed, retained), a camera lengthens its heartbeat and says so in its
telemetry, a trigger still judges its fix exactly, and the request is cleared when the
shedding stops."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest

from actimesh.broker.codec import decode
from actimesh.broker.messages import DeviceKind, SlowDown, activation_id
from actimesh.broker.topics import Topics
from actimesh.devices.reporting import ReportingSettings, TelemetryMode
from actimesh.geofence import InclusionPolicy
from tests.integration.harness import HOST, TEST_SETTINGS, mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration

FT = 0.3048
INSIDE, OUTSIDE = 29.9 * FT, 30.1 * FT
#: Seconds, not tens of them: the camera's own heartbeat is 1.5 s, the engine trusts
#: 2 s (+ 0.5 s grace) unless it asked for slower, and asks for 4 s.
OWN_HB, BASE_TRUST, SLOW_HB, GRACE = 1.5, 2.0, 4.0, 0.5
POLICY = InclusionPolicy(max_fix_age_s=1.0, max_heartbeat_s=BASE_TRUST, heartbeat_grace_s=GRACE)
SETTINGS = replace(
    TEST_SETTINGS,
    slowdown_heartbeat_s=SLOW_HB,
    slowdown_shed_per_s=50.0,
    slowdown_calm_per_s=1.0,
    slowdown_window_s=0.5,
    slowdown_hold_s=1.0,
    slowdown_ttl_s=6.0,
)
MOTION = ReportingSettings(mode=TelemetryMode.MOTION, heartbeat_s=OWN_HB)


async def _retained(port: int, topics: Topics) -> SlowDown:
    """What a device connecting now finds retained on the slow-down topic."""
    async with aiomqtt.Client(HOST, port) as client:
        await client.subscribe(topics.slowdown(), qos=1)
        async for message in client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            return decode(SlowDown, payload)
    raise AssertionError("no message")


@pytest.mark.time_limit(40)
async def test_an_overloaded_engine_slows_a_camera_and_still_judges_its_fix(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, policy=POLICY, settings=SETTINGS) as m:
        m.add("cew", DeviceKind.CEW, at=0.0)
        m.add("cam-in", DeviceKind.BODY_CAM, at=INSIDE, reporting=MOTION, speed=0.0)
        m.add("cam-out", DeviceKind.BODY_CAM, at=OUTSIDE, bearing=180, reporting=MOTION, speed=0.0)
        await m.ready()
        engine = m.engine
        assert engine is not None
        cam = m.agents["cam-in"]

        def announced(device_id: str) -> float | None:
            info = engine.fleet.get(device_id)
            return None if info is None or info.motion is None else info.motion[0]

        assert announced("cam-in") == OWN_HB
        # Forced overload: the telemetry reader "sheds" 1,000 positions a second.
        shed = itertools.count()
        engine.slowdown.shed = lambda: int(time.monotonic() * 1000) + next(shed)
        await eventually(lambda: announced("cam-in") == SLOW_HB, timeout=10.0, every=0.05)
        await eventually(lambda: announced("cam-out") == SLOW_HB, timeout=5.0, every=0.05)

        def asking() -> bool:
            return engine.stats.slowdown_active

        assert asking()
        assert cam.slowdown.heartbeat_s(time.time()) == SLOW_HB
        retained = await _retained(broker_port, m.topics)
        assert retained.hb == SLOW_HB
        assert retained.exp <= time.time() + SETTINGS.slowdown_ttl_s

        def fix_age(device_id: str) -> float:
            fix = engine.index.get(device_id)
            return float("inf") if fix is None else time.time() - fix.ts

        # The cameras' last reports are older than the engine would trust without the
        # slow-down (2 s + 0.5 s), and within the 4 s + 0.5 s they now promise.
        limit = BASE_TRUST + GRACE
        await eventually(
            lambda: (
                limit + 0.2 < fix_age("cam-in") < SLOW_HB - 0.5
                and limit + 0.2 < fix_age("cam-out") < SLOW_HB - 0.5
            ),
            timeout=10.0,
            every=0.02,
        )
        event = await m.agents["cew"].raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        assert await m.commanded(aid, {"cam-in"}) == {"cam-in"}
        assert engine.ledger is not None
        found = await engine.ledger.activation(aid)
        assert found is not None
        decisions = {d.device_id: (d.commanded, d.reason) for d in found[1]}
        assert decisions["cam-out"] == (False, "too_far")  # fresh, and 30.1 ft is out
        assert decisions["cam-in"][0] is True

        # Load falls: the engine clears the request, and the cameras speed up again.
        engine.slowdown.shed = lambda: 0
        await eventually(lambda: announced("cam-in") == OWN_HB, timeout=10.0, every=0.05)
        assert not asking()
        assert cam.slowdown.heartbeat_s(time.time()) is None
        cleared = await _retained(broker_port, m.topics)
        assert cleared.hb is None
        assert cleared.seq > retained.seq
        assert sum(cam.slowdown.refused.values()) == 0
