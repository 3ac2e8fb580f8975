"""The benchmark fleet: deterministic, valid on the wire, and scenes that hold together."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.bench.workload import (
    AREA_HALF_M,
    SCENE_SIZE,
    Movers,
    build_fleet,
    telemetry_payload,
)
from actimesh.broker.codec import decode, decode_telemetry
from actimesh.broker.messages import DeviceKind, DeviceState, Telemetry
from actimesh.geofence import distance_m


def test_fleet_is_the_same_for_the_same_size_and_seed() -> None:
    assert build_fleet(500, 3) == build_fleet(500, 3)


def test_scenes_have_four_cameras_standing_together() -> None:
    fleet = build_fleet(1_000, 6)
    assert len(fleet.scenes) == 50
    movers = Movers(fleet, 6, 0.0)
    index = {d: i for i, d in enumerate(fleet.ids)}
    for scene in fleet.scenes:
        assert len(scene.cameras) == SCENE_SIZE
        assert fleet.kinds[index[scene.cameras[-1]]] is DeviceKind.DASH_CAM
        for camera in scene.cameras:
            lat, lon, _ = movers.step(index[camera], 1.0)
            assert distance_m(lat, lon, scene.lat, scene.lon) < 6.0


def test_too_small_a_fleet_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        build_fleet(7, 1)


@pytest.mark.parametrize("half", [AREA_HALF_M, 4 * AREA_HALF_M])
def test_movers_stay_inside_the_patrol_area(half: float) -> None:
    fleet = build_fleet(200, 1, area_half_m=half)
    movers = Movers(fleet, 1, 0.0)
    for step in range(1, 200):
        for i in range(len(fleet)):
            movers.step(i, step * 5.0)
    assert all(abs(e) <= half for e in movers.east)
    assert all(abs(n) <= half for n in movers.north)
    assert max(abs(e) for e in movers.east) > half / 2  # and they use all of it


def test_a_wider_area_spreads_the_same_scenes_further_apart() -> None:
    city, state = build_fleet(1_000, 6), build_fleet(1_000, 6, area_half_m=4 * AREA_HALF_M)
    assert city.area_half_m == AREA_HALF_M
    assert [s.cameras for s in city.scenes] == [s.cameras for s in state.scenes]
    a, b = city.scenes[0], city.scenes[1]
    c, d = state.scenes[0], state.scenes[1]
    spacing = distance_m(c.lat, c.lon, d.lat, d.lon) / distance_m(a.lat, a.lon, b.lat, b.lon)
    assert spacing == pytest.approx(4.0, rel=0.01)
    with pytest.raises(ValueError, match="at least 2 km"):
        build_fleet(1_000, 6, area_half_m=999.0)


@given(
    ts=st.floats(min_value=1.0, max_value=4e9),
    lat=st.floats(min_value=-90, max_value=90),
    lon=st.floats(min_value=-180, max_value=180),
    acc=st.floats(min_value=0, max_value=1000),
    batt=st.floats(min_value=0, max_value=100),
)
def test_packed_telemetry_is_a_valid_telemetry_payload(
    ts: float, lat: float, lon: float, acc: float, batt: float
) -> None:
    payload = telemetry_payload(ts, lat, lon, acc, batt)
    msg = decode(Telemetry, payload)
    assert (msg.ts, msg.lat, msg.lon, msg.acc, msg.batt) == (ts, lat, lon, acc, batt)
    assert msg.state is DeviceState.BUFFERING
    assert decode_telemetry(payload) == (ts, DeviceState.BUFFERING, lat, lon, acc)


def test_payload_is_small() -> None:
    assert len(telemetry_payload(time.time(), 51.0, -114.0, 4.0, 80.0)) < 100
