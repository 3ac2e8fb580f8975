"""Hypothesis strategies for points anywhere on Earth, weighted towards the hard places."""

from __future__ import annotations

from hypothesis import strategies as st

from actimesh.geofence import destination

#: Any latitude and longitude, boundaries included.
anywhere = st.tuples(
    st.floats(min_value=-90.0, max_value=90.0),
    st.floats(min_value=-180.0, max_value=180.0),
)

#: Within 0.1 degree (11 km) of either pole, where degree grids collapse.
near_poles = st.tuples(
    st.one_of(
        st.floats(min_value=89.9, max_value=90.0),
        st.floats(min_value=-90.0, max_value=-89.9),
    ),
    st.floats(min_value=-180.0, max_value=180.0),
)

#: Within 0.001 degree of the 180th meridian, on either side of it.
near_antimeridian = st.tuples(
    st.floats(min_value=-89.0, max_value=89.0),
    st.one_of(
        st.floats(min_value=179.999, max_value=180.0),
        st.floats(min_value=-180.0, max_value=-179.999),
    ),
)

points = st.one_of(anywhere, near_poles, near_antimeridian)

bearings = st.floats(min_value=0.0, max_value=360.0, exclude_max=True)


@st.composite
def nearby(
    draw: st.DrawFn, origin: tuple[float, float], max_distance_m: float
) -> tuple[float, float]:
    """A point at most ``max_distance_m`` metres from ``origin`` along a geodesic."""
    bearing = draw(bearings)
    distance = draw(st.floats(min_value=0.0, max_value=max_distance_m))
    return destination(origin[0], origin[1], bearing, distance)
