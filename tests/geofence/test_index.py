from __future__ import annotations

import math
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actimesh.geofence import Fix, GridIndex, LinearIndex, SpatialIndex, destination, distance_m

from .strategies import bearings, points

RADIUS_M = 9.144  # 30 ft

HARTFORD = (41.7637, -72.6851)
LONGYEARBYEN = (78.2232, 15.6267)
NORTH_POLE = (90.0, 0.0)
SOUTH_POLE_NEARBY = (-89.99995, 140.0)
TAVEUNI = (-16.8, 179.99999)  # Fiji: the 180th meridian runs across the island

PLACES = [
    pytest.param(HARTFORD, id="hartford"),
    pytest.param(LONGYEARBYEN, id="longyearbyen-78N"),
    pytest.param(NORTH_POLE, id="north-pole"),
    pytest.param(SOUTH_POLE_NEARBY, id="south-pole"),
    pytest.param(TAVEUNI, id="taveuni-antimeridian"),
]


@pytest.fixture(params=[GridIndex, LinearIndex], ids=["grid", "linear"])
def index(request: pytest.FixtureRequest) -> SpatialIndex:
    factory: type[GridIndex] | type[LinearIndex] = request.param
    return factory()


def ids_of(hits: list[tuple[Fix, float]]) -> list[str]:
    return [fix.device_id for fix, _ in hits]


# --- differential: GridIndex against the geopy reference -------------------------------

moves = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=9),  # few ids, so devices move and repeat
        bearings,
        st.floats(min_value=0.0, max_value=40.0),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(
    centre=points,
    # 0.01 m: cell keys wider than 64 bits, stored in 12 bytes of each row.
    cell_size=st.sampled_from([0.01, 0.5, 4.0, 16.0, 64.0]),
    updates=moves,
    removed=st.sets(st.integers(min_value=0, max_value=9), max_size=3),
    query_bearing=bearings,
    query_offset=st.floats(min_value=0.0, max_value=20.0),
    radius=st.floats(min_value=0.0, max_value=30.0),
)
def test_grid_index_finds_exactly_what_the_linear_reference_finds(
    centre: tuple[float, float],
    cell_size: float,
    updates: list[tuple[int, float, float]],
    removed: set[int],
    query_bearing: float,
    query_offset: float,
    radius: float,
) -> None:
    grid, linear = GridIndex(cell_size), LinearIndex()
    for n, (i, bearing, dist) in enumerate(updates):
        lat, lon = destination(*centre, bearing, dist)
        for idx in (grid, linear):
            idx.upsert(f"d{i}", lat, lon, None, float(n))
    for i in removed:
        grid.remove(f"d{i}")
        linear.remove(f"d{i}")
    q = destination(*centre, query_bearing, query_offset)

    got = grid.within(*q, radius)
    want = linear.within(*q, radius)

    assert len(grid) == len(linear)
    assert [d for _, d in got] == sorted(d for _, d in got)
    got_d = {fix.device_id: d for fix, d in got}
    want_d = {fix.device_id: d for fix, d in want}
    for device_id in got_d.keys() & want_d.keys():
        assert got_d[device_id] == pytest.approx(want_d[device_id], abs=0.01)
    for device_id in got_d.keys() ^ want_d.keys():
        # Only a fix a hair's breadth from the boundary may fall on different sides of it.
        fix = grid.get(device_id) or linear.get(device_id)
        assert fix is not None
        assert abs(distance_m(*q, fix.lat, fix.lon) - radius) < 1e-6
    for fix, d in got:
        assert d == distance_m(*q, fix.lat, fix.lon)  # bit for bit
        assert d <= radius


# --- the 30 ft boundary ----------------------------------------------------------------


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("bearing", [0.0, 90.0, 225.0, 270.0])
def test_camera_at_9_0_m_is_within_30_ft_and_9_3_m_is_not(
    index: SpatialIndex, place: tuple[float, float], bearing: float
) -> None:
    index.upsert("inside", *destination(*place, bearing, 9.0), 5.0, 100.0)
    index.upsert("outside", *destination(*place, bearing, 9.3), 5.0, 100.0)
    index.upsert("diagonal-corner", *destination(*place, bearing + 45.0, 12.0), 5.0, 100.0)

    hits = index.within(*place, RADIUS_M)

    assert ids_of(hits) == ["inside"]
    assert hits[0][1] == pytest.approx(9.0, abs=1e-6)


@pytest.mark.parametrize("place", PLACES)
def test_boundary_is_exact_to_the_millimetre(
    index: SpatialIndex, place: tuple[float, float]
) -> None:
    index.upsert("in", *destination(*place, 10.0, RADIUS_M - 0.001), None, 0.0)
    index.upsert("out", *destination(*place, 190.0, RADIUS_M + 0.001), None, 0.0)

    assert ids_of(index.within(*place, RADIUS_M)) == ["in"]


def test_results_are_sorted_by_distance(index: SpatialIndex) -> None:
    for name, dist in [("c", 7.0), ("a", 1.0), ("d", 9.0), ("b", 3.0)]:
        index.upsert(name, *destination(*HARTFORD, 10.0 * dist, dist), None, 0.0)

    assert ids_of(index.within(*HARTFORD, RADIUS_M)) == ["a", "b", "c", "d"]


def test_grid_does_not_return_bounding_box_matches() -> None:
    # Tile38's roaming fences match a bounding square: a point 12.9 m away on the diagonal
    # counts as within 9.144 m there. Here every cell of a 1 m grid near the point is
    # visited, and the exact check must still leave the corner out.
    grid = GridIndex(cell_size_m=1.0)
    grid.upsert("corner", *destination(*HARTFORD, 45.0, 12.9), None, 0.0)

    assert grid.within(*HARTFORD, RADIUS_M) == []
    assert [f.device_id for f in grid.candidates(*HARTFORD, 13.0)] == ["corner"]


# --- updates ---------------------------------------------------------------------------


def test_upsert_moves_device_across_cells() -> None:
    grid = GridIndex(cell_size_m=16.0)
    start = HARTFORD
    end = destination(*start, 90.0, 200.0)
    grid.upsert("bwc-1", *start, 4.0, 100.0)
    grid.upsert("bwc-2", *start, 4.0, 100.0)

    grid.upsert("bwc-1", *end, 3.0, 101.0)

    assert ids_of(grid.within(*start, RADIUS_M)) == ["bwc-2"]
    assert ids_of(grid.within(*end, RADIUS_M)) == ["bwc-1"]
    assert grid.cell_count == 2
    assert len(grid) == 2
    fix = grid.get("bwc-1")
    assert fix is not None
    assert (fix.lat, fix.lon, fix.acc, fix.ts) == (*end, 3.0, 101.0)


@pytest.mark.parametrize("cell_size", [0.01, 16.0, 5_000.0])
def test_a_device_leaves_the_cell_its_row_names_whatever_the_key_width(cell_size: float) -> None:
    grid = GridIndex(cell_size_m=cell_size)
    grid.upsert("bwc-2", *HARTFORD, None, 0.0)
    for step in range(1, 40):  # 0.7 m a step: stays in wide cells, changes narrow ones
        here = destination(*HARTFORD, 45.0, 0.7 * step)
        grid.upsert("bwc-1", *here, None, float(step))
        assert ids_of(grid.within(*here, 0.1)) == ["bwc-1"]
        assert ids_of(grid.within(*HARTFORD, 0.1)) == ["bwc-2"]
        assert 1 <= grid.cell_count <= 2
    assert grid.cell_count == (1 if cell_size > 100.0 else 2)
    grid.remove("bwc-1")
    assert grid.cell_count == 1
    grid.remove("bwc-2")
    assert grid.cell_count == 0


def test_upsert_within_a_cell_replaces_the_fix_and_leaves_no_empty_cells() -> None:
    grid = GridIndex(cell_size_m=16.0)
    for step in range(50):  # walk 1 m a step, so some steps stay and some change cell
        grid.upsert("car-7", *destination(*LONGYEARBYEN, 90.0, float(step)), None, float(step))

    assert len(grid) == 1
    assert grid.cell_count == 1
    assert ids_of(grid.within(*destination(*LONGYEARBYEN, 90.0, 49.0), 0.5)) == ["car-7"]


def test_fix_handed_out_is_a_snapshot(index: SpatialIndex) -> None:
    index.upsert("bwc-1", *HARTFORD, 5.0, 100.0)
    before = index.get("bwc-1")

    index.upsert("bwc-1", *TAVEUNI, 3.0, 200.0)

    assert before is not None
    assert (before.lat, before.lon, before.acc, before.ts) == (*HARTFORD, 5.0, 100.0)


def test_remove_forgets_device_and_tolerates_unknown_ids(index: SpatialIndex) -> None:
    index.upsert("bwc-1", *NORTH_POLE, None, 0.0)
    index.upsert("bwc-2", *NORTH_POLE, None, 0.0)

    index.remove("bwc-1")
    index.remove("bwc-1")
    index.remove("never-seen")

    assert "bwc-1" not in index
    assert "bwc-2" in index
    assert index.get("bwc-1") is None
    assert len(index) == 1
    assert ids_of(index.within(*NORTH_POLE, 1.0)) == ["bwc-2"]


def test_remove_deletes_cells_that_become_empty() -> None:
    grid = GridIndex()
    grid.upsert("a", *HARTFORD, None, 0.0)
    grid.upsert("b", *TAVEUNI, None, 0.0)

    grid.remove("a")
    grid.remove("b")

    assert grid.cell_count == 0
    assert len(grid) == 0


def test_devices_on_both_sides_of_the_antimeridian_find_each_other(index: SpatialIndex) -> None:
    index.upsert("east", -16.8, 179.99996, None, 0.0)  # 4.3 m east of the meridian
    index.upsert("west", -16.8, -179.99996, None, 0.0)  # 4.3 m west of it

    hits = index.within(-16.8, 179.99996, RADIUS_M)

    assert ids_of(hits) == ["east", "west"]
    assert hits[1][1] == pytest.approx(8.53, abs=0.01)


def test_devices_around_the_pole_find_each_other_whatever_their_longitude(
    index: SpatialIndex,
) -> None:
    for n, lon in enumerate([-180.0, -90.0, 0.0, 90.0, 180.0]):
        index.upsert(f"d{n}", 89.99996, lon, None, 0.0)  # each 4.5 m from the pole

    assert len(index.within(89.99996, 0.0, RADIUS_M)) == 5


# --- cost does not grow with the fleet --------------------------------------------------


def city_fleet(grid: GridIndex, n: int, centre: tuple[float, float], seed: int) -> None:
    """``n`` devices spread over a 30 km x 30 km city, none within 100 m of ``centre``."""
    rng = random.Random(seed)
    added = 0
    while added < n:
        lat = centre[0] + rng.uniform(-0.135, 0.135)
        lon = centre[1] + rng.uniform(-0.18, 0.18)
        if distance_m(*centre, lat, lon) > 100.0:
            grid.upsert(f"car-{added}", lat, lon, 5.0, 0.0)
            added += 1


@pytest.mark.parametrize("fleet_size", [1_000, 100_000])
def test_query_examines_only_nearby_cells(fleet_size: int) -> None:
    grid = GridIndex()
    city_fleet(grid, fleet_size, HARTFORD, seed=7)
    for n, dist in enumerate([2.0, 5.0, 8.0]):
        grid.upsert(f"bwc-{n}", *destination(*HARTFORD, 120.0 * n, dist), 4.0, 0.0)

    candidates = grid.candidates(*HARTFORD, RADIUS_M + 6.0)

    # The same three fixes are examined whether 1,000 or 100,000 devices are tracked.
    assert sorted(f.device_id for f in candidates) == ["bwc-0", "bwc-1", "bwc-2"]
    assert ids_of(grid.within(*HARTFORD, RADIUS_M)) == ["bwc-0", "bwc-1", "bwc-2"]
    assert len(grid) == fleet_size + 3


def test_wide_query_scans_occupied_cells_and_stays_exact() -> None:
    grid = GridIndex(cell_size_m=2.0)
    city_fleet(grid, 2_000, HARTFORD, seed=11)

    got = grid.within(*HARTFORD, 5_000.0)

    want = sorted(
        (d, device_id)
        for device_id in (f"car-{n}" for n in range(2_000))
        if (fix := grid.get(device_id)) is not None
        and (d := distance_m(*HARTFORD, fix.lat, fix.lon)) <= 5_000.0
    )
    assert [(d, f.device_id) for f, d in got] == want
    assert 0 < len(got) < 2_000


def test_tracked_device_costs_less_than_1_kb() -> None:
    # Issue #6 budgets 1 KB of resident memory per tracked device. Everything the index
    # keeps is allocated inside the traced window, device ids and floats included.
    n = 10_000
    rng = random.Random(3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        grid = GridIndex()
        for i in range(n):
            lat = HARTFORD[0] + rng.uniform(-0.1, 0.1)
            lon = HARTFORD[1] + rng.uniform(-0.1, 0.1)
            grid.upsert(f"bwc-{i:06d}", lat, lon, rng.uniform(3.0, 10.0), 1.7e9 + i)
        per_device = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()

    assert grid.cell_count > n // 2  # sparse: about one cell per device, the worst case
    assert per_device < 1024


# --- invalid input ---------------------------------------------------------------------


BAD_FIXES = [
    pytest.param(math.nan, 0.0, None, 0.0, id="nan-lat"),
    pytest.param(0.0, math.nan, None, 0.0, id="nan-lon"),
    pytest.param(math.inf, 0.0, None, 0.0, id="inf-lat"),
    pytest.param(0.0, -math.inf, None, 0.0, id="inf-lon"),
    pytest.param(90.0001, 0.0, None, 0.0, id="lat-above-90"),
    pytest.param(-91.0, 0.0, None, 0.0, id="lat-below-90"),
    pytest.param(0.0, 180.5, None, 0.0, id="lon-above-180"),
    pytest.param(0.0, -360.0, None, 0.0, id="lon-below-180"),
    pytest.param(0.0, 0.0, None, math.nan, id="nan-ts"),
    pytest.param(0.0, 0.0, -1.0, 0.0, id="negative-acc"),
    pytest.param(0.0, 0.0, math.nan, 0.0, id="nan-acc"),
]


@pytest.mark.parametrize(("lat", "lon", "acc", "ts"), BAD_FIXES)
def test_invalid_fix_is_rejected_and_leaves_index_unchanged(
    index: SpatialIndex, lat: float, lon: float, acc: float | None, ts: float
) -> None:
    index.upsert("bwc-1", *HARTFORD, 5.0, 100.0)

    with pytest.raises(ValueError, match=r"must be"):
        index.upsert("bwc-1", lat, lon, acc, ts)
    with pytest.raises(ValueError, match=r"must be"):
        index.upsert("bwc-2", lat, lon, acc, ts)

    assert len(index) == 1
    assert "bwc-2" not in index
    fix = index.get("bwc-1")
    assert fix is not None
    assert (fix.lat, fix.lon) == HARTFORD
    assert ids_of(index.within(*HARTFORD, 1.0)) == ["bwc-1"]
    if isinstance(index, GridIndex):
        assert index.cell_count == 1


@pytest.mark.parametrize(
    ("lat", "lon", "radius"),
    [
        pytest.param(math.nan, 0.0, 9.0, id="nan-lat"),
        pytest.param(0.0, 181.0, 9.0, id="lon-out-of-range"),
        pytest.param(0.0, 0.0, -1.0, id="negative-radius"),
        pytest.param(0.0, 0.0, math.nan, id="nan-radius"),
        pytest.param(0.0, 0.0, math.inf, id="inf-radius"),
    ],
)
def test_invalid_query_raises(index: SpatialIndex, lat: float, lon: float, radius: float) -> None:
    with pytest.raises(ValueError, match=r"must be"):
        index.within(lat, lon, radius)


def test_grid_cell_size_is_configurable() -> None:
    assert GridIndex().cell_size_m == 16.0
    assert GridIndex(2.5).cell_size_m == 2.5


@pytest.mark.parametrize("cell_size", [0.0, -16.0, 0.001, math.nan, math.inf])
def test_grid_rejects_unusable_cell_size(cell_size: float) -> None:
    with pytest.raises(ValueError, match=r"cell_size_m must be"):
        GridIndex(cell_size)
