"""Splitting a trigger's latency into its hops."""

from __future__ import annotations

import math

import pytest

from actimesh.bench.trace import STAGES, describe, split


def test_each_request_is_split_into_its_three_stages() -> None:
    sent = {"ev-1": 10.000, "ev-2": 20.000, "ev-lost": 30.0}
    received = {"ev-1": [10.004, 10.005], "ev-2": [20.003]}
    handled = {"ev-1": [10.001, 10.002], "ev-2": [20.001, 20.0015], "ev-other": [1.0, 2.0]}
    out = split(sent, received, handled)
    assert out["traced"] == 2  # only requests all three sides saw
    assert out["to_handler"]["p50_ms"] == pytest.approx(1.0)
    assert out["work"]["p99_ms"] == pytest.approx(1.0)
    # To the *last* camera: a cluster is recorded when all of it is.
    assert out["to_cameras"]["p99_ms"] == pytest.approx(3.0)
    assert "to handler 1.00/1.00" in describe({"engine": out, "echo": out})


def test_nothing_traced_is_not_a_number() -> None:
    out = split({}, {}, {})
    assert out["traced"] == 0
    assert all(math.isnan(out[stage]["p50_ms"]) for stage in STAGES)
