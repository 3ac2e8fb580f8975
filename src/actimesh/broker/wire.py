"""Just enough of MQTT 5 on the wire for the high-rate receiving paths.

paho-mqtt reads each packet with at least three ``recv`` calls and runs one callback per
packet; on this project's 2-core machine a paho subscriber tops out near 45,000 msg/s
while Mosquitto delivers about 120,000 (docs/PERFORMANCE.md). The telemetry ingest
(:mod:`actimesh.broker.ingest`) and the benchmark's load generator therefore speak the
small subset of MQTT 5 they need themselves:

* out: CONNECT (with a persistent session if asked), SUBSCRIBE, PUBLISH at QoS 0,
  PUBACK, PINGREQ, DISCONNECT;
* in: CONNACK, SUBACK, PUBLISH at QoS 0 or 1, PINGRESP, DISCONNECT.

The engine's intake of trigger events, presence and acknowledgements reads QoS 1 this
way too (:class:`~actimesh.broker.ingest.ControlSubscriber`): a device's flood must be
refused at the speed the broker delivers it. Everything that publishes with
acknowledgements (commands, confirmations, wills) stays on paho/aiomqtt
(:mod:`actimesh.broker.client`). Parsing works on a buffer in place and
never trusts a length it reads: a malformed or oversized packet is a
:class:`ProtocolError`, after which the connection must be dropped.
"""

from __future__ import annotations

import struct

from actimesh.errors import BrokerError

__all__ = [
    "CONNACK",
    "CONNECT",
    "DISCONNECT",
    "DISCONNECT_PACKET",
    "PINGREQ",
    "PINGREQ_PACKET",
    "PINGRESP",
    "PUBACK",
    "PUBLISH",
    "SUBACK",
    "SUBSCRIBE",
    "ProtocolError",
    "connack_reason",
    "connect_packet",
    "encode_varint",
    "next_packet",
    "puback_packet",
    "publish_packet",
    "read_publish",
    "split_publish",
    "suback_reasons",
    "subscribe_packet",
]

# Control packet types (the high nibble of the first byte).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PINGREQ_PACKET = b"\xc0\x00"
#: DISCONNECT with reason 0 (normal) and no properties.
DISCONNECT_PACKET = b"\xe0\x00"

_MAX_VARINT = 268_435_455
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class ProtocolError(BrokerError):
    """The peer sent something this subset of MQTT 5 does not accept."""


def encode_varint(value: int) -> bytes:
    """MQTT's variable byte integer (1 to 4 bytes)."""
    if not 0 <= value <= _MAX_VARINT:
        raise ValueError(f"{value} does not fit an MQTT variable byte integer")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT strings are at most 65,535 bytes")
    return _U16.pack(len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def _check_connect(
    keepalive_s: int,
    session_expiry_s: int,
    receive_maximum: int | None,
    max_packet_size: int | None,
    version: int,
) -> None:
    if not 0 <= keepalive_s <= 0xFFFF:
        raise ValueError("keepalive must be 0 to 65,535 seconds")
    if not 0 <= session_expiry_s <= 0xFFFFFFFF:
        raise ValueError("session expiry must be 0 to 4,294,967,295 seconds")
    if receive_maximum is not None and not 1 <= receive_maximum <= 0xFFFF:
        raise ValueError("receive maximum must be 1 to 65,535")
    if version not in (4, 5):
        raise ValueError("MQTT version must be 4 (3.1.1) or 5")
    if version == 4 and (session_expiry_s or receive_maximum or max_packet_size):
        raise ValueError("MQTT 3.1.1 has no session expiry, receive maximum or packet size")


def connect_packet(
    client_id: str,
    *,
    keepalive_s: int,
    username: str | None = None,
    password: str | None = None,
    max_packet_size: int | None = None,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
    version: int = 5,
) -> bytes:
    """CONNECT, MQTT 5 (or 3.1.1 with ``version=4``: no properties, so none of the
    options that are properties), no will.

    With ``session_expiry_s`` 0 the session starts clean and ends with the connection;
    otherwise the broker resumes the session kept under ``client_id`` (its
    subscriptions and unacknowledged QoS 1 messages) and keeps it that long after a
    disconnect. ``receive_maximum`` caps the QoS 1 messages the broker sends before
    they are acknowledged.
    """
    _check_connect(keepalive_s, session_expiry_s, receive_maximum, max_packet_size, version)
    flags = 0x02 if session_expiry_s == 0 else 0x00  # clean start only without a session
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    props = b""
    if session_expiry_s:
        props += b"\x11" + _U32.pack(session_expiry_s)  # Session Expiry Interval
    if receive_maximum is not None:
        props += b"\x21" + _U16.pack(receive_maximum)  # Receive Maximum
    if max_packet_size is not None:
        props += b"\x27" + _U32.pack(max_packet_size)  # Maximum Packet Size
    header = _string("MQTT") + bytes((version, flags)) + _U16.pack(keepalive_s)
    if version == 5:
        header += encode_varint(len(props)) + props
    body = header + _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(CONNECT << 4, body)


def subscribe_packet(
    packet_id: int, topic_filters: tuple[str, ...], qos: int | tuple[int, ...] = 0
) -> bytes:
    """SUBSCRIBE to each filter with the given maximum QoS, one for all filters or one
    per filter (no options, no properties)."""
    if not 1 <= packet_id <= 0xFFFF:
        raise ValueError("packet id must be 1 to 65,535")
    if not topic_filters:
        raise ValueError("subscribe to at least one topic filter")
    qoses = (qos,) * len(topic_filters) if isinstance(qos, int) else qos
    if len(qoses) != len(topic_filters):
        raise ValueError("give one QoS, or one per topic filter")
    body = _U16.pack(packet_id) + b"\x00"
    for topic_filter, level in zip(topic_filters, qoses, strict=True):
        body += _string(topic_filter) + bytes((level & 0x03,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def publish_packet(
    topic: str | bytes,
    payload: bytes,
    *,
    retain: bool = False,
    packet_id: int | None = None,
    version: int = 5,
) -> bytes:
    """PUBLISH with no properties: QoS 0, or QoS 1 with ``packet_id``; MQTT 5 (an empty
    property length) or 3.1.1 (``version=4``: none)."""
    raw = topic.encode() if isinstance(topic, str) else topic
    props = b"\x00" if version == 5 else b""
    pid = b""
    first = (PUBLISH << 4) | (0x01 if retain else 0)
    if packet_id is not None:
        if not 1 <= packet_id <= 0xFFFF:
            raise ValueError("packet id must be 1 to 65,535")
        pid = _U16.pack(packet_id)
        first |= 0x02
    body_len = 2 + len(raw) + len(pid) + len(props) + len(payload)
    return b"".join(
        (bytes((first,)), encode_varint(body_len), _U16.pack(len(raw)), raw, pid, props, payload)
    )


def puback_packet(packet_id: int) -> bytes:
    """PUBACK for ``packet_id``, reason 0 (success) and no properties: 4 bytes."""
    return b"\x40\x02" + _U16.pack(packet_id)


def next_packet(
    buf: bytes | bytearray | memoryview, pos: int, end: int, max_size: int
) -> tuple[int, int, int] | None:
    """Find the packet starting at ``buf[pos]``.

    Returns ``(first_byte, body_start, body_end)``, or None when the packet is not
    complete within ``buf[pos:end]`` yet. Raises :class:`ProtocolError` for a length
    over ``max_size`` or a malformed length.
    """
    if end - pos < 2:
        return None
    length = 0
    shift = 0
    i = pos + 1
    while True:
        if i >= end:
            return None
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed packet length")
    if length > max_size:
        raise ProtocolError(f"a {length}-byte packet is over the {max_size}-byte limit")
    if i + length > end:
        return None
    return buf[pos], i, i + length


def _varint_at(buf: bytes | bytearray | memoryview, i: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if i >= end or shift > 21:
            raise ProtocolError("malformed variable byte integer")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def split_publish(
    buf: bytes | bytearray | memoryview, first: int, start: int, end: int
) -> tuple[bytes, bytes]:
    """Topic and payload of a QoS 0 MQTT 5 PUBLISH whose body is ``buf[start:end]``."""
    if first & 0x06:
        raise ProtocolError("a PUBLISH above QoS 0 on a QoS 0 subscription")
    if end - start < 3:
        raise ProtocolError("PUBLISH too short")
    topic_end = start + 2 + ((buf[start] << 8) | buf[start + 1])
    if topic_end == start + 2 or topic_end >= end:
        raise ProtocolError("PUBLISH with an empty or truncated topic")
    props, at = _varint_at(buf, topic_end, end)
    if at + props > end:
        raise ProtocolError("PUBLISH properties run past the packet")
    return bytes(buf[start + 2 : topic_end]), bytes(buf[at + props : end])


def read_publish(
    buf: bytes | bytearray | memoryview, first: int, start: int, end: int
) -> tuple[bytes, bytes, int]:
    """Topic, payload and packet id of a QoS 0 or 1 MQTT 5 PUBLISH whose body is
    ``buf[start:end]``; the packet id is 0 at QoS 0 (nothing to acknowledge)."""
    qos = (first >> 1) & 0x03
    if qos > 1:
        raise ProtocolError("a PUBLISH above QoS 1 on a QoS 1 subscription")
    if end - start < 3:
        raise ProtocolError("PUBLISH too short")
    topic_end = start + 2 + ((buf[start] << 8) | buf[start + 1])
    if topic_end == start + 2 or topic_end >= end:
        raise ProtocolError("PUBLISH with an empty or truncated topic")
    packet_id = 0
    at = topic_end
    if qos:
        if at + 2 >= end:
            raise ProtocolError("PUBLISH with a truncated packet id")
        packet_id = (buf[at] << 8) | buf[at + 1]
        if packet_id == 0:
            raise ProtocolError("a QoS 1 PUBLISH with packet id 0")
        at += 2
    props, at = _varint_at(buf, at, end)
    if at + props > end:
        raise ProtocolError("PUBLISH properties run past the packet")
    return bytes(buf[start + 2 : topic_end]), bytes(buf[at + props : end]), packet_id


def connack_reason(body: bytes | bytearray | memoryview) -> int:
    """The reason code of a CONNACK body (0 is success)."""
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    return int(body[1])


def suback_reasons(body: bytes | bytearray | memoryview) -> tuple[int, tuple[int, ...]]:
    """Packet id and per-filter reason codes of a SUBACK body (>= 0x80 is a refusal)."""
    if len(body) < 3:
        raise ProtocolError("SUBACK too short")
    packet_id = (body[0] << 8) | body[1]
    props, at = _varint_at(body, 2, len(body))
    return packet_id, tuple(body[at + props :])
