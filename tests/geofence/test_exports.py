from __future__ import annotations

import actimesh.geofence


def test_all_is_sorted_and_complete() -> None:
    names = actimesh.geofence.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(actimesh.geofence, name), name


def test_public_names_come_from_the_geofence_package() -> None:
    for name in actimesh.geofence.__all__:
        member = getattr(actimesh.geofence, name)
        assert member.__module__.startswith("actimesh.geofence."), name
