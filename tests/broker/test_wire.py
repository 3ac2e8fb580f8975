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


def _qos1_publish(topic: bytes, packet_id: int, payload: bytes) -> tuple[bytes, int, int, int]:
    """A QoS 1 PUBLISH with no properties: (buffer, first byte, body start, body end)."""
    body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + b"\x00"
    body += payload
    packet = bytes((0x32,)) + wire.encode_varint(len(body)) + body
    found = wire.next_packet(packet, 0, len(packet), 1 << 20)
    assert found is not None
    return packet, *found


def test_a_qos1_publish_reads_with_its_packet_id() -> None:
    packet, first, start, end = _qos1_publish(b"am/v1/x/dev/d1/event", 0xBEEF, b"\x81\xa1k\x01")
    assert wire.read_publish(packet, first, start, end) == (
        b"am/v1/x/dev/d1/event",
        b"\x81\xa1k\x01",
        0xBEEF,
    )
    qos0 = wire.publish_packet("a/b", b"p")
    found = wire.next_packet(qos0, 0, len(qos0), 1 << 20)
    assert found is not None
    assert wire.read_publish(qos0, *found) == (b"a/b", b"p", 0)


def test_a_qos1_publish_with_id_0_qos2_or_a_cut_id_is_refused() -> None:
    packet, first, start, end = _qos1_publish(b"t", 0, b"p")
    with pytest.raises(wire.ProtocolError, match="packet id 0"):
        wire.read_publish(packet, first, start, end)
    with pytest.raises(wire.ProtocolError, match="above QoS 1"):
        wire.read_publish(packet, 0x34, start, end)
    with pytest.raises(wire.ProtocolError, match="truncated packet id"):
        wire.read_publish(b"\x00\x01t\x00", 0x32, 0, 4)


def test_puback_and_a_persistent_session_connect() -> None:
    assert wire.puback_packet(0x0102) == b"\x40\x02\x01\x02"
    clean = wire.connect_packet("id", keepalive_s=5)
    kept = wire.connect_packet("id", keepalive_s=5, session_expiry_s=300, receive_maximum=50)
    assert clean[9] & 0x02  # clean start
    assert not kept[9] & 0x02  # the session is resumed
    assert b"\x11\x00\x00\x01\x2c" in kept  # Session Expiry Interval 300
    assert b"\x21\x00\x32" in kept  # Receive Maximum 50
    with pytest.raises(ValueError, match="receive maximum"):
        wire.connect_packet("id", keepalive_s=5, receive_maximum=0)
    assert wire.subscribe_packet(1, ("a", "b"), (0, 1)).endswith(b"\x00\x01a\x00\x00\x01b\x01")
    with pytest.raises(ValueError, match="one per topic filter"):
        wire.subscribe_packet(1, ("a", "b"), (0,))


def test_mqtt_311_frames_have_no_properties() -> None:
    connect = wire.connect_packet("id", keepalive_s=5, username="u", password="p", version=4)
    # Fixed header, remaining length, "MQTT", level 4, flags, keepalive, then the client id.
    assert connect[2:9] == b"\x00\x04MQTT\x04"
    assert connect[9] == 0xC2  # username, password, clean session
    assert connect[12:16] == b"\x00\x02id"
    with pytest.raises(ValueError, match=r"3\.1\.1 has no"):
        wire.connect_packet("id", keepalive_s=5, session_expiry_s=60, version=4)
    with pytest.raises(ValueError, match=r"4 \(3\.1\.1\) or 5"):
        wire.connect_packet("id", keepalive_s=5, version=3)
    assert wire.publish_packet("a/b", b"p", version=4) == b"\x30\x06\x00\x03a/bp"
    assert (
        wire.publish_packet("a/b", b"p", packet_id=7, version=4) == b"\x32\x08\x00\x03a/b\x00\x07p"
    )


def test_a_qos1_publish_made_here_reads_back_with_its_packet_id() -> None:
    packet = wire.publish_packet("am/v1/x/dev/d1/presence", b"\x81", packet_id=0x0102)
    found = wire.next_packet(packet, 0, len(packet), 1 << 20)
    assert found is not None
    assert wire.read_publish(packet, *found) == (b"am/v1/x/dev/d1/presence", b"\x81", 0x0102)
    with pytest.raises(ValueError, match="packet id"):
        wire.publish_packet("t", b"p", packet_id=0)
