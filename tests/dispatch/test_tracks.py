"""The dispatch's recent tracks, the registry's names and dispatchers' acknowledgements in
the live state: pure, no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from actimesh.broker.messages import (
    Activation,
    ActivationReason,
    CameraActivation,
    DeviceKind,
    DeviceState,
    Telemetry,
    UnitDuty,
)
from actimesh.dispatch.roster import read_roster
from actimesh.dispatch.state import LiveState
from actimesh.dispatch.tracks import Fix, Tracks
from actimesh.security import Registry

T0 = 1_800_000_000.0


def _fix(ts: float, lat: float = 60.17, state: str = "buffering") -> Fix:
    return Fix(ts, lat, 24.94, 3.0, state)


def test_a_ring_keeps_its_horizon_and_its_count() -> None:
    tracks = Tracks(horizon_s=60.0, max_points=50)
    for n in range(200):
        tracks.add("bwc-1", _fix(T0 + n))
    kept = tracks.between("bwc-1", 0.0, T0 + 1000)
    # At most 50 points, none older than 60 s before the newest.
    assert len(kept) == 50
    assert kept[0].ts == T0 + 150
    assert tracks.dropped == 150  # the count, not the age, dropped them
    tracks.add("bwc-1", _fix(T0 + 100))  # out of order: ignored
    assert tracks.between("bwc-1", 0.0, T0 + 1000)[-1].ts == T0 + 199
    tracks.add("bwc-1", _fix(T0 + 400))  # the next one ages out everything else
    assert [p.ts for p in tracks.between("bwc-1", 0.0, T0 + 1000)] == [T0 + 400]


def test_all_rings_together_keep_to_their_budget() -> None:
    # 100 devices for a budget of 2000 fixes: 20 each, however long they report.
    tracks = Tracks(max_points=900, max_total=2000, min_points=10)
    for n in range(50):
        for d in range(100):
            tracks.add(f"bwc-{d}", _fix(T0 + n))
    assert len(tracks) == 2000
    assert len(tracks.between("bwc-0", 0.0, T0 + 100)) == 20
    assert tracks.between("bwc-99", 0.0, T0 + 100)[-1].ts == T0 + 49


def test_where_a_device_was_at_a_time() -> None:
    tracks = Tracks()
    for n, lat in enumerate((60.0, 60.1, 60.2)):
        tracks.add("bwc-1", _fix(T0 + 10 * n, lat))
    at = tracks.at("bwc-1", T0 + 12, max_age_s=5.0)
    assert at is not None
    assert at.lat == 60.1  # the last fix before the time
    first = tracks.at("bwc-1", T0 - 2, max_age_s=5.0)
    assert first is not None
    assert first.lat == 60.0  # none before: the first after it
    assert tracks.at("bwc-1", T0 + 100, max_age_s=5.0) is None  # too old
    assert tracks.at("nobody", T0, max_age_s=5.0) is None
    # A replay window starts with the fix before it, so the device has a place at once.
    window = tracks.between("bwc-1", T0 + 15, T0 + 20)
    assert [p.lat for p in window] == [60.1, 60.2]


def _telemetry(state: LiveState, ts: float, lat: float, duty: UnitDuty | None = None) -> None:
    msg = Telemetry(ts=ts, state=DeviceState.BUFFERING, lat=lat, lon=24.94, acc=3.0, duty=duty)
    state.telemetry("bwc-1", msg, ts)


def test_a_camera_line_ends_where_the_camera_was_at_the_event() -> None:
    state = LiveState(max_fix_age_s=10.0)
    _telemetry(state, T0 - 1, 60.17)
    _telemetry(state, T0 + 30, 60.18)  # drove off after the event, before the record
    record = Activation(
        aid="act-1",
        eid="e1",
        src="cew-1",
        type="taser_draw",
        ets=T0,
        ts=T0 + 0.01,
        lat=60.17,
        lon=24.94,
        radius=9.144,
        pre=30.0,
        cameras=(
            CameraActivation(
                id="bwc-1", device_kind=DeviceKind.BODY_CAM, reason=ActivationReason.PROXIMITY
            ),
        ),
        excluded=0,
    )
    state.activation(record, T0 + 31)
    camera = state.activations["act-1"].to_json()["cameras"][0]
    assert camera["at"] == [60.17, 24.94]
    assert state.devices["bwc-1"].lat == 60.18


def test_duty_names_and_acknowledgements_reach_the_device_and_incident_views(
    tmp_path: Path,
) -> None:
    with Registry.open(tmp_path) as registry:
        registry.add("bwc-1", DeviceKind.BODY_CAM, unit="u1", call_sign="12A3", officer="Kim")
        registry.add("bwc-2", DeviceKind.BODY_CAM, unit="u2")
    roster = read_roster(tmp_path)
    assert roster == {"bwc-1": ("12A3", "Kim")}
    assert read_roster(tmp_path / "elsewhere") == {}
    state = LiveState(max_fix_age_s=10.0)
    _telemetry(state, T0, 60.17, UnitDuty.EN_ROUTE)
    state.take_delta(T0)
    state.set_roster(roster)
    delta = state.take_delta(T0)
    assert delta is not None
    (device,) = delta["devices"]
    assert (device["call_sign"], device["officer"], device["duty"]) == ("12A3", "Kim", "en_route")
    # An unknown incident or alert is not acknowledged on the map.
    assert not state.acknowledge("act-x", None, "kim", T0)
    assert not state.acknowledge("act-x", "act-x:bwc-1:no_ack", "kim", T0)


@pytest.mark.parametrize("duty", ["available", "en_route", "on_scene"])
def test_telemetry_takes_each_duty_status(duty: str) -> None:
    msg = Telemetry.model_validate({"ts": T0, "state": "buffering", "duty": duty}, strict=False)
    assert msg.duty is not None
    assert msg.duty.value == duty


def test_an_unknown_duty_status_is_refused() -> None:
    with pytest.raises(ValueError, match="duty"):
        Telemetry.model_validate({"ts": T0, "state": "buffering", "duty": "lunch"}, strict=False)
