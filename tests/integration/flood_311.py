"""A stolen device flooding over MQTT 3.1.1 from a raw socket (not a test).

A NATS cluster's MQTT listener speaks 3.1.1 only, and stores a QoS 1 message in
JetStream before it acknowledges it: that is where a trigger event, an acknowledgement
or a presence message must go to reach the engine (a QoS 0 one never does). A client
library that waits for each PUBACK floods at one message per round trip; this one keeps
:data:`FLOOD_WINDOW` QoS 1 messages in flight, as many as the listener will take, and
writes them in batches, so the flood goes as fast as the link allows. At QoS 0 it writes
without waiting for anything. It stops when the broker closes the connection (a
quarantine) or the login is refused.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from actimesh.broker.wire import encode_varint, next_packet

__all__ = ["FLOOD_WINDOW", "connect_311", "flood_311", "publish_311"]

#: QoS 1 messages sent and not acknowledged yet, at most (packet ids never collide).
FLOOD_WINDOW = 256
_BATCH = 64
_U16 = struct.Struct("!H")
_PUBACK = 0x40


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return _U16.pack(len(raw)) + raw


def connect_311(client_id: str, username: str | None, password: str | None) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, no keepalive, no will."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _string("MQTT") + bytes((4, flags)) + _U16.pack(0) + _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return bytes((0x10,)) + encode_varint(len(body)) + body


def publish_311(topic: bytes, payload: bytes, qos: int, packet_id: int) -> bytes:
    """PUBLISH at QoS 0 or 1 (``packet_id`` only at QoS 1)."""
    pid = _U16.pack(packet_id) if qos else b""
    body = _string(topic) + pid + payload
    return bytes((0x30 | (qos << 1),)) + encode_varint(len(body)) + body


class _ClosedError(Exception):
    """The broker closed the connection."""


async def flood_311(
    port: int,
    topic: str,
    message: Callable[[int], bytes],
    login: tuple[str | None, str | None, str],
    qos: int,
    *,
    on_start: Callable[[], None] = lambda: None,
) -> int:
    """Publish ``message(i)`` to ``topic`` until the broker closes the connection; the
    number of messages written. ``login`` is (username, password, client id)."""
    username, password, client_id = login
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(connect_311(client_id, username, password))
    connack = await reader.readexactly(4)
    if connack[0] >> 4 != 2 or connack[3] != 0:
        writer.close()
        raise ConnectionRefusedError(f"CONNACK {connack.hex()}")
    on_start()
    window = asyncio.Semaphore(FLOOD_WINDOW)
    raw_topic = topic.encode()
    sent = 0

    async def acknowledged() -> None:
        buf = bytearray()
        while data := await reader.read(65536):
            buf += data
            pos = 0
            while (found := next_packet(buf, pos, len(buf), 1 << 20)) is not None:
                first, _, pos = found
                if first >> 4 == _PUBACK >> 4:
                    window.release()
            del buf[:pos]
        raise _ClosedError

    async def write() -> None:
        nonlocal sent
        while True:
            batch = []
            for _ in range(_BATCH):
                if qos:
                    await window.acquire()
                batch.append(publish_311(raw_topic, message(sent), qos, sent % 0xFFFF + 1))
                sent += 1
            writer.write(b"".join(batch))
            await writer.drain()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(acknowledged(), name="flood-acks")
            tg.create_task(write(), name="flood-write")
    except* (_ClosedError, ConnectionError):
        pass
    finally:
        writer.close()
    return sent
