"""GridIndex storage: late fixes, ids the cells cannot hold, and nothing for the GC."""

from __future__ import annotations

import gc

import pytest

from actimesh.geofence import GridIndex, LinearIndex, SpatialIndex, destination

HARTFORD = (41.7658, -72.6734)


@pytest.mark.parametrize("factory", [GridIndex, LinearIndex], ids=["grid", "linear"])
def test_upsert_latest_ignores_a_fix_older_than_the_indexed_one(
    factory: type[GridIndex] | type[LinearIndex],
) -> None:
    index: SpatialIndex = factory()
    assert index.upsert_latest("bwc-1", *HARTFORD, 3.0, 100.0)
    later = destination(*HARTFORD, 90.0, 50.0)
    assert not index.upsert_latest("bwc-1", *later, 3.0, 99.0)
    fix = index.get("bwc-1")
    assert fix is not None
    assert (fix.lat, fix.lon, fix.ts) == (*HARTFORD, 100.0)
    assert index.upsert_latest("bwc-1", *later, None, 100.0)  # same time: newer wins
    fix = index.get("bwc-1")
    assert fix is not None
    assert fix.acc is None
    assert fix.lat == later[0]


def test_many_devices_in_one_cell_come_and_go() -> None:
    grid = GridIndex()
    for i in range(5):
        grid.upsert(f"bwc-{i}", *HARTFORD, 1.0, 1.0)
    assert grid.cell_count == 1
    assert sorted(f.device_id for f, _ in grid.within(*HARTFORD, 1.0)) == [
        f"bwc-{i}" for i in range(5)
    ]
    grid.remove("bwc-2")
    grid.upsert("bwc-3", *destination(*HARTFORD, 0.0, 100.0), 1.0, 2.0)
    assert sorted(f.device_id for f, _ in grid.within(*HARTFORD, 1.0)) == [
        "bwc-0",
        "bwc-1",
        "bwc-4",
    ]
    assert grid.cell_count == 2


def test_an_id_with_nul_is_refused_and_changes_nothing() -> None:
    grid = GridIndex()
    with pytest.raises(ValueError, match="NUL"):
        grid.upsert("a\0b", *HARTFORD, 1.0, 1.0)
    assert len(grid) == 0
    assert grid.cell_count == 0


def test_the_garbage_collector_has_nothing_to_track() -> None:
    grid = GridIndex()
    for i in range(1_000):
        grid.upsert(f"d{i}", *destination(*HARTFORD, i % 360, i), 2.0, float(i))
    # Every row, cell and both tables are atomic values: no pause grows with the fleet.
    assert not gc.is_tracked(grid._rows)
    assert not gc.is_tracked(grid._cells)
