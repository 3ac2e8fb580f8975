"""A prompt trigger while a camera's telemetry has paused, on a real broker: the camera's
fix is stale when the trigger is judged, and once its telemetry resumes within 30 ft it
is commanded in a follow-up activation, with the full pre-roll counted back from the
event; one that resumes 30 m away is not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actimesh.broker.messages import AckStatus, DeviceKind, activation_id
from actimesh.devices.agent import DeviceAgent
from actimesh.devices.camera_part import ReceivedCommand
from actimesh.geofence import InclusionPolicy, destination
from tests.integration.harness import CENTER, fixed, mesh
from tests.waiting import eventually, quiet_for

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(60)]

FT = 0.3048


async def test_a_camera_stale_at_a_prompt_trigger_is_commanded_when_its_telemetry_resumes(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    # A freshness limit of 1 s so that seconds, not tens of them, make a fix stale.
    policy = InclusionPolicy(max_fix_age_s=1.0)
    async with mesh(agency, broker_port, tmp_path, policy=policy) as m:
        cew = m.add("cew", DeviceKind.CEW, at=0.0)
        near = m.add("resumes-near", DeviceKind.BODY_CAM, at=29.9 * FT, bearing=90.0)
        far = m.add("resumes-far", DeviceKind.BODY_CAM, at=29.9 * FT, bearing=270.0)
        await m.ready()
        engine = m.engine
        assert engine is not None
        cameras = [near, far]
        for camera in cameras:
            camera.disconnect_for(4.0)
        # One walks away during the outage: 30 m off when its telemetry resumes.
        far.position = fixed(*destination(*CENTER, 270.0, 30.0))

        def last_fix_age(device_id: str) -> float:
            fix = engine.index.get(device_id)
            return 0.0 if fix is None else time.time() - fix.ts

        # The trigger comes promptly, once neither camera's last fix is fresh for it.
        await eventually(
            lambda: min(last_fix_age(c.device_id) for c in cameras) > 1.3 * policy.max_fix_age_s,
            timeout=5.0,
            every=0.01,
        )
        event = await cew.raise_event("taser_draw")
        first = activation_id("cew", event.eid)
        assert engine.ledger is not None
        found = await eventually(lambda: engine.ledger.activation(first), timeout=5.0)
        _row, decisions = found
        assert {d.device_id: d.reason for d in decisions if not d.commanded} == {
            "resumes-near": "stale",
            "resumes-far": "stale",
        }

        def recorded(agent: DeviceAgent) -> list[ReceivedCommand]:
            return [r for r in agent.received if r.command.eid == event.eid]

        (got,) = await eventually(lambda: recorded(near), timeout=15.0)
        follow_up = got.command.aid
        assert follow_up != first
        assert got.command.ets == event.ts
        # The full pre-roll, counted back from the event, though commanded seconds later.
        assert got.result.status is AckStatus.RECORDING
        assert got.result.pre_roll_covered_s == pytest.approx(got.command.pre)
        assert got.command.pre == 30.0
        await eventually(lambda: engine.stats.follow_up_too_far, timeout=10.0)
        await quiet_for(0.5)
        assert recorded(far) == []
        row = await eventually(lambda: engine.ledger.activation(follow_up), timeout=5.0)
        follow_row, follow_decisions = row
        assert follow_row.rule["follows"] == first
        assert [(d.device_id, d.reason) for d in follow_decisions] == [
            ("resumes-near", "proximity_between")
        ]
        assert engine.stats.follow_up_commanded == 1
        assert engine.stats.acks_not_commanded == 0
