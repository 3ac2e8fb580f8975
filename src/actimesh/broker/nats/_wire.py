"""The NATS client protocol, as much of it as a subscriber reads: splitting what the
server sends into messages and control lines, in place, in the reader's own buffer.

The server sends text lines ending in CRLF, and two of them carry a payload of a size the
line states: ``MSG <subject> <sid> [reply-to] <size>`` and ``HMSG <subject> <sid>
[reply-to] <header size> <total size>`` (headers, then the payload, ``total`` bytes in
all, then CRLF). Everything else is a control line: ``INFO {json}``, ``PING``, ``PONG``,
``+OK`` and ``-ERR '<reason>'``.

:func:`next_frame` finds one frame from a position in a buffer without copying what
follows it: ``None`` while the frame is not complete (the reader waits for more bytes),
:class:`ProtocolError` for anything a server does not send (a line too long, a size that
is not a number or above the payload limit, a payload not followed by CRLF, an unknown
verb), after which the connection cannot be trusted to be in step and is dropped. A
message's headers are skipped: a telemetry reader has no use for them (the MQTT
listener's ``Nmqtt-Pub`` says only the publisher's QoS).

:func:`topic_of` is :func:`~actimesh.broker.nats.subjects.subject_to_topic` on bytes,
with a fast path for the usual subject (no ``/`` in it: no dot inside a level, no empty
level), because it runs once per message.
"""

from __future__ import annotations

from actimesh.broker.nats.subjects import subject_to_topic
from actimesh.errors import BrokerError

__all__ = [
    "CONTROL_VERBS",
    "MAX_CONTROL_LINE",
    "ProtocolError",
    "connect_line",
    "next_frame",
    "sub_line",
    "topic_of",
]

#: Longest line accepted before its CRLF: nats-server's own limit for what a client
#: sends (``max_control_line``) is 4 KiB; an INFO with many cluster URLs is longer.
MAX_CONTROL_LINE = 64 * 1024
#: The control lines a server sends (the verb: the line up to its first space).
CONTROL_VERBS = frozenset((b"INFO", b"PING", b"PONG", b"+OK", b"-ERR"))

#: One frame: ``(subject, payload, end)`` for a message, ``(None, line, end)`` for a
#: control line; ``end`` is where the next frame starts.
Frame = tuple[bytes | None, bytes, int]
#: The first byte of MSG and HMSG.
_MESSAGE_FIRST = frozenset(b"MH")


class ProtocolError(BrokerError):
    """The server sent something that is not the NATS client protocol."""


def _size(token: bytes, limit: int) -> int:
    # int() accepts "+5", " 5" and "5_0"; a server writes plain decimal digits.
    if not token.isdigit():
        raise ProtocolError(f"a message size that is not a number: {token[:32]!r}")
    size = int(token)
    if size > limit:
        raise ProtocolError(f"a message of {size} bytes, above the limit of {limit}")
    return size


def next_frame(buf: bytearray, pos: int, end: int, max_payload: int) -> Frame | None:
    """The frame starting at ``buf[pos]`` among the received ``buf[pos:end]``, or None
    until all of it is there."""
    nl = buf.find(b"\r\n", pos, end)
    if nl < 0:
        if end - pos > MAX_CONTROL_LINE:
            raise ProtocolError(f"no end of line within {MAX_CONTROL_LINE} bytes")
        return None
    if nl - pos > MAX_CONTROL_LINE:
        raise ProtocolError(f"a line longer than {MAX_CONTROL_LINE} bytes")
    if buf[pos] in _MESSAGE_FIRST:  # the hot path, checked before any copy
        line = bytes(buf[pos:nl])
        parts = line.split(b" ")
        verb = parts[0]
        start = nl + 2
        if verb == b"MSG" and len(parts) in (4, 5):
            size = _size(parts[-1], max_payload)
            skip = 0
        elif verb == b"HMSG" and len(parts) in (5, 6):
            skip = _size(parts[-2], max_payload)
            size = _size(parts[-1], max_payload)
            if skip > size:
                raise ProtocolError(f"headers of {skip} bytes in a message of {size}")
        else:
            raise ProtocolError(f"not a NATS message line: {line[:64]!r}")
        stop = start + size
        if stop + 2 > end:
            return None
        if buf[stop : stop + 2] != b"\r\n":
            raise ProtocolError(f"a payload of {size} bytes not followed by CRLF")
        subject = parts[1]
        if not subject:
            raise ProtocolError("a message without a subject")
        return subject, bytes(buf[start + skip : stop]), stop + 2
    line = bytes(buf[pos:nl])
    verb = line.split(b" ", 1)[0]
    if verb not in CONTROL_VERBS:
        raise ProtocolError(f"not a NATS control line: {line[:64]!r}")
    return None, line, nl + 2


def topic_of(subject: bytes) -> bytes:
    """The MQTT topic of a NATS subject, as bytes."""
    if b"/" not in subject:
        return subject.replace(b".", b"/")
    return subject_to_topic(subject.decode(errors="surrogateescape")).encode(
        errors="surrogateescape"
    )


def connect_line(options: bytes) -> bytes:
    """The CONNECT line, with its JSON options."""
    return b"CONNECT " + options + b"\r\n"


def sub_line(subject: str, sid: int, queue: str = "") -> bytes:
    """A SUB line: in queue group ``queue`` if given."""
    group = f" {queue}" if queue else ""
    return f"SUB {subject}{group} {sid}\r\n".encode()
