"""Motion-scaled devices on a real broker: a still camera that reports only at its
heartbeat stays fresh past the 1 Hz freshness limit, the 30 ft boundary still decides
exactly, and it sends a fraction of a 1 Hz camera's messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actimesh.broker.messages import DeviceKind, activation_id
from actimesh.devices.reporting import ReportingSettings, TelemetryMode
from actimesh.geofence import InclusionMode, InclusionPolicy
from tests.integration.harness import mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration

FT = 0.3048
INSIDE, OUTSIDE = 29.9 * FT, 30.1 * FT
#: A heartbeat of 3 s against a 1 Hz freshness limit of 1 s, so that the test shows
#: the difference in seconds rather than tens of them.
MOTION = ReportingSettings(mode=TelemetryMode.MOTION, heartbeat_s=3.0)


@pytest.mark.parametrize("mode", [InclusionMode.INCLUSIVE, InclusionMode.CENTRE])
async def test_a_still_camera_confirmed_by_its_heartbeat_is_fresh_and_judged_exactly(
    agency: str, broker_port: int, tmp_path: Path, mode: InclusionMode
) -> None:
    policy = InclusionPolicy(max_fix_age_s=1.0, heartbeat_grace_s=1.0, mode=mode)
    async with mesh(agency, broker_port, tmp_path, policy=policy) as m:
        m.add("cew", DeviceKind.CEW, at=0.0)
        for device_id, dist, reporting in [
            ("still-in", INSIDE, MOTION),
            ("still-out", OUTSIDE, MOTION),
            ("hz-in", INSIDE, None),
            ("hz-out", OUTSIDE, None),
        ]:
            bearing = 90.0 * len(m.agents)
            m.add(
                device_id,
                DeviceKind.BODY_CAM,
                at=dist,
                bearing=bearing,
                reporting=reporting,
                speed=0.0,  # standing; a 1 Hz device's speed is not used
            )
        await m.ready()
        engine = m.engine
        assert engine is not None

        def fix_age(device_id: str) -> float:
            fix = engine.index.get(device_id)
            return float("inf") if fix is None else time.time() - fix.ts

        # Both still cameras' last reports older than the 1 Hz limit, not yet overdue.
        await eventually(
            lambda: 1.2 < fix_age("still-in") < 2.5 and 1.2 < fix_age("still-out") < 2.5,
            timeout=10.0,
            every=0.02,
        )
        event = await m.agents["cew"].raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        got = await m.commanded(aid, {"still-in", "hz-in"})
        assert got == {"still-in", "hz-in"}
        assert engine.ledger is not None
        found = await engine.ledger.activation(aid)
        assert found is not None
        _row, decisions = found
        reasons = {d.device_id: (d.commanded, d.reason) for d in decisions}
        assert reasons["still-out"] == (False, "too_far")
        assert reasons["hz-out"] == (False, "too_far")
        assert reasons["still-in"][0] is True
        still_age = next(d.fix_age_s for d in decisions if d.device_id == "still-in")
        assert still_age is not None
        assert still_age > policy.max_fix_age_s

        # Over the same epochs (every 0.2 s), the 1 Hz camera sent each one; the still
        # camera its first report, the change to recording, and none of the rest (its
        # 3 s heartbeat had not come due again).
        still = m.agents["still-in"].stats
        hz = m.agents["hz-in"].stats
        assert hz.telemetry_skipped == 0
        assert still.telemetry_sent <= 3
        assert still.telemetry_skipped > still.telemetry_sent
        assert abs(still.telemetry_sent + still.telemetry_skipped - hz.telemetry_sent) <= 2
