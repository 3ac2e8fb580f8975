"""Storm control with a fake clock: per-device buckets first, a generous global bound
with a reserve for quiet devices, and merging that never swallows a new incident."""

from __future__ import annotations

import pytest

from actimesh.errors import ConfigError
from actimesh.geofence import destination
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.storm import Incident, StormControl, StormLimits, TokenBucket

T0 = 1_800_000_000.0
CENTER = (51.0447, -114.0719)


def admitted(storm: StormControl, device: str, now: float, times: int) -> int:
    """How many of ``times`` events from ``device`` at ``now`` become activations."""
    ok = 0
    for _ in range(times):
        ticket = storm.admit_event(device, now)
        if ticket is not None and storm.admit_activation(ticket, now):
            ok += 1
    return ok


def test_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(5, 0.5, T0)
    assert [bucket.take(T0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(T0 + 1.9)  # 0.95 tokens
    assert bucket.take(T0 + 2.0)
    assert bucket.level(T0 + 1000) == 5  # never above capacity
    bucket.give()
    assert bucket.level(T0 + 1000) == 5


def test_flooding_device_exhausts_only_its_own_bucket() -> None:
    storm = StormControl(StormLimits(device_burst=5, device_rate_per_s=0.5))
    assert admitted(storm, "cew-flood", T0, 50) == 5
    assert storm.admit_event("cew-flood", T0 + 0.5) is None
    # Another officer's CEW at the same instant is untouched by the flood.
    assert admitted(storm, "cew-2", T0 + 0.5, 1) == 1
    # The flooder gets one event every 2 s from now on.
    assert admitted(storm, "cew-flood", T0 + 2.0, 3) == 1


def test_global_bound_stops_busy_devices_but_keeps_a_reserve_for_quiet_ones() -> None:
    limits = StormLimits(
        device_burst=4,
        device_rate_per_s=0.001,
        activations_burst=10,
        activations_per_s=0.001,
        quiet_reserve=3,
    )
    storm = StormControl(limits)
    # Ten devices each within their own limit, together over the global bound.
    made = sum(admitted(storm, f"bad-{n}", T0, 4) for n in range(10))
    # Events from a device whose bucket is at least half full (its first three) are
    # "quiet": they may use the reserve; the others stop at zero.
    assert made == 10 + 3
    assert admitted(storm, "bad-0", T0, 1) == 0
    # The reserve is gone too: now even a quiet device is refused ...
    assert admitted(storm, "officer", T0, 1) == 0
    # ... and refused as a storm, not charged for it: its own bucket is whole again.
    ticket = storm.admit_event("officer", T0)
    assert ticket is not None
    assert ticket.quiet


def test_quiet_device_passes_a_storm_made_of_busy_devices() -> None:
    limits = StormLimits(
        device_burst=10,
        device_rate_per_s=0.001,
        activations_burst=20,
        activations_per_s=0.001,
        quiet_reserve=5,
    )
    storm = StormControl(limits)
    made = admitted(storm, "flood-a", T0, 10) + admitted(storm, "flood-b", T0, 10)
    assert made == 20
    assert admitted(storm, "flood-c", T0, 10) == 5  # 5 quiet ones into the reserve
    storm = StormControl(limits)
    for device in ("flood-a", "flood-b"):
        for _ in range(10):
            ticket = storm.admit_event(device, T0)
            assert ticket is not None
            storm.admit_activation(ticket, T0)
    # Busy devices hit zero; an officer who has raised nothing yet still gets through.
    assert admitted(storm, "flood-a", T0 + 1, 1) == 0
    assert admitted(storm, "officer", T0 + 1, 1) == 1


def test_storm_alert_once_per_device_per_window() -> None:
    storm = StormControl(StormLimits(alert_every_s=60))
    assert storm.should_alert("cew-1", T0)
    assert not storm.should_alert("cew-1", T0 + 59)
    assert storm.should_alert("cew-2", T0 + 59)
    assert storm.should_alert("cew-1", T0 + 60)


def _incident(
    aid: str = "act-1",
    *,
    at: float | None = 0.0,
    cameras: set[str] | None = None,
    ets: float = T0,
    src: str = "cew",
    event_type: str = "taser_draw",
) -> Incident:
    lat = lon = None
    if at is not None:
        lat, lon = destination(*CENTER, 90.0, at)
    return Incident(
        aid, src, event_type, ets, lat, lon, frozenset(cameras or {"bwc-1", "bwc-2"}), T0
    )


def _merge(
    storm: StormControl,
    *,
    at: float | None = 0.0,
    cameras: set[str] | None = None,
    ets: float = T0 + 5,
    src: str = "cew",
    event_type: str = "taser_draw",
    usable: bool = True,
) -> str | None:
    lat = lon = None
    if at is not None:
        lat, lon = destination(*CENTER, 90.0, at)
    found = storm.merge_into(
        src=src,
        event_type=event_type,
        ets=ets,
        lat=lat,
        lon=lon,
        cameras=frozenset(cameras if cameras is not None else {"bwc-1"}),
        usable=lambda _incident: usable,
    )
    return None if found is None else found.aid


def test_repeat_merges_only_when_every_camera_it_needs_is_already_commanded() -> None:
    storm = StormControl(StormLimits(merge_window_s=10, merge_radius_m=30))
    storm.remember(_incident())
    assert _merge(storm) == "act-1"
    assert _merge(storm, cameras={"bwc-1", "bwc-2"}) == "act-1"
    assert _merge(storm, cameras=set()) == "act-1"
    # A real second incident nearby reaches a camera the first did not: activated.
    assert _merge(storm, cameras={"bwc-1", "bwc-3"}) is None


@pytest.mark.parametrize(
    ("change", "merged"),
    [
        ({"ets": T0 + 10}, True),
        ({"ets": T0 + 10.5}, False),  # outside the window
        ({"ets": T0 - 10.5}, False),
        ({"at": 29.0}, True),
        ({"at": 31.0}, False),  # too far
        ({"at": None}, False),  # no position where the incident had one
        ({"src": "cew-other"}, False),  # another device
        ({"event_type": "holster_draw"}, False),  # another trigger type
        ({"usable": False}, False),  # the engine says no (not durable, camera stopped)
    ],
)
def test_merge_conditions(change: dict[str, object], merged: bool) -> None:
    storm = StormControl(StormLimits(merge_window_s=10, merge_radius_m=30))
    storm.remember(_incident())
    result = _merge(storm, **change)  # type: ignore[arg-type]
    assert (result == "act-1") is merged


def test_merge_without_positions_needs_both_without() -> None:
    storm = StormControl()
    storm.remember(_incident(at=None))
    assert _merge(storm, at=None) == "act-1"
    assert _merge(storm, at=0.0) is None


def test_merge_prefers_the_newest_incident_and_can_be_turned_off() -> None:
    storm = StormControl()
    storm.remember(_incident("act-1"))
    storm.remember(_incident("act-2", ets=T0 + 2))
    assert _merge(storm) == "act-2"
    off = StormControl(StormLimits(merge_window_s=0))
    off.remember(_incident())
    assert _merge(off) is None


def test_memory_stays_bounded_with_many_devices() -> None:
    storm = StormControl(max_devices=100)
    for n in range(1000):
        storm.admit_event(f"dev-{n}", T0 + n)
        storm.remember(_incident(f"act-{n}", src=f"dev-{n}"))
        storm.should_alert(f"dev-{n}", T0 + n)
    assert len(storm._devices) <= 100
    assert len(storm._incidents) <= 100
    assert len(storm._alerted) <= 100
    for n in range(20):
        storm.remember(_incident(f"again-{n}"))
    assert len(storm._incidents[("cew", "taser_draw")]) == 8


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device_burst": 0}, "device_burst must be a positive number"),
        ({"device_burst": 0.5}, "must be >= 1"),
        ({"activations_per_s": float("nan")}, "activations_per_s must be a positive number"),
        ({"merge_window_s": -1}, "merge_window_s must be zero or more"),
        ({"storm_alert_s": 0}, "storm_alert_s must be a positive number"),
        ({"dedupe_memory": 1.5}, "dedupe_memory must be a whole number"),
    ],
)
def test_bad_storm_settings_say_what_is_wrong(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineSettings(**changes)  # type: ignore[arg-type]


def test_engine_settings_carry_the_storm_limits() -> None:
    settings = EngineSettings(device_burst=3, merge_window_s=0, quiet_reserve=0, storm_alert_s=5)
    limits = settings.storm_limits()
    assert (limits.device_burst, limits.merge_window_s, limits.alert_every_s) == (3, 0, 5)
    assert limits.quiet_reserve == 0
