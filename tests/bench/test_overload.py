"""`actimesh bench --overload`: telemetry at twice the broker's measured rate, with triggers.

The smoke run checks that every trigger still commands every camera and that each hop's
telemetry counters add up to what was offered; how fast anything is belongs to the
benchmark (docs/PERFORMANCE.md), not to a timed test. The load generator's prepared
stream is checked on its own: the run's freshness depends on its timestamps.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from actimesh.bench.loadgen import LoadGenerator, RawPublisher
from actimesh.bench.overload import OVERLOAD_FACTOR
from actimesh.bench.workload import build_fleet
from actimesh.broker import wire
from actimesh.broker.codec import decode_telemetry
from actimesh.cli import main


class _Captured(RawPublisher):
    """A raw publisher that keeps what it would write."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 1, "test")
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data


def _payloads(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while (found := wire.next_packet(data, pos, len(data), 1 << 20)) is not None:
        first, body, pos = found
        out.append(wire.split_publish(data, first, body, pos)[1])
    return out


async def test_the_prepared_stream_sends_current_timestamps_at_the_asked_rate() -> None:
    fleet = build_fleet(1_000, 6)
    publisher = _Captured()
    gen = LoadGenerator(fleet, 6, publisher, ["bench"])
    began = time.time()
    await gen.stream_prepared("bench", rate=20_000.0, duration_s=0.3)
    payloads = _payloads(bytes(publisher.data))
    # Whole chunks go out, so up to one chunk more than due; nothing skipped unless late.
    assert len(payloads) == gen.sent
    assert gen.stream_sent == gen.sent + gen.stream_skipped
    assert 0.3 * 20_000 * 0.5 <= gen.stream_sent <= 0.3 * 20_000 + 512
    for payload in payloads:
        ts, _state, lat, lon, _acc = decode_telemetry(payload)
        # Built before the stream began, stamped when sent: never older than the stream.
        assert began <= ts <= time.time()
        assert lat is not None
        assert lon is not None


@pytest.mark.integration
@pytest.mark.time_limit(90)
def test_overload_smoke_commands_every_camera_and_accounts_for_all_telemetry(
    tmp_path: Path,
) -> None:
    report_path = tmp_path / "overload.json"
    assert main(["bench", "--overload", "--smoke", "--json", str(report_path)]) == 0
    r = json.loads(report_path.read_text())
    broker = r["broker_delivery_msgs_per_s"]
    assert math.isfinite(broker)
    assert broker > 0
    assert r["telemetry_offered_msgs_per_s"] == pytest.approx(OVERLOAD_FACTOR * broker)
    # Every trigger reached every camera of its scene: nothing missing, nothing left out.
    why = {k: r[k] for k in ("trigger_path", "telemetry", "telemetry_shed", "machine")}
    assert r["triggers"] > 0
    assert r["commands_missing"] == 0, why
    assert r["commands_received"] == r["commands_expected"]
    path = r["trigger_path"]
    assert "stale" not in path["cameras_left_out"]  # passers-by may be too far
    assert path["events_without_position"] == 0
    assert path["commands_published"] >= r["commands_expected"]
    assert r["targets"]["commands_missing"]["met"]
    assert math.isfinite(r["p99_ratio_vs_broker"])
    # Telemetry: what each hop shed adds up to what was offered and not indexed.
    t, shed = r["telemetry"], r["telemetry_shed"]
    assert t["scheduled"] == t["written_by_load_generator"] + shed["load_generator_behind"]
    assert (
        t["written_by_load_generator"] == t["delivered_to_engine"] + (shed["broker_not_delivered"])
    )
    assert t["delivered_to_engine"] == (
        t["ingested"]
        + shed["engine_backlog_oldest"]
        + shed["engine_superseded"]
        + shed["engine_over_device_rate"]
        + shed["engine_rejected"]
    )
    assert r["telemetry_shed_total"] == sum(shed.values())
    assert t["ingested"] > 0
    assert all(v >= 0 for v in shed.values())
