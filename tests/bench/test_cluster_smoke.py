"""`actimesh bench --cluster --smoke`: the cluster benchmark runs end to end in seconds.

Three nats-server nodes with their auth callouts, two engines on NATS, the load
generator, probe and echo client on the nodes' MQTT 3.1.1 listeners, and a native
plain subscriber. As for the single-machine smoke run, CI checks that every figure is
there and consistent; the figures themselves are in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actimesh.bench import REQUIRED_KEYS
from actimesh.cli import main

pytestmark = pytest.mark.integration

_NOT_ON_A_CLUSTER = {"naive_scan_ratio"}  # the index's figure, measured on one machine


@pytest.mark.time_limit(90)
def test_cluster_smoke_run_measures_both_paths_and_both_engines(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--cluster",
            "--smoke",
            "--json",
            str(report_path),
            "--plot",
            str(tmp_path / "bench.png"),
        ]
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["shape"] == "cluster"
    for key in set(REQUIRED_KEYS) - _NOT_ON_A_CLUSTER:
        value = report[key]
        assert isinstance(value, int | float), key
        assert not isinstance(value, bool), key
        assert math.isfinite(value), key
        assert value >= 0, (key, value)
    assert report["commands_missing"] == 0
    assert report["echo_missing"] == 0
    assert report["commands_received"] == report["commands_expected"] > 0
    assert report["broker_two_hop_p99_ms"] > 0
    # Both engines took trigger events from the one shared consumer, and none twice.
    assert sum(report["activations_per_engine"]) == report["triggers"]
    # Every engine indexed every telemetry message of the steady phase (no partitions:
    # each holds the whole fleet), and the flood's lossless rate is each engine's.
    assert report["telemetry_dropped"] == 0
    assert report["telemetry_ingested_per_engine"] == [report["telemetry_sent"]] * 2
    assert len(report["ingest_per_engine_msgs_per_s"]) == 2
    assert report["ingest_msgs_per_s"] == min(report["ingest_per_engine_msgs_per_s"])
    assert report["broker_delivery_lost"] == 0
    assert report["rss_bytes_per_device"] > 0
    assert set(report["cpu_percent"]) == {"engine-1", "engine-2", "n1", "n2", "n3", "loadgen"}
    assert "naive_scan_ratio" not in report["targets"]


def test_cluster_refuses_options_it_does_not_run_with(tmp_path: Path) -> None:
    for extra in (["--search"], ["--publisher", "paho"], ["--sweep"]):
        code = main(["bench", "--cluster", *extra, "--json", str(tmp_path / "r.json")])
        assert code != 0, extra
