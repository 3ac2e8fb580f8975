"""Splitting a trigger's latency into its hops."""

from __future__ import annotations

import gc
import math

import pytest

from actimesh.bench.trace import STAGES, GcPauses, describe, gc_figures, split


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


def test_slow_work_is_counted_with_the_collections_it_overlapped() -> None:
    handled = {"fast": [1.000, 1.001], "slow-gc": [2.000, 2.012], "slow-other": [3.0, 3.008]}
    pauses = [(0, 1.5, 1.5001), (2, 2.004, 2.010), (1, 2.9, 2.95)]
    out = gc_figures(handled, pauses)
    assert (out["slow_work"], out["slow_work_during_gc"]) == (2, 1)
    assert out["collections"]["gen2"]["count"] == 1
    assert out["collections"]["gen2"]["max_ms"] == pytest.approx(6.0)
    assert out["collections"]["gen1"]["total_ms"] == pytest.approx(50.0)
    lag = {"p50": 1.0, "p99": 2.0, "samples": 3}
    text = describe(
        {
            "engine": split({}, {}, {}),
            "echo": split({}, {}, {}),
            "engine_gc": out,
            "engine_loop_lag_ms": lag,
        }
    )
    assert "work stages over 5 ms: 2, 1 of them during a collection" in text


def test_every_collection_of_the_process_is_timed() -> None:
    pauses = GcPauses()
    pauses.install()
    try:
        gc.collect(1)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses)
    taken = pauses.take()
    assert [generation for generation, _, _ in taken][-2:] == [1, 2]
    assert all(start <= end for _, start, end in taken)
    assert pauses.take() == []
