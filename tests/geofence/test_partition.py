"""Partition cells: every engine agrees on the owner of a point, and the owner of a
trigger's point holds every fix within the halo, at the poles and across the 180th
meridian too."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actimesh.geofence import PartitionMap, destination, distance_m
from tests.geofence.strategies import nearby, points

HALO_M = 9.144 + 6.0  # the default rule's search radius


@settings(max_examples=300, deadline=None)
@given(data=st.data(), event=points, cell_m=st.sampled_from([20.0, 50.0, 2000.0]))
def test_the_owner_of_a_trigger_holds_every_fix_within_the_halo(
    data: st.DataObject, event: tuple[float, float], cell_m: float
) -> None:
    partitions = PartitionMap(4, cell_m=cell_m, halo_m=HALO_M)
    fix = data.draw(nearby(event, HALO_M))
    assert distance_m(*event, *fix) <= HALO_M + 1e-6
    assert partitions.owner(*event) in partitions.partitions_for(*fix)
    assert partitions.partitions_for(*fix)[0] == partitions.owner(*fix)


def test_a_fix_deep_inside_its_cell_goes_to_its_owner_alone() -> None:
    partitions = PartitionMap(4, halo_m=HALO_M)
    lat, lon = 51.0447, -114.0719
    cell = partitions.cell_of(lat, lon)
    # Walk to a point whose halo box stays inside the cell.
    for bearing in range(0, 360, 10):
        for step in range(0, 2000, 50):
            p = destination(lat, lon, bearing, step)
            if partitions.cell_of(*p) == cell and len(partitions.partitions_for(*p)) == 1:
                assert partitions.partitions_for(*p) == (partitions.owner(*p),)
                return
    pytest.fail("no interior point found in a 2 km cell")


def test_the_180th_meridian_is_a_cell_boundary_and_plus_minus_180_are_one_place() -> None:
    partitions = PartitionMap(2, cell_m=2000.0)
    west = partitions.cell_of(-16.8, 179.99999)
    east = partitions.cell_of(-16.8, -179.99999)
    assert west[1] == 0  # the plane y = 0, on either side
    assert east[1] == -1
    assert partitions.cell_of(-16.8, 180.0) == partitions.cell_of(-16.8, -180.0)
    assert partitions.owner(-16.8, 180.0) == partitions.owner(-16.8, -180.0)


def test_the_pole_is_one_point_whatever_its_longitude() -> None:
    partitions = PartitionMap(4, halo_m=HALO_M)
    owners = {partitions.owner(90.0, lon) for lon in (-180.0, -90.0, 0.0, 45.0, 180.0)}
    assert len(owners) == 1
    cells = {partitions.cell_of(-90.0, lon) for lon in (-180.0, 0.0, 123.0)}
    assert len(cells) == 1


def test_cells_spread_evenly_and_a_new_partition_moves_only_its_share() -> None:
    four, five = PartitionMap(4), PartitionMap(5)
    cells = [(x, y, 2500) for x in range(100) for y in range(100)]
    shares = Counter(four.partition_of(c) for c in cells)
    assert set(shares) == {0, 1, 2, 3}
    assert all(abs(n / len(cells) - 0.25) < 0.03 for n in shares.values()), shares
    moved = sum(four.partition_of(c) != five.partition_of(c) for c in cells)
    # Rendezvous hashing: only the cells the new partition wins move (1/5 of them).
    assert abs(moved / len(cells) - 0.2) < 0.03, moved
    movers = [c for c in cells if four.partition_of(c) != five.partition_of(c)]
    assert all(five.partition_of(c) == 4 for c in movers)


def test_one_partition_owns_everything() -> None:
    one = PartitionMap(1, halo_m=1000.0)
    assert one.partitions_for(0.0, 180.0) == (0,)
    assert one.home("cam-7") == 0


def test_an_explicit_layout_replaces_the_hash() -> None:
    partitions = PartitionMap(2, cell_m=4.0, halo_m=HALO_M, assign=lambda cell: cell[0] % 2)
    cell = partitions.cell_of(10.0, 10.0)
    assert partitions.owner(10.0, 10.0) == cell[0] % 2
    assert set(partitions.partitions_for(10.0, 10.0)) == {0, 1}
    broken = PartitionMap(2, assign=lambda cell: 2)
    with pytest.raises(ValueError, match="assign gave partition 2"):
        broken.owner(0.0, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "partition count"),
        ({"count": True}, "partition count"),
        ({"count": 2, "cell_m": 0.5}, "cell_m"),
        ({"count": 2, "cell_m": math.nan}, "cell_m"),
        ({"count": 2, "halo_m": -1.0}, "halo_m"),
        ({"count": 2, "halo_m": math.inf}, "halo_m"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PartitionMap(**kwargs)  # type: ignore[arg-type]  # wrong types on purpose


def test_home_is_stable_and_spread() -> None:
    partitions = PartitionMap(4)
    homes = Counter(partitions.home(f"cam-{i}") for i in range(4000))
    assert set(homes) == {0, 1, 2, 3}
    assert partitions.home("cam-1") == PartitionMap(4).home("cam-1")
