"""The benchmark's motion-scaled fleet: the devices' own rule, the simulator's mixture,
and scene cameras the engine still finds fresh and within the radius."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.bench.loadgen import LoadGenerator
from actimesh.bench.motion import MIXTURE, Activity, MotionFleet
from actimesh.bench.settings import BenchSettings
from actimesh.bench.workload import build_fleet, motion_payload
from actimesh.broker.codec import decode, decode_telemetry_report
from actimesh.broker.messages import DeviceState, Telemetry
from actimesh.devices.reporting import ReportingSettings, TelemetryMode
from actimesh.errors import ConfigError
from actimesh.geofence import InclusionPolicy, Verdict, distance_m
from actimesh.triggers.rules import THIRTY_FEET_M


@given(
    ts=st.floats(min_value=1.0, max_value=4e9),
    lat=st.floats(min_value=-90, max_value=90),
    lon=st.floats(min_value=-180, max_value=180),
    acc=st.floats(min_value=0, max_value=1000),
    hb=st.floats(min_value=0.5, max_value=300),
    db=st.floats(min_value=0, max_value=100),
    spd=st.floats(min_value=0, max_value=150),
)
def test_packed_motion_report_is_a_valid_telemetry_payload_with_its_promise(
    ts: float, lat: float, lon: float, acc: float, hb: float, db: float, spd: float
) -> None:
    payload = motion_payload(ts, lat, lon, acc, 87.0, hb=hb, db=db, spd=spd)
    msg = decode(Telemetry, payload)
    assert (msg.ts, msg.lat, msg.lon, msg.acc, msg.hb, msg.db, msg.spd) == (
        ts,
        lat,
        lon,
        acc,
        hb,
        db,
        spd,
    )
    assert decode_telemetry_report(payload) == (
        ts,
        DeviceState.BUFFERING,
        lat,
        lon,
        acc,
        (hb, db, spd),
    )


def test_the_fleet_is_drawn_in_the_simulators_mixture() -> None:
    fleet = build_fleet(20_000, 6)
    shares = MotionFleet(fleet, 6, 0.0).shares()
    for activity, share in MIXTURE:
        assert shares[str(activity)] == pytest.approx(share, abs=0.015), activity
    assert math.fsum(share for _, share in MIXTURE) == pytest.approx(1.0)


def test_the_same_fleet_and_seed_schedule_the_same_reports() -> None:
    fleet = build_fleet(500, 3)
    a = MotionFleet(fleet, 3, 0.0).schedule(500.0, 20.0)
    b = MotionFleet(fleet, 3, 0.0).schedule(500.0, 20.0)
    assert (a.epoch, a.device, a.lat, a.db, a.spd) == (b.epoch, b.device, b.lat, b.db, b.spd)
    assert list(a.epoch) == sorted(a.epoch)  # the stream sends them in order
    assert all(d == e % len(fleet) for d, e in zip(a.device, a.epoch, strict=True))


def test_every_device_reports_at_least_every_heartbeat_and_standing_ones_little_more() -> None:
    fleet = build_fleet(2_000, 6)
    motion = MotionFleet(fleet, 6, 0.0)
    hb = motion.heartbeat_s
    seconds = 90.0
    sched = motion.schedule(len(fleet), seconds)
    times: dict[int, list[float]] = {}
    for e, i in zip(sched.epoch, sched.device, strict=True):
        times.setdefault(i, []).append(e / len(fleet))
    assert len(times) == len(fleet)  # every device's first epoch reports
    for i, ts in times.items():
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        # The heartbeat falls due at the first epoch at least hb after the last report
        # (the engine's grace, 3 s, covers the one epoch it may be late by).
        assert max(gaps) <= hb + 1.0 + 1e-6, (i, max(gaps))
    # The saving comes from devices standing still: they send the heartbeat and the odd
    # GPS wander past the dead-band, drivers nearly every epoch.
    per_activity: Counter[Activity] = Counter()
    devices = Counter(motion.activity)
    for i, ts in times.items():
        per_activity[motion.activity[i]] += len(ts)
    rate = {a: per_activity[a] / (devices[a] * seconds) for a in devices}
    assert rate[Activity.AT_STATION] < 2.0 / hb
    assert rate[Activity.AT_SCENE] < 2.0 / hb
    assert rate[Activity.DRIVING] > 0.5
    assert set(motion.reasons()) >= {"first", "heartbeat", "moved", "speed"}


def test_scene_cameras_stay_fresh_and_within_the_radius_under_the_motion_rule() -> None:
    fleet = build_fleet(1_000, 6)
    motion = MotionFleet(fleet, 6, 0.0)
    rate = float(len(fleet))
    sched = motion.schedule(rate, 60.0)
    scene_of = {slot: fleet.scenes[s] for slot, (s, _, _) in fleet.scene_slots.items()}
    last: dict[int, int] = {}
    policy = InclusionPolicy()
    judged = j = 0
    # A trigger at every scene each half second finds each camera's last report.
    events = range(len(fleet), sched.epochs, len(fleet) // 2)
    for event_epoch in events:
        while j < len(sched) and sched.epoch[j] <= event_epoch:
            if sched.device[j] in scene_of:
                last[sched.device[j]] = j
            j += 1
        assert len(last) == len(scene_of)
        for slot, k in last.items():
            scene = scene_of[slot]
            verdict, _ = policy.judge(
                distance_m=distance_m(sched.lat[k], sched.lon[k], scene.lat, scene.lon),
                radius_m=THIRTY_FEET_M,
                fix_ts=sched.epoch[k] / rate,
                event_ts=event_epoch / rate,
                acc_device=sched.acc[k],
                acc_event=3.0,
                motion=(sched.heartbeat_s, sched.db[k], sched.spd[k]),
            )
            assert verdict is Verdict.WITHIN, (slot, event_epoch)
            assert sched.spd[k] == 0.0  # standing: judged on the fix alone
            judged += 1
    assert judged == len(events) * len(scene_of)


def test_a_fleet_in_1hz_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="motion"):
        MotionFleet(build_fleet(100, 1), 1, 0.0, ReportingSettings(mode=TelemetryMode.FIXED))


def test_bench_settings_refuse_an_unknown_telemetry_mode_and_motion_on_a_cluster() -> None:
    with pytest.raises(ConfigError, match="--telemetry"):
        BenchSettings(telemetry="2hz")
    with pytest.raises(ConfigError, match="--cluster"):
        BenchSettings(telemetry="motion", cluster=True)


class _Capture:
    """A publisher that keeps what it is given; its first send stalls ``stall_s``."""

    def __init__(self, stall_s: float = 0.0) -> None:
        self.payloads: list[bytes] = []
        self.topics: list[str] = []
        self.stall_s = stall_s

    async def send(self, packets: list[bytes], topics: list[str], payloads: list[bytes]) -> None:
        assert len(packets) == len(topics) == len(payloads)
        self.payloads += payloads
        self.topics += topics
        if self.stall_s:
            stall, self.stall_s = self.stall_s, 0.0
            await asyncio.sleep(stall)

    async def close(self) -> None:
        return None


async def test_the_stream_sends_the_scheduled_reports_with_their_promise() -> None:
    fleet = build_fleet(400, 2)
    out = _Capture()
    gen = LoadGenerator(fleet, 2, out, ["bench"])
    rate, seconds = 400.0, 1.5
    prepared = gen.prepare_motion(rate, seconds)
    before = time.time()
    async with asyncio.timeout(10):
        await gen.stream("bench", rate, seconds)
    assert gen.stream_sent == len(out.payloads) > 0
    assert gen.stream_skipped == 0
    # The stream ends before its last tick's epochs: all but at most a tick's worth.
    assert prepared["reports"] - len(out.payloads) <= rate * 0.1
    first: dict[str, float] = {}
    for topic, payload in zip(out.topics, out.payloads, strict=True):
        ts, state, lat, lon, _acc, promise = decode_telemetry_report(payload)
        assert state is DeviceState.BUFFERING
        assert lat is not None
        assert lon is not None
        assert promise is not None
        assert promise[0] == prepared["heartbeat_s"]
        assert ts >= before
        first.setdefault(topic, ts)
    assert len(first) == len(fleet)  # every device's first epoch fell in the stream


async def test_a_schedule_for_another_rate_is_refused() -> None:
    gen = LoadGenerator(build_fleet(100, 2), 2, _Capture(), ["bench"])
    gen.prepare_motion(100.0, 1.0)
    with pytest.raises(ValueError, match="epochs/s"):
        await gen.stream("bench", 200.0, 1.0)


@pytest.mark.parametrize("mode", ["1hz", "motion"])
async def test_a_stalled_stream_skips_1hz_fixes_but_sends_motion_reports_late(mode: str) -> None:
    fleet = build_fleet(400, 2)
    out = _Capture(stall_s=0.4)
    gen = LoadGenerator(fleet, 2, out, ["bench"])
    rate, seconds = 400.0, 1.5
    reports = gen.prepare_motion(rate, seconds)["reports"] if mode == "motion" else None
    async with asyncio.timeout(10):
        await gen.stream("bench", rate, seconds)
    assert gen.stream_lag_s > 0.2
    assert gen.stream_sent == len(out.payloads)
    if reports is None:
        assert gen.stream_skipped > 0.2 * rate  # counted, and not as sent
        assert gen.stream_sent + gen.stream_skipped <= rate * seconds
    else:
        assert gen.stream_skipped == 0
        assert reports - gen.stream_sent <= rate * 0.1  # caught up by the end
        assert len(set(out.topics)) == len(fleet)  # every device's first report went
