"""Motion-scaled telemetry on the device: what is sent when, and what the wire says."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import DeviceKind, DeviceState, Telemetry
from actimesh.broker.topics import Topics
from actimesh.devices import MotionReporter, ReportingSettings, TelemetryMode
from actimesh.devices.agent import DeviceAgent, Position
from actimesh.geofence import destination

T0 = 1_800_000_000.0
HOME = (51.0447, -114.0719)
R = 9.144
MOTION = ReportingSettings(mode=TelemetryMode.MOTION)


def at(metres: float, *, acc: float | None = 3.0, speed: float | None = 0.0) -> Position:
    lat, lon = destination(*HOME, 90.0, metres)
    return Position(lat, lon, acc, None, speed)


def run(
    reporter: MotionReporter,
    track: Callable[[int], Position | None],
    seconds: int,
    state: Callable[[int], DeviceState] = lambda _s: DeviceState.BUFFERING,
) -> list[tuple[int, str]]:
    """Ask the reporter each second; return when it reported and why."""
    sent = []
    for s in range(seconds):
        fix = track(s)
        why = reporter.why(T0 + s, state(s), fix)
        if why is not None:
            reporter.sent(T0 + s, state(s), fix, why)
            sent.append((s, why))
    return sent


def test_the_dead_band_is_a_quarter_of_the_radius_widened_by_poor_accuracy_up_to_half() -> None:
    assert MOTION.deadband_m(None) == pytest.approx(R / 4)
    assert MOTION.deadband_m(3.0) == pytest.approx(R / 4)  # 1.5 m of wander < 2.29 m
    assert MOTION.deadband_m(6.0) == pytest.approx(3.0)
    assert MOTION.deadband_m(50.0) == pytest.approx(R / 2)


def test_a_device_standing_still_reports_only_at_its_heartbeat() -> None:
    sent = run(MotionReporter(MOTION), lambda _s: at(0.0), 61)
    assert sent == [(0, "first"), *((s, "heartbeat") for s in range(10, 61, 10))]


def test_a_walking_officer_reports_each_time_the_dead_band_is_crossed() -> None:
    sent = run(MotionReporter(MOTION), lambda s: at(1.4 * s, speed=1.4), 21)
    moved = [s for s, why in sent if why == "moved"]
    # 2.29 m at 1.4 m/s: every second or two, never more than the dead-band apart.
    assert moved == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert all(b - a <= math.ceil(R / 4 / 1.4) for a, b in itertools.pairwise(moved))


def test_a_cruiser_reports_every_second_as_at_1_hz() -> None:
    sent = run(MotionReporter(MOTION), lambda s: at(14.0 * s, speed=14.0), 10)
    assert [s for s, _ in sent] == list(range(10))


def test_state_fix_accuracy_and_speed_changes_are_reported_at_once() -> None:
    reporter = MotionReporter(MOTION)

    def track(s: int) -> Position | None:
        if s == 3:
            return None  # the fix is lost
        if 5 <= s < 7:
            return at(0.0, acc=8.0)  # into a building: 3 m to 8 m
        if s >= 8:
            return at(0.0, speed=1.2)  # starts to walk
        return at(0.0)

    def state(s: int) -> DeviceState:
        return DeviceState.RECORDING if s >= 2 else DeviceState.BUFFERING

    sent = run(reporter, track, 9, state)
    assert sent == [
        (0, "first"),
        (2, "state"),
        (3, "fix"),
        (4, "fix"),
        (5, "accuracy"),
        (7, "accuracy"),
        (8, "speed"),
    ]
    # A small change of accuracy or speed is not worth a message.
    quiet = MotionReporter(MOTION)
    run(quiet, lambda _s: at(0.0), 1)
    assert quiet.why(T0 + 1, DeviceState.BUFFERING, at(0.0, acc=4.5, speed=0.8)) is None


def test_a_report_that_did_not_leave_is_tried_again_next_epoch() -> None:
    reporter = MotionReporter(MOTION)
    run(reporter, lambda _s: at(0.0), 1)
    moved = at(3.0)
    why = reporter.why(T0 + 1, DeviceState.BUFFERING, moved)
    assert why == "moved"
    reporter.sent(T0 + 1, DeviceState.BUFFERING, moved, why)
    assert reporter.why(T0 + 2, DeviceState.BUFFERING, moved) is None
    reporter.unsent()
    assert reporter.why(T0 + 2, DeviceState.BUFFERING, moved) == "moved"


def test_1_hz_mode_reports_every_epoch() -> None:
    sent = run(MotionReporter(ReportingSettings()), lambda _s: at(0.0), 5)
    assert sent == [(s, "epoch") for s in range(5)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sometimes"}, "telemetry mode must be '1hz' or 'motion'"),
        ({"heartbeat_s": 0.0}, "heartbeat_s"),
        ({"heartbeat_s": 301.0}, "heartbeat_s"),
        ({"radius_m": -1.0}, "radius_m"),
        ({"deadband_fraction": math.nan}, "deadband_fraction"),
        ({"deadband_max_fraction": 0.1}, "deadband_max_fraction"),
        ({"acc_change_m": -1.0}, "acc_change_m"),
        ({"speed_change_mps": math.inf}, "speed_change_mps"),
    ],
)
def test_invalid_settings_say_which_and_why(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReportingSettings(**kwargs)  # type: ignore[arg-type]  # the bad values are the point


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def agent(reporting: ReportingSettings, clock: Clock, where: list[Position]) -> DeviceAgent:
    return DeviceAgent(
        topics=Topics("am-report"),
        device_id="gw1",
        kind=DeviceKind.GATEWAY,
        broker_host="127.0.0.1",
        broker_port=1,
        position=lambda: where[-1],
        reporting=reporting,
        clock=clock,
    )


def test_the_agent_sends_hb_db_and_spd_in_motion_mode_and_counts_quiet_epochs() -> None:
    clock, where = Clock(), [at(0.0, acc=6.0, speed=0.0)]
    device = agent(MOTION, clock, where)
    first = device.due_telemetry()
    assert first is not None
    wire = decode(Telemetry, encode(first))
    assert (wire.hb, wire.spd) == (10.0, 0.0)
    assert wire.db == pytest.approx(3.0)
    clock.now += 1.0
    assert device.due_telemetry() is None
    assert device.stats.telemetry_skipped == 1
    where.append(at(3.5, acc=6.0, speed=3.5))
    clock.now += 1.0
    moved = device.due_telemetry()
    assert moved is not None
    assert moved.spd == 3.5
    assert device.reporter.reasons == {"first": 1, "moved": 1}
    # Asked outright (e.g. on connecting), it sends whether due or not.
    assert device.telemetry().hb == 10.0


def test_the_agent_at_1_hz_sends_what_older_engines_know() -> None:
    device = agent(ReportingSettings(), Clock(), [at(0.0, speed=2.0)])
    message = device.due_telemetry()
    assert message is not None
    assert (message.hb, message.db, message.spd) == (None, None, None)
    assert set(message.model_dump(exclude_none=True)) == {"v", "ts", "state", "lat", "lon", "acc"}
