"""Geometry for "every camera within 30 ft": WGS-84 distances, the spatial index of the
latest fix of every device, and the policy that decides who counts as within the radius.

:mod:`~actimesh.geofence.geodesy` measures, :mod:`~actimesh.geofence.index` finds the
devices near a point, and :mod:`~actimesh.geofence.policy` judges each one.
:mod:`~actimesh.geofence.partition` splits the globe between engines.
"""

from __future__ import annotations

from actimesh.geofence.geodesy import destination, distance_m, to_ecef
from actimesh.geofence.index import Fix, GridIndex, LinearIndex, SpatialIndex
from actimesh.geofence.partition import Cell, PartitionMap
from actimesh.geofence.policy import (
    DECISION_BAND_M,
    InclusionMode,
    InclusionPolicy,
    MotionPromise,
    Verdict,
)

__all__ = [
    "DECISION_BAND_M",
    "Cell",
    "Fix",
    "GridIndex",
    "InclusionMode",
    "InclusionPolicy",
    "LinearIndex",
    "MotionPromise",
    "PartitionMap",
    "SpatialIndex",
    "Verdict",
    "destination",
    "distance_m",
    "to_ecef",
]
