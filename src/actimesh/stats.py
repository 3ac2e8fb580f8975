"""Latency statistics shared by the drills and the benchmark.

Both report percentiles of the same kind of samples, and a p99 in a drill's table must
mean what it means in a benchmark report: one definition, with no camera or broker in it.
"""

from __future__ import annotations

__all__ = ["percentile"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a reported p99 is a real sample)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]
