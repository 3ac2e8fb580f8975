"""``actimesh bench``: the activation path measured against the broker's own limit.

The broker, the engine, a load generator, a camera-side probe, an echo client and a
plain subscriber run as separate processes on one machine (:mod:`.run`); the engine's
figures are reported as ratios of what the same broker does without it, measured in
the same run under the same load. See docs/PERFORMANCE.md.
"""

from __future__ import annotations

from actimesh.bench.command import bench
from actimesh.bench.report import REQUIRED_KEYS
from actimesh.bench.settings import SWEEP_DEVICES, BenchSettings

__all__ = ["REQUIRED_KEYS", "SWEEP_DEVICES", "BenchSettings", "bench"]
