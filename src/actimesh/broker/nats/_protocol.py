"""What the NATS links say to the server below nats-py's conveniences: messages handed
to the connection's buffer and written in this turn of the loop, and requests (the
JetStream API) bounded by ``asyncio.timeout``, because nats-py's own waits use
``asyncio.wait_for``, which can lose a cancellation on Python 3.11 (FIELD-NOTES §8).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.protocol import command as protocol

from actimesh.broker.nats.subjects import MQTT_QOS_HEADER
from actimesh.errors import BrokerError

__all__ = [
    "JS_API",
    "NS",
    "QOS1_HEADERS",
    "STREAM_NOT_FOUND",
    "hand_over",
    "headers_block",
    "js_api",
    "pub",
    "request",
    "request_to",
    "round_trip",
    "status_of",
    "write_pending",
]

JS_API = "$JS.API."
#: Nanoseconds in a second: JetStream's durations.
NS = 1_000_000_000
#: JetStream's error code for a stream that does not exist.
STREAM_NOT_FOUND = 10059


# nats-py writes through a buffer of its own, flushed by a task at the loop's next turn,
# and its publish is a coroutine. The command path hands a message over without
# awaiting and writes it in this turn, so these two functions reach into that buffer,
# doing what the client's own ``_send_command`` and flusher do. They are the only
# places that touch nats-py's private parts (tests/broker/test_nats_transport.py holds
# them to it).
def hand_over(nc: NatsClient, cmd: bytes) -> None:
    client: Any = nc
    client._pending.append(cmd)
    client._pending_data_size += len(cmd)


def write_pending(nc: NatsClient) -> None:
    client: Any = nc
    if nc.is_connected and client._pending_data_size > 0:
        client._transport.writelines(client._pending[:])
        client._pending = []
        client._pending_data_size = 0


def headers_block(values: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in values.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


QOS1_HEADERS = headers_block({MQTT_QOS_HEADER: "1"})


def pub(subject: str, payload: bytes, *, reply: str = "", headers: bytes | None = None) -> bytes:
    if headers is None:
        return protocol.pub_cmd(subject, reply, payload)
    return protocol.hpub_cmd(subject, reply, headers, payload)


def status_of(msg: Msg) -> str | None:
    headers = msg.headers
    return None if not headers or msg.data else headers.get("Status")


async def request(nc: NatsClient, subject: str, body: dict[str, Any], timeout: float) -> Msg:
    """One request and its reply, bounded by ``asyncio.timeout``."""
    return await request_to(nc, subject, nc.new_inbox(), json.dumps(body).encode(), timeout)


async def request_to(
    nc: NatsClient, subject: str, inbox: str, payload: bytes, timeout: float
) -> Msg:
    reply: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def take(msg: Msg) -> None:
        if not reply.done():
            reply.set_result(msg)

    sub = await nc.subscribe(inbox, cb=take)
    try:
        await nc.publish(subject, payload, reply=inbox)
        async with asyncio.timeout(timeout):
            return await reply
    except TimeoutError as exc:
        raise BrokerError(f"no answer to {subject} within {timeout:g} s") from exc
    finally:
        with contextlib.suppress(nats.errors.Error):  # gone with its connection
            await sub.unsubscribe()


async def round_trip(nc: NatsClient, timeout: float) -> None:
    """Return once the server has processed what this connection sent before (its
    subscriptions among them): a message to ourselves has come back."""
    inbox = nc.new_inbox()
    await request_to(nc, inbox, inbox, b"", timeout)


async def js_api(nc: NatsClient, api: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """A JetStream API call; BrokerError with the server's reason if it refuses."""
    msg = await request(nc, JS_API + api, body, timeout)
    if status_of(msg) == "503":
        raise BrokerError(f"JetStream is not available for {api} (no responders)")
    answer: dict[str, Any] = json.loads(msg.data)
    return answer
