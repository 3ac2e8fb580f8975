from __future__ import annotations

import math

import pytest
from geopy.distance import geodesic
from hypothesis import given, settings
from hypothesis import strategies as st

from actimesh.geofence import destination, distance_m, to_ecef
from actimesh.geofence.geodesy import WGS84_A, WGS84_B, wrap_lon

from .strategies import nearby, points


def reference_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(geodesic(a, b).meters)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), origin=points)
def test_distance_agrees_with_wgs84_geodesic_within_a_centimetre_up_to_100_m(
    data: st.DataObject, origin: tuple[float, float]
) -> None:
    other = data.draw(nearby(origin, 100.0))
    assert distance_m(*origin, *other) == pytest.approx(reference_m(origin, other), abs=0.01)


@pytest.mark.parametrize(
    ("a", "b", "expected_m"),
    [
        pytest.param((0.0, 0.0), (0.0, 0.0001), 11.131949, id="equator"),
        pytest.param((78.22, 15.65), (78.22, 15.6501), 2.279961, id="longyearbyen-78N"),
        pytest.param((90.0, 0.0), (89.9999, 45.0), 11.169398, id="north-pole"),
        pytest.param((-90.0, 120.0), (-89.99995, -60.0), 5.584699, id="south-pole"),
        pytest.param((-16.8, 179.9999), (-16.8, -179.9999), 21.319626, id="taveuni-antimeridian"),
    ],
)
def test_distance_at_known_places(
    a: tuple[float, float], b: tuple[float, float], expected_m: float
) -> None:
    assert distance_m(*a, *b) == pytest.approx(reference_m(a, b), abs=1e-6)
    assert distance_m(*a, *b) == pytest.approx(expected_m, abs=1e-3)
    assert distance_m(*b, *a) == distance_m(*a, *b)


def test_pole_is_one_point_whatever_the_longitude() -> None:
    assert distance_m(90.0, -180.0, 90.0, 37.0) < 1e-9
    assert distance_m(-90.0, 0.0, -90.0, 179.0) < 1e-9


def test_ecef_lands_on_the_ellipsoid() -> None:
    assert to_ecef(0.0, 0.0) == pytest.approx((WGS84_A, 0.0, 0.0))
    assert to_ecef(0.0, 90.0) == pytest.approx((0.0, WGS84_A, 0.0), abs=1e-6)
    assert to_ecef(90.0, 0.0) == pytest.approx((0.0, 0.0, WGS84_B), abs=1e-6)
    assert to_ecef(-90.0, 0.0) == pytest.approx((0.0, 0.0, -WGS84_B), abs=1e-6)


@pytest.mark.parametrize("bearing", [0.0, 90.0, 180.0, 270.0, 33.3])
@pytest.mark.parametrize(
    "origin",
    [(41.7637, -72.6851), (78.22, 15.65), (90.0, 0.0), (-90.0, 0.0), (-16.8, 179.99995)],
)
def test_destination_is_at_the_requested_distance(
    origin: tuple[float, float], bearing: float
) -> None:
    lat, lon = destination(*origin, bearing, 9.144)
    assert -90.0 <= lat <= 90.0
    assert -180.0 <= lon <= 180.0
    assert distance_m(*origin, lat, lon) == pytest.approx(9.144, abs=1e-6)


def test_destination_wraps_longitude_across_the_antimeridian() -> None:
    east_lat, east_lon = destination(-16.8, 179.99995, 90.0, 50.0)
    west_lat, west_lon = destination(-16.8, -179.99995, 270.0, 50.0)
    assert -180.0 <= east_lon < -179.9
    assert 179.9 < west_lon <= 180.0
    assert math.isclose(east_lat, -16.8, abs_tol=1e-5)
    assert math.isclose(west_lat, -16.8, abs_tol=1e-5)


@pytest.mark.parametrize(
    ("lon", "wrapped"),
    [
        (180.0, 180.0),
        (-180.0, -180.0),
        (0.5, 0.5),
        (180.25, -179.75),
        (-180.25, 179.75),
        (540.0, -180.0),
    ],
)
def test_wrap_lon_brings_longitude_into_range(lon: float, wrapped: float) -> None:
    assert wrap_lon(lon) == pytest.approx(wrapped)
