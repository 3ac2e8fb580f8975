"""A trigger that reaches the engine late (a cluster electing leaders held it) is judged
against each camera's fixes on either side of its time, not only the latest one."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from actimesh.broker.codec import encode
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import DeviceKind, DeviceState, Event, Presence, Telemetry
from actimesh.geofence import InclusionMode, InclusionPolicy, destination
from actimesh.ledger import SqliteLedger
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.track import TRACK_STEP_S, PastFix, around
from tests.triggers.test_motion_telemetry import FT, LAT, LON, TOPICS, drawn, running

#: The event happened 12 s before the engine hears of it; every camera's latest fix is
#: then 12 s after it (stale alone), and the fix before its telemetry paused 8 s before.
LATE_S, BEFORE_S = 12.0, 8.0


async def fix(bus: MemoryBus, device_id: str, ts: float, dist: float, bearing: float) -> None:
    lat, lon = destination(LAT, LON, bearing, dist)
    telemetry = Telemetry(
        ts=ts, state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=0.0, hb=1.0, db=2.0, spd=0.0
    )
    await bus.deliver(TOPICS.telemetry(device_id), encode(telemetry))


async def online(
    bus: MemoryBus, device_id: str, kind: DeviceKind, now: float, **kw: object
) -> None:
    presence = Presence(online=True, ts=now, device_kind=kind, **kw)  # type: ignore[arg-type]
    await bus.deliver(TOPICS.presence(device_id), encode(presence))


@pytest.mark.parametrize("mode", [InclusionMode.INCLUSIVE, InclusionMode.CENTRE])
async def test_a_late_trigger_commands_a_camera_its_fixes_put_within_30_ft(
    tmp_path: Path, mode: InclusionMode
) -> None:
    async with running(tmp_path, InclusionPolicy(mode=mode)) as (_engine, bus, wire):
        now = time.time()
        event_ts = now - LATE_S
        # The CEW has no GPS: it borrows its officer's camera's position, which is
        # also known only from the fixes on either side of the event.
        await online(bus, "cew1", DeviceKind.CEW, now, paired=("officer",))
        cameras = {"officer": 0.0, "paused-in": 29.9 * FT, "paused-out": 30.1 * FT}
        for n, (device_id, dist) in enumerate(cameras.items()):
            await online(bus, device_id, DeviceKind.BODY_CAM, now)
            await fix(bus, device_id, event_ts - BEFORE_S, dist, 90.0 * n)
            await fix(bus, device_id, now, dist, 90.0 * n)
        # Its telemetry never resumed: nothing says where it was after the event.
        await online(bus, "silent", DeviceKind.BODY_CAM, now)
        await fix(bus, "silent", event_ts - BEFORE_S - 3.0, 3.0, 45.0)
        record = await drawn(bus, wire, Event(eid="e1", type="taser_draw", ts=event_ts))
    assert sorted(c.id for c in record.cameras) == ["officer", "paused-in"]
    assert {c.id: c.reason.value for c in record.left_out} == {
        "paused-out": "too_far",
        "silent": "stale",
    }
    assert record.lat == pytest.approx(LAT)
    assert record.lon == pytest.approx(LON)
    # Still at both ends: judged exactly, in both policies.
    assert {c.id: c.margin for c in record.left_out}["paused-out"] == 0.0
    async with SqliteLedger(tmp_path / "ledger.sqlite3") as ledger:
        found = await ledger.activation(record.aid)
    assert found is not None
    rows = {d.device_id: d for d in found[1]}
    assert rows["paused-in"].reason == "proximity_between"
    # The row's age is that of the nearer of the two fixes.
    assert rows["paused-in"].fix_age_s == pytest.approx(BEFORE_S, abs=0.01)
    assert rows["paused-in"].distance_m == pytest.approx(29.9 * FT, abs=1e-3)
    assert rows["silent"].reason == "stale"


async def test_a_track_keeps_the_last_fix_before_a_gap_and_thins_the_rest(
    tmp_path: Path,
) -> None:
    settings = EngineSettings(warmup_s=0.01, telemetry_burst=100.0)
    async with running(tmp_path, InclusionPolicy(), settings) as (engine, bus, _wire):
        now = time.time()
        await online(bus, "bwc", DeviceKind.BODY_CAM, now)
        # 1 Hz for 30 s, then nothing for 20 s, then 1 Hz again.
        sent = [now - 60.0 + s for s in range(30)] + [now - 10.0 + s for s in range(3)]
        for ts in sent:
            await fix(bus, "bwc", ts, 3.0, 0.0)
        info = engine.fleet.get("bwc")
        assert info is not None
        kept = [f.ts for f in _track(info.track)]
    # Every 12 s, the last fix before the gap and the first after it: not every fix.
    assert kept == pytest.approx([sent[0], sent[12], sent[24], sent[29], sent[30]])


#: A trigger raised while its CEW's node was cut off the network reaches the engine once
#: the CEW's keepalive has noticed and it has sent the event again through another node:
#: 31.5 s late in the cluster drill, while the cameras around it never stopped reporting.
CUT_OFF_LATE_S = 31.5


async def steady(bus: MemoryBus, device_id: str, now: float, at: tuple[float, float]) -> None:
    """Twice a second for the last 75 s, ``at`` being ``(distance, bearing)`` from the
    event at each fix's time (the bearing may turn: a camera moving round it)."""
    for n in range(150):
        ts = now - 75.0 + 0.5 * n
        await fix(bus, device_id, ts, at[0], at[1])


@pytest.mark.parametrize("mode", [InclusionMode.INCLUSIVE, InclusionMode.CENTRE])
async def test_a_trigger_as_late_as_a_cut_off_devices_reconnection_finds_fixes_before_it(
    tmp_path: Path, mode: InclusionMode
) -> None:
    """Cameras that reported twice a second all along: the track must still hold a fix
    before an event 31.5 s old (a 30 s track did not, and left them ``stale``)."""
    settings = EngineSettings(warmup_s=0.01, telemetry_burst=1000.0)
    async with running(tmp_path, InclusionPolicy(mode=mode), settings) as (_engine, bus, wire):
        now = time.time()
        event_ts = now - CUT_OFF_LATE_S
        await online(bus, "cew1", DeviceKind.CEW, now, paired=("officer",))
        cameras = {"officer": 0.0, "still-in": 29.9 * FT, "still-out": 30.1 * FT}
        for n, (device_id, dist) in enumerate(cameras.items()):
            await online(bus, device_id, DeviceKind.BODY_CAM, now)
            await steady(bus, device_id, now, (dist, 90.0 * n))
        record = await drawn(bus, wire, Event(eid="e1", type="taser_draw", ts=event_ts))
    assert sorted(c.id for c in record.cameras) == ["officer", "still-in"]
    assert {c.id: c.reason.value for c in record.left_out} == {"still-out": "too_far"}
    async with SqliteLedger(tmp_path / "ledger.sqlite3") as ledger:
        found = await ledger.activation(record.aid)
    assert found is not None
    rows = {d.device_id: d for d in found[1]}
    assert rows["still-in"].reason == "proximity_between"
    # Judged on a fix before the event, not only on those after it.
    assert rows["still-in"].fix_age_s is not None
    assert abs(rows["still-in"].fix_age_s) <= TRACK_STEP_S / 2


async def test_a_camera_silent_for_over_a_minute_is_judged_between_only_if_it_stood_still(
    tmp_path: Path,
) -> None:
    """Its link lost 100 s around a late trigger: in the same place before and after, it
    is judged there; having moved in between, it is ``stale``, however near its line."""
    settings = EngineSettings(warmup_s=0.01, telemetry_burst=1000.0)
    async with running(tmp_path, InclusionPolicy(), settings) as (_engine, bus, wire):
        now = time.time()
        event_ts = now - 50.0
        await online(bus, "cew1", DeviceKind.CEW, now, paired=("officer",))
        await online(bus, "officer", DeviceKind.BODY_CAM, now)
        await steady(bus, "officer", now, (0.0, 0.0))
        # (distance, bearing) before the gap and after it.
        silent = {
            "still-in": ((29.9 * FT, 90.0), (29.9 * FT, 90.0)),
            "still-out": ((30.1 * FT, 180.0), (30.1 * FT, 180.0)),
            "moved": ((2.0, 270.0), (12.0, 270.0)),  # 7 m from the event at its time
        }
        for device_id, ((d0, b0), (d1, b1)) in silent.items():
            await online(bus, device_id, DeviceKind.BODY_CAM, now)
            for ts in (now - 110.0, now - 105.0, now - 100.0):
                await fix(bus, device_id, ts, d0, b0)
            await fix(bus, device_id, now, d1, b1)
        record = await drawn(bus, wire, Event(eid="e1", type="taser_draw", ts=event_ts))
    assert sorted(c.id for c in record.cameras) == ["officer", "still-in"]
    assert {c.id: c.reason.value for c in record.left_out} == {
        "still-out": "too_far",
        "moved": "stale",
    }


def _track(track: bytes | None) -> list[PastFix]:
    """The fixes of a track, oldest first (each found as the one at or after its time)."""
    out: list[PastFix] = []
    ts = -math.inf
    while True:
        _before, after = around(track, None, ts)
        if after is None:
            return out
        out.append(after)
        ts = math.nextafter(after.ts, math.inf)
