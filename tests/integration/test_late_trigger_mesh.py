"""A trigger that reaches the engine after the cameras' telemetry has moved on, on a real
broker: a camera whose telemetry paused across the event and resumed within 30 ft is
commanded (judged between its fixes on either side of the event), one that resumed
30 m away is not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actimesh.broker.messages import DeviceKind, activation_id
from actimesh.geofence import InclusionMode, InclusionPolicy, destination
from tests.integration.harness import CENTER, fixed, mesh
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(60)]

FT = 0.3048


@pytest.mark.parametrize("mode", [InclusionMode.INCLUSIVE, InclusionMode.CENTRE])
async def test_a_camera_whose_telemetry_paused_across_a_late_trigger_is_judged_by_its_fixes(
    agency: str, broker_port: int, tmp_path: Path, mode: InclusionMode
) -> None:
    # A freshness limit of 1 s so that seconds, not tens of them, make a fix stale.
    policy = InclusionPolicy(mode=mode, max_fix_age_s=1.0)
    async with mesh(agency, broker_port, tmp_path, policy=policy) as m:
        cew = m.add("cew", DeviceKind.CEW, at=0.0)
        m.add("resumes-near", DeviceKind.BODY_CAM, at=29.9 * FT, bearing=90.0)
        far = m.add("resumes-far", DeviceKind.BODY_CAM, at=29.9 * FT, bearing=270.0)
        await m.ready()
        engine = m.engine
        assert engine is not None
        # Everyone loses the network; the cameras come back first (as telemetry does
        # while a cluster still elects the leader of the trigger store), and one of
        # them 30 m away. The CEW's trigger, raised meanwhile, arrives after them.
        cameras = [m.agents["resumes-near"], far]
        for camera in cameras:
            camera.disconnect_for(3.0)
        # One walks away during the outage: 30 m off by the time of the event.
        far.position = fixed(*destination(*CENTER, 270.0, 30.0))
        cew.disconnect_for(6.0)

        def last_fix_age(device_id: str) -> float:
            fix = engine.index.get(device_id)
            return 0.0 if fix is None else time.time() - fix.ts

        # The event comes once neither camera's last fix is fresh for it any more.
        await eventually(
            lambda: (
                not cew.link.connected
                and min(last_fix_age(c.device_id) for c in cameras) > 1.3 * policy.max_fix_age_s
            ),
            timeout=5.0,
            every=0.01,
        )
        event = await cew.raise_event("taser_draw")  # during the outage: sent after it

        def resumed() -> bool:
            fixes = [engine.index.get(d) for d in ("resumes-near", "resumes-far")]
            return all(f is not None and f.ts > event.ts + 2 * policy.max_fix_age_s for f in fixes)

        await eventually(resumed, timeout=10.0, every=0.02)
        aid = activation_id("cew", event.eid)
        got = await m.commanded(aid, {"resumes-near"}, quiet_s=1.0)
        assert got == {"resumes-near"}
        assert engine.ledger is not None
        found = await engine.ledger.activation(aid)
        assert found is not None
        _row, decisions = found
        reasons = {d.device_id: (d.commanded, d.reason) for d in decisions}
        # Its latest fix alone was stale; the fixes on either side put it within 30 ft.
        assert reasons["resumes-near"] == (True, "proximity_between")
        assert "resumes-far" not in reasons  # 30 m away now: outside the decision band
        (near,) = [d for d in decisions if d.device_id == "resumes-near"]
        assert near.fix_age_s is not None
        assert near.distance_m == pytest.approx(29.9 * FT, abs=1e-3)
