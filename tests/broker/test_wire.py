"""The MQTT 5 subset on the wire: what is encoded parses back, and bad lengths are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker import wire

topics = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\0+#"),
    min_size=1,
    max_size=80,
)


@given(st.integers(min_value=0, max_value=268_435_455))
def test_varint_round_trips(value: int) -> None:
    encoded = wire.encode_varint(value)
    assert 1 <= len(encoded) <= 4
    packet = b"\x30" + encoded + bytes(value if value < 300 else 0)
    found = wire.next_packet(packet, 0, len(packet), 1 << 30)
    if value < 300:
        assert found == (0x30, 1 + len(encoded), 1 + len(encoded) + value)


def test_varint_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="variable byte integer"):
        wire.encode_varint(268_435_456)


@given(topics, st.binary(max_size=2000), st.booleans())
def test_publish_splits_back_into_topic_and_payload(
    topic: str, payload: bytes, retain: bool
) -> None:
    packet = wire.publish_packet(topic, payload, retain=retain)
    found = wire.next_packet(packet, 0, len(packet), 1 << 20)
    assert found is not None
    first, start, end = found
    assert first >> 4 == wire.PUBLISH
    assert end == len(packet)
    assert wire.split_publish(packet, first, start, end) == (topic.encode(), payload)


def test_several_packets_in_one_buffer_and_a_partial_one() -> None:
    a, b = wire.publish_packet("a/b", b"1"), wire.publish_packet("c", b"22")
    buf = a + b + wire.publish_packet("d", b"333")[:-1]
    pos, seen = 0, []
    while (found := wire.next_packet(buf, pos, len(buf), 1024)) is not None:
        first, start, pos = found
        seen.append(wire.split_publish(buf, first, start, pos))
    assert seen == [(b"a/b", b"1"), (b"c", b"22")]
    assert pos == len(a) + len(b)


def test_oversized_and_malformed_lengths_are_protocol_errors() -> None:
    big = wire.publish_packet("t", bytes(100))
    with pytest.raises(wire.ProtocolError, match="limit"):
        wire.next_packet(big, 0, len(big), 50)
    with pytest.raises(wire.ProtocolError, match="malformed"):
        wire.next_packet(b"\x30\xff\xff\xff\xff\x01", 0, 6, 1 << 30)


def test_publish_above_qos0_or_without_topic_is_refused() -> None:
    with pytest.raises(wire.ProtocolError, match="QoS"):
        wire.split_publish(b"\x00\x01t\x00\x01\x00", 0x32, 0, 6)
    with pytest.raises(wire.ProtocolError, match="topic"):
        wire.split_publish(b"\x00\x00\x00x", 0x30, 0, 4)


def test_control_packets() -> None:
    connect = wire.connect_packet(
        "id", keepalive_s=30, username="u", password="p", max_packet_size=1024
    )
    assert connect[0] == 0x10
    assert b"MQTT" in connect
    assert connect.endswith(b"\x00\x01p")
    assert wire.subscribe_packet(7, ("a/+", "b"), 0)[0] == 0x82
    assert wire.connack_reason(b"\x00\x87\x00") == 0x87
    assert wire.suback_reasons(b"\x00\x07\x00\x00\x80") == (7, (0, 0x80))
    with pytest.raises(ValueError, match="at least one"):
        wire.subscribe_packet(1, ())
    with pytest.raises(wire.ProtocolError):
        wire.connack_reason(b"")
