"""The NATS client protocol as the lean telemetry link reads it: frames split in place,
whatever way the bytes were cut across reads, and anything else refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker.nats import subject_to_topic, topic_to_subject
from actimesh.broker.nats._wire import (
    MAX_CONTROL_LINE,
    ProtocolError,
    next_frame,
    sub_line,
    topic_of,
)

LIMIT = 1024


def msg(subject: bytes, payload: bytes, *, sid: int = 1, reply: bytes = b"") -> bytes:
    head = b" ".join(p for p in (b"MSG", subject, b"%d" % sid, reply, b"%d" % len(payload)) if p)
    return head + b"\r\n" + payload + b"\r\n"


def hmsg(subject: bytes, headers: bytes, payload: bytes, *, reply: bytes = b"") -> bytes:
    sizes = b"%d %d" % (len(headers), len(headers) + len(payload))
    head = b" ".join(p for p in (b"HMSG", subject, b"7", reply, sizes) if p)
    return head + b"\r\n" + headers + payload + b"\r\n"


def split_all(data: bytes, limit: int = LIMIT) -> tuple[list[tuple[bytes | None, bytes]], int]:
    """Every complete frame of ``data``, and where the unparsed rest starts."""
    buf = bytearray(data)
    pos, frames = 0, []
    while (found := next_frame(buf, pos, len(buf), limit)) is not None:
        subject, body, pos = found
        frames.append((subject, body))
    return frames, pos


def test_a_message_its_subject_and_payload() -> None:
    frames, rest = split_all(msg(b"am.v1.ag.dev.cam1.telemetry", b"{}"))
    assert frames == [(b"am.v1.ag.dev.cam1.telemetry", b"{}")]
    assert rest == len(msg(b"am.v1.ag.dev.cam1.telemetry", b"{}"))


def test_a_reply_subject_is_skipped_and_an_empty_payload_is_a_message() -> None:
    frames, _ = split_all(msg(b"a.b", b"", reply=b"_INBOX.x") + msg(b"a.c", b"x\r\ny"))
    assert frames == [(b"a.b", b""), (b"a.c", b"x\r\ny")]  # CRLF inside a payload is data


def test_hmsg_gives_the_payload_without_the_headers() -> None:
    headers = b"NATS/1.0\r\nNmqtt-Pub: 1\r\n\r\n"
    data = hmsg(b"am.v1.ag.dev.c.telemetry", headers, b"fix") + hmsg(b"x", headers, b"", reply=b"r")
    frames, _ = split_all(data)
    assert frames == [(b"am.v1.ag.dev.c.telemetry", b"fix"), (b"x", b"")]


def test_control_lines_come_back_as_lines() -> None:
    data = (
        b"INFO {\"max_payload\":1048576}\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Permissions Violation'\r\n"
    )
    frames, _ = split_all(data)
    assert [subject for subject, _ in frames] == [None] * 5
    assert [line.split(b" ")[0] for _, line in frames] == [
        b"INFO",
        b"PING",
        b"PONG",
        b"+OK",
        b"-ERR",
    ]


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT])
def test_a_payload_up_to_the_limit_is_taken(size: int) -> None:
    frames, _ = split_all(msg(b"s", b"p" * size))
    assert frames == [(b"s", b"p" * size)]


def test_a_payload_one_byte_over_the_limit_is_refused() -> None:
    with pytest.raises(ProtocolError, match="above the limit"):
        split_all(msg(b"s", b"p" * (LIMIT + 1)))
    headers = b"NATS/1.0\r\n\r\n"
    with pytest.raises(ProtocolError, match="above the limit"):
        split_all(hmsg(b"s", headers, b"p" * (LIMIT + 1 - len(headers))))


def test_a_frame_cut_anywhere_waits_for_the_rest() -> None:
    data = msg(b"a.b", b"0123456789") + hmsg(b"c", b"NATS/1.0\r\n\r\n", b"xy") + b"PING\r\n"
    for cut in range(len(data)):
        buf = bytearray(data[:cut])
        pos, seen = 0, []
        while (found := next_frame(buf, pos, len(buf), LIMIT)) is not None:
            seen.append(found[:2])
            pos = found[2]
        buf += data[cut:]
        while (found := next_frame(buf, pos, len(buf), LIMIT)) is not None:
            seen.append(found[:2])
            pos = found[2]
        assert seen == [(b"a.b", b"0123456789"), (b"c", b"xy"), (None, b"PING")], cut
        assert pos == len(data)


@pytest.mark.parametrize(
    "garbage",
    [
        b"HELLO\r\n",
        b"MSG a.b 1\r\n",  # no size
        b"MSG a.b 1 x\r\nxx\r\n",  # a size that is not a number
        b"MSG a.b 1 -1\r\n\r\n",
        b"MSG a.b 1 +2\r\nxx\r\n",
        b"MSG a.b 1 2\r\nxxyy",  # no CRLF after the payload
        b"HMSG a 1 5 2\r\nxx\r\n",  # headers larger than the message
        b"MSG  1 2\r\nxx\r\n",  # no subject
        b"\x00\xff\r\n",
    ],
)
def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        split_all(garbage)


def test_a_line_that_never_ends_is_refused_not_buffered_forever() -> None:
    assert split_all(b"INFO " + b"x" * 100)[0] == []  # not yet complete: wait
    with pytest.raises(ProtocolError, match="no end of line"):
        split_all(b"INFO " + b"x" * MAX_CONTROL_LINE)


_subject_token = st.text(alphabet="abcXYZ09-_/", min_size=1, max_size=6)
_subjects = st.lists(_subject_token, min_size=1, max_size=5).map(".".join)
#: One frame as (kind, subject, headers, payload); kind is "MSG", "HMSG" or a control line.
_frames = st.tuples(
    st.sampled_from(["MSG", "HMSG", "PING", "PONG", "+OK", "-ERR 'x'", 'INFO {"a":1}']),
    _subjects,
    st.binary(max_size=LIMIT // 2),
    st.binary(max_size=LIMIT // 2),
)


@given(st.lists(_frames, max_size=20), st.lists(st.integers(min_value=1, max_value=300)))
def test_any_stream_cut_into_any_reads_splits_into_what_was_sent(
    frames: list[tuple[str, str, bytes, bytes]], reads: list[int]
) -> None:
    data = b""
    expected: list[tuple[bytes | None, bytes]] = []
    for kind, subject, extra, payload in frames:
        if kind == "MSG":
            data += msg(subject.encode(), payload)
            expected.append((subject.encode(), payload))
        elif kind == "HMSG":
            data += hmsg(subject.encode(), b"NATS/1.0\r\n" + extra, payload, reply=b"r.1")
            expected.append((subject.encode(), payload))
        else:
            data += kind.encode() + b"\r\n"
            expected.append((None, kind.encode()))
    # The reader's way: bytes arrive in reads of any size at the end of the buffer.
    buf = bytearray()
    pos, seen, offset = 0, [], 0
    for size in [*reads, len(data)]:
        buf += data[offset : offset + size]
        offset += size
        while (found := next_frame(buf, pos, len(buf), 2 * LIMIT)) is not None:
            seen.append(found[:2])
            pos = found[2]
    assert seen == expected
    assert pos == len(data)


@given(st.lists(st.text(alphabet="ab.c-_", max_size=4), min_size=1, max_size=5).map("/".join))
def test_topic_of_is_the_listeners_rule_on_bytes(topic: str) -> None:
    subject = topic_to_subject(topic)
    assert topic_of(subject.encode()) == subject_to_topic(subject).encode() == topic.encode()


def test_a_sub_line_names_its_queue_group() -> None:
    assert sub_line("am.v1.ag.dev.*.telemetry", 3) == b"SUB am.v1.ag.dev.*.telemetry 3\r\n"
    assert sub_line("a.>", 1, "relay") == b"SUB a.> relay 1\r\n"
