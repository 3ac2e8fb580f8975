"""WGS-84 geodesy for short distances: Earth-centred coordinates and the chord distance.

The mesh only ever asks "how far apart are two points that are at most a few tens of
metres apart?". A degree grid cannot answer that uniformly (a degree of longitude is
111 km at the equator, 23 km at 78 degrees north and nothing at the pole), so everything
here works in Earth-centred, Earth-fixed (ECEF) metres, where distance means the same
thing everywhere on the planet and the 180th meridian does not exist.
"""

from __future__ import annotations

import math

from geopy.distance import geodesic

__all__ = [
    "WGS84_A",
    "WGS84_B",
    "WGS84_E2",
    "WGS84_F",
    "chord_m",
    "destination",
    "distance_m",
    "to_ecef",
    "wrap_lon",
]

#: Semi-major axis (equatorial radius) of the WGS-84 ellipsoid, metres.
WGS84_A = 6_378_137.0
#: Flattening of the WGS-84 ellipsoid.
WGS84_F = 1.0 / 298.257223563
#: Semi-minor axis (polar radius), metres.
WGS84_B = WGS84_A * (1.0 - WGS84_F)
#: First eccentricity squared.
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)


def to_ecef(lat_deg: float, lon_deg: float) -> tuple[float, float, float]:
    """Return the ECEF ``(x, y, z)`` in metres of a point on the WGS-84 ellipsoid.

    The height is 0 (on the ellipsoid): fixes carry no trustworthy altitude, and two
    devices a few metres apart share the same ellipsoid height error anyway.
    """
    lat = math.radians(lat_deg)
    lon = math.radians(lon_deg)
    sin_lat = math.sin(lat)
    cos_lat = math.cos(lat)
    # Prime-vertical radius of curvature at this latitude.
    n = WGS84_A / math.sqrt(1.0 - WGS84_E2 * sin_lat * sin_lat)
    return (
        n * cos_lat * math.cos(lon),
        n * cos_lat * math.sin(lon),
        n * (1.0 - WGS84_E2) * sin_lat,
    )


def chord_m(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Straight-line distance in metres between two ECEF points.

    :func:`distance_m` and the spatial indexes share this one formula so that a distance
    an index reports is bit-for-bit the one :func:`distance_m` would give.
    """
    return math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2])


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in metres between two points on the WGS-84 ellipsoid, as the straight chord.

    The chord between the two ECEF points is shorter than the geodesic arc along the
    surface by about ``d**3 / (24 * R**2)`` for a distance ``d`` on a surface of local
    radius of curvature ``R`` (at least 6,335 km on WGS-84). At ``d = 100 m`` that is
    about 1e-9 m, so for the pairs the mesh compares (a 9.144 m radius plus a few metres
    of margin) the chord agrees with the WGS-84 geodesic to far better than 1 cm; the
    float error of the ECEF coordinates (about 1e-9 m) is of the same order.

    It is also free of the singularities of angle-based formulas: there is no longitude
    wrap-around at the 180th meridian (Taveuni, Fiji, straddles it) and no special case
    at the poles, where every longitude maps to the same ECEF point. Do not use it for
    long distances: at 10 km the chord is already about 1 mm short, at 100 km about 1 m.
    """
    return chord_m(to_ecef(lat1, lon1), to_ecef(lat2, lon2))


def destination(
    lat: float, lon: float, bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """Return ``(lat, lon)`` of the point ``distance_m`` metres from ``(lat, lon)`` along
    the WGS-84 geodesic that starts at ``bearing_deg`` (clockwise from true north).

    The longitude is normalised to [-180, 180]. This calls geopy (Karney's algorithm) and
    is meant for the simulator, the drill and tests, not for the hot paths.
    """
    point = geodesic(meters=distance_m).destination((lat, lon), bearing=bearing_deg)
    # geopy wraps longitudes today; wrap anyway so callers can rely on it whatever geopy does.
    return float(point.latitude), wrap_lon(float(point.longitude))


def wrap_lon(lon_deg: float) -> float:
    """Return ``lon_deg`` brought into [-180, 180]; values already inside are unchanged."""
    if -180.0 <= lon_deg <= 180.0:
        return lon_deg
    return (lon_deg + 180.0) % 360.0 - 180.0
