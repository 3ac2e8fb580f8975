"""Synthetic media: deterministic bytes that say which seconds of which camera they hold."""

from __future__ import annotations

import hashlib

import pytest

from actimesh.devices.media import MediaSource, Segment, SyntheticSource, parse_synthetic


def test_synthetic_segment_names_device_seq_and_exact_times() -> None:
    source = SyntheticSource("bwc-7")
    data = source.render(42, 1_700_000_000.1, 1_700_000_001.1)
    header = parse_synthetic(data)
    assert header.device_id == "bwc-7"
    assert header.seq == 42
    assert header.start == 1_700_000_000.1
    assert header.end == 1_700_000_001.1


def test_synthetic_segment_is_padded_to_configured_size_and_deterministic() -> None:
    source = SyntheticSource("bwc-7", segment_bytes=300)
    a = source.render(1, 10.0, 11.0)
    assert len(a) == 300
    assert a == SyntheticSource("bwc-7", segment_bytes=300).render(1, 10.0, 11.0)
    assert a != source.render(2, 11.0, 12.0)
    assert len(SyntheticSource("bwc-7").render(1, 10.0, 11.0)) == 512


def test_synthetic_header_is_never_truncated() -> None:
    data = SyntheticSource("bwc-7", segment_bytes=4).render(1, 10.0, 11.0)
    assert len(data) > 4
    assert parse_synthetic(data).seq == 1


def test_parse_rejects_bytes_that_are_not_synthetic() -> None:
    with pytest.raises(ValueError, match="not a synthetic segment"):
        parse_synthetic(b"\x00\x00\x01\xb3 real video")
    with pytest.raises(ValueError, match="malformed"):
        parse_synthetic(b"AMSYN1 cam x 1.0 2.0\n")


@pytest.mark.parametrize(
    ("device_id", "seconds", "size"),
    [("../escape", 1.0, 512), ("cam", 0.0, 512), ("cam", float("nan"), 512), ("cam", 1.0, -1)],
)
def test_synthetic_source_rejects_bad_settings(device_id: str, seconds: float, size: int) -> None:
    with pytest.raises(ValueError, match="must"):
        SyntheticSource(device_id, segment_seconds=seconds, segment_bytes=size)


def test_synthetic_source_is_a_media_source() -> None:
    source: MediaSource = SyntheticSource("cam", segment_seconds=2.0)
    assert source.segment_seconds == 2.0


def test_segment_of_hashes_its_data() -> None:
    seg = Segment.of(3, 3.0, 4.0, b"abc")
    assert seg.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert seg.duration == 1.0


@pytest.mark.parametrize(("seq", "start", "end"), [(-1, 0.0, 1.0), (0, 1.0, 1.0), (0, 0.0, -1.0)])
def test_segment_rejects_impossible_ranges(seq: int, start: float, end: float) -> None:
    with pytest.raises(ValueError, match="segment"):
        Segment.of(seq, start, end, b"")
