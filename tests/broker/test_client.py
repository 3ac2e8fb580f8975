"""The resilient client's guards that are not visible through the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from types import SimpleNamespace
from typing import Any, cast

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from actimesh.broker.client import (
    InFlight,
    LinkSettings,
    LinkStats,
    MqttLink,
    Subscription,
    _Inbox,
    _no_lost_cancel,
    _publish_properties,
    as_bytes,
)
from actimesh.errors import BrokerError
from tests.waiting import eventually, quiet_for


async def _cancel_as_it_completes(
    wait: Callable[[asyncio.Future[None]], Coroutine[Any, Any, None]],
) -> bool:
    """Cancel a task in the same turn as the future it waits on completes (the race
    that Python 3.11's ``asyncio.wait_for`` loses). True if the cancellation arrived."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(wait(fut))
    await asyncio.sleep(0)  # the task now waits on fut
    fut.set_result(None)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 rewrote wait_for on timeout()")
async def test_stock_wait_for_loses_the_cancellation_on_311() -> None:
    """The bug the adapter guards against, shown: the check below can fail."""

    async def stock(fut: asyncio.Future[None]) -> None:
        await asyncio.wait_for(fut, timeout=10)

    assert not await _cancel_as_it_completes(stock)


async def test_aiomqtt_waits_never_lose_a_cancellation() -> None:
    """CONNACK, SUBACK, PUBACK and disconnect waits inside aiomqtt go through
    ``_wait_for``; the link's clients have it on ``asyncio.timeout``."""
    client = aiomqtt.Client("127.0.0.1", 1)
    _no_lost_cancel(client)

    async def through_aiomqtt(fut: asyncio.Future[None]) -> None:
        await client._wait_for(fut, timeout=10)

    for _ in range(100):
        assert await _cancel_as_it_completes(through_aiomqtt)


async def test_a_late_suback_after_a_cancelled_subscribe_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiomqtt logs the SUBACK of a subscribe whose wait was cancelled as an exception;
    nobody waits for it any more, so the link's logger keeps it at DEBUG."""
    link = MqttLink(LinkSettings(host="127.0.0.1", port=1, client_id="late-suback"))
    client = link._make_client()
    with caplog.at_level(logging.DEBUG, logger="actimesh.mqtt.late-suback"):
        client._on_subscribe(client._client, None, 7, [], None)
        client._on_unsubscribe(client._client, None, 8, [], None)
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.DEBUG, None)] * 2
    caplog.clear()
    client._on_subscribe(client._client, None, 9, [], None)  # DEBUG is off: not emitted
    assert caplog.records == []


class _ResetSocket:
    """A socket the broker has reset, as paho sees it."""

    def recv(self, bufsize: int) -> bytes:
        raise ConnectionResetError(104, "Connection reset by peer")


async def test_a_connection_the_broker_reset_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """paho logs a reset connection as an error; the link reconnects by itself and logs
    the loss at INFO, so its logger keeps paho's line at DEBUG."""
    link = MqttLink(LinkSettings(host="127.0.0.1", port=1, client_id="reset"))
    paho_client = link._make_client()._client
    paho_client._sock = cast(Any, _ResetSocket())
    try:
        with caplog.at_level(logging.DEBUG, logger="actimesh.mqtt.reset"):
            paho_client._packet_read()
    finally:
        paho_client._sock = None  # nothing for the client's clean-up to close
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "failed to receive on socket: [Errno 104] Connection reset by peer")
    ]


async def test_aiomqtt_wait_still_times_out_as_aiomqtt_does() -> None:
    client = aiomqtt.Client("127.0.0.1", 1, timeout=0.01)
    _no_lost_cancel(client)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(aiomqtt.MqttError, match="timed out"):
        await client._wait_for(never, timeout=None)  # None: the client's own timeout
    assert never.cancelled()


async def test_waiting_for_a_puback_never_loses_a_cancellation() -> None:
    async def confirmed(fut: asyncio.Future[None]) -> None:
        await InFlight("t", fut, math.inf, lambda: None, LinkStats()).confirmed()

    for _ in range(100):
        assert await _cancel_as_it_completes(confirmed)


async def _receive_once(
    port: int, topic: str, client_id: str, *, ack: bool, timeout: float = 2.0
) -> list[bytes]:
    """Connect a manual-ack link with a persistent session, collect what arrives."""
    got: list[bytes] = []
    done = asyncio.Event()
    link: MqttLink

    async def handler(message: aiomqtt.Message) -> None:
        got.append(as_bytes(message.payload))
        if ack:
            assert link.ack(message, link.current_client)
        done.set()

    link = MqttLink(
        LinkSettings(
            host="127.0.0.1",
            port=port,
            client_id=client_id,
            session_expiry_s=60,
            manual_ack=True,
            subscriptions=(Subscription(topic, 1),),
        ),
        handler,
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run())
        await link.wait_connected()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await done.wait()

        def nothing_left_to_send() -> bool:
            # The PUBACK of a manual ack is queued in paho and written at a turn of the
            # loop: gone from paho's queue, it is on the wire before the disconnect.
            client = link.current_client
            return client is None or not client._client.want_write()

        await eventually(nothing_left_to_send, timeout=5)
        task.cancel()
    return got


async def test_unacknowledged_message_is_redelivered_until_acknowledged(
    broker_port: int, agency: str
) -> None:
    topic = f"{agency}/manual"
    client_id = f"{agency}-manual"
    assert await _receive_once(broker_port, topic, client_id, ack=False, timeout=0.3) == []
    async with aiomqtt.Client("127.0.0.1", broker_port) as publisher:
        await publisher.publish(topic, b"trigger", qos=1)
    # Received, not acknowledged (as if the engine died before its ledger write) ...
    assert await _receive_once(broker_port, topic, client_id, ack=False) == [b"trigger"]
    # ... so the broker delivers it again; this time it is acknowledged ...
    assert await _receive_once(broker_port, topic, client_id, ack=True) == [b"trigger"]
    # ... and never again.
    assert await _receive_once(broker_port, topic, client_id, ack=True, timeout=0.5) == []


async def test_ack_on_a_dead_connection_is_refused(broker_port: int, agency: str) -> None:
    link = MqttLink(LinkSettings(host="127.0.0.1", port=broker_port, client_id=agency))
    message = aiomqtt.Message(f"{agency}/x", b"", qos=1, retain=False, mid=1, properties=None)
    assert not link.ack(message, None)


async def test_a_failed_on_connect_reconnects_instead_of_ending_the_link(
    broker_port: int, agency: str
) -> None:
    # A device announces itself on connect; on a cluster electing a new leader for the
    # store behind it that publish times out. The link must connect again, not die.
    calls = 0

    async def announce(_link: MqttLink) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BrokerError("publish to presence failed: Operation timed out")

    link = MqttLink(
        LinkSettings(host="127.0.0.1", port=broker_port, client_id=agency, backoff_initial_s=0.01),
        on_connect=announce,
    )
    task = asyncio.create_task(link.run(), name=agency)
    try:
        await link.wait_connected(timeout=5)
        assert calls == 2
        assert link.stats.connects == 2
        assert "Operation timed out" in link.stats.last_error
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------- publish_nowait
async def _connected_link(port: int, client_id: str) -> tuple[MqttLink, asyncio.Task[None]]:
    link = MqttLink(LinkSettings(host="127.0.0.1", port=port, client_id=client_id))
    task = asyncio.create_task(link.run(), name=client_id)
    await link.wait_connected(timeout=5)
    return link, task


async def test_publish_nowait_is_on_the_wire_before_the_loop_turns(
    broker_port: int, agency: str
) -> None:
    topic = f"{agency}/cmd"
    async with aiomqtt.Client("127.0.0.1", broker_port, protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe(topic, qos=1)
        link, task = await _connected_link(broker_port, f"{agency}-pub")
        try:
            client = link.current_client
            assert client is not None
            inflight = link.publish_nowait(topic, b"command", qos=1, expiry_s=30)
            assert client._client.want_write()  # queued in paho, not yet written
            link.flush()
            assert not client._client.want_write()  # written, with no turn of the loop
            await inflight.confirmed()  # the broker's PUBACK
            assert link.stats.published == 1
            async with asyncio.timeout(5):
                message = await anext(aiomqtt_messages(sub))
            assert message.payload == b"command"
            assert message.properties is not None
            expiry = message.properties.MessageExpiryInterval  # type: ignore[attr-defined]
            assert 1 <= expiry <= 30
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def aiomqtt_messages(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message]:
    async for message in client.messages:
        yield message


async def test_flush_leaves_no_write_callback_spinning(broker_port: int, agency: str) -> None:
    """paho withdraws its write interest in flush() before aiomqtt has added it; the
    writer added afterwards must go too, or the loop spins on a writable socket."""
    link, task = await _connected_link(broker_port, f"{agency}-spin")
    try:
        client = link.current_client
        assert client is not None
        writes = 0
        original = client._client.loop_write

        def counting_loop_write() -> Any:
            nonlocal writes
            writes += 1
            return original()

        client._client.loop_write = counting_loop_write  # type: ignore[method-assign]
        sent = []
        for k in range(3):
            sent.append(link.publish_nowait(f"{agency}/spin/{k}", b"x", qos=1))
            link.flush()
        for inflight in sent:
            await inflight.confirmed()
        # The publishes went out and came back acknowledged: a write callback left
        # behind would now spin on the idle socket; give it the time to show.
        await quiet_for(0.2)
        assert writes <= 6  # our three flushes, and at most one idle callback each
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_publish_nowait_without_a_connection_fails_at_once(agency: str) -> None:
    link = MqttLink(LinkSettings(host="127.0.0.1", port=1, client_id=agency))
    with pytest.raises(BrokerError, match="not connected"):
        link.publish_nowait(f"{agency}/x", b"", qos=1)
    link.flush()  # nothing to write, no connection: a no-op


async def test_a_publish_never_acknowledged_fails_at_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    released: list[bool] = []
    stats = LinkStats()
    inflight = InFlight(
        "t/x", loop.create_future(), loop.time() + 0.05, lambda: released.append(True), stats
    )
    with pytest.raises(BrokerError, match="not acknowledged"):
        await inflight.confirmed()
    assert released == [True]  # aiomqtt's pending entry is dropped with it
    assert stats.published == 0


def test_expiry_properties_are_packed_once_and_shared() -> None:
    fresh = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    fresh.MessageExpiryInterval = 300
    first = _publish_properties(300.7, ())
    assert first is _publish_properties(300.2, ())
    assert first is not None
    assert first.pack() == first.pack() == fresh.pack()  # type: ignore[no-untyped-call]
    assert _publish_properties(None, ()) is None
    with_user = _publish_properties(5, [("trace", "1")])
    assert with_user is not None
    assert with_user is not _publish_properties(5, [("trace", "1")])  # not cached


# ---------------------------------------------------------------- the inbox
def _message(n: int) -> aiomqtt.Message:
    return aiomqtt.Message(f"t/{n}", b"%d" % n, qos=1, retain=False, mid=n, properties=None)


def _fake_client() -> tuple[aiomqtt.Client, asyncio.Future[None]]:
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    return cast(aiomqtt.Client, SimpleNamespace(_disconnected=gone)), gone


async def test_inbox_hands_over_everything_queued_in_one_batch() -> None:
    inbox = _Inbox(LinkStats())
    queue = inbox.queue_type()(maxsize=100)
    client, _ = _fake_client()
    for n in range(5):
        queue.put_nowait(_message(n))
    batches = inbox.batches(client, most=3)
    assert [m.mid for m in await anext(batches)] == [0, 1, 2]  # at most ``most``
    assert [m.mid for m in await anext(batches)] == [3, 4]
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0)
    assert not waiting.done()  # nothing queued: it waits ...
    queue.put_nowait(_message(5))
    assert [m.mid for m in await waiting] == [5]  # ... and the next message wakes it
    await batches.aclose()


async def test_inbox_ends_with_the_connection_and_says_why() -> None:
    inbox = _Inbox(LinkStats())
    inbox.queue_type()(maxsize=10)
    client, gone = _fake_client()
    batches = inbox.batches(client, most=10)
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0)
    gone.set_exception(aiomqtt.MqttError("keepalive timeout"))
    with pytest.raises(aiomqtt.MqttError, match="disconnected") as caught:
        await waiting
    assert "keepalive timeout" in str(caught.value.__cause__)


async def test_inbox_counts_what_overflows() -> None:
    stats = LinkStats()
    inbox = _Inbox(stats)
    queue = inbox.queue_type()(maxsize=2)
    queue.put_nowait(_message(1))
    queue.put_nowait(_message(2))
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(_message(3))  # aiomqtt catches this and logs; the link counts it
    assert stats.dropped_incoming == 1


async def test_a_burst_reaches_the_handler_in_order(broker_port: int, agency: str) -> None:
    topic = f"{agency}/burst"
    got: list[bytes] = []
    done = asyncio.Event()

    async def handler(message: aiomqtt.Message) -> None:
        got.append(as_bytes(message.payload))
        if len(got) == 500:
            done.set()

    link = MqttLink(
        LinkSettings(
            host="127.0.0.1",
            port=broker_port,
            client_id=f"{agency}-burst",
            subscriptions=(Subscription(topic, 1),),
        ),
        handler,
    )
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected(timeout=5)
        async with aiomqtt.Client("127.0.0.1", broker_port) as publisher:
            for n in range(500):
                await publisher.publish(topic, b"%d" % n, qos=1)
        async with asyncio.timeout(10):
            await done.wait()
        assert got == [b"%d" % n for n in range(500)]
        assert link.stats.received == 500
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
