"""The lean telemetry subscriber against a real Mosquitto: batches, bounds, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from actimesh.broker import wire
from actimesh.broker.client import LinkSettings, Subscription
from actimesh.broker.ingest import LatestStreamSubscriber, LeanSubscriber, Publish, StreamSubscriber
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.errors import BrokerError
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def settings(host: str, port: int, topic: str, **kw: object) -> LinkSettings:
    return LinkSettings(
        host=host,
        port=port,
        client_id=f"ingest-{topic.split('/')[2]}",
        subscriptions=(Subscription(topic, 0),),
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        **kw,  # type: ignore[arg-type]
    )


def publish_raw(host: str, port: int, frames: Sequence[bytes]) -> None:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(wire.connect_packet("ingest-pub", keepalive_s=0))
        assert sock.recv(64)[0] >> 4 == wire.CONNACK
        sock.sendall(b"".join(frames) + wire.DISCONNECT_PACKET)


@contextlib.asynccontextmanager
async def running(sub: LeanSubscriber[Publish]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sub.run(), name="ingest-under-test")
    try:
        await sub.wait_connected(5)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_every_message_arrives_in_order_in_bounded_batches(
    broker_host: str, broker_port: int, agency: str
) -> None:
    got: list[Publish] = []
    sizes: list[int] = []

    async def handler(batch: Sequence[Publish]) -> None:
        sizes.append(len(batch))
        got.extend(batch)

    topic = f"am/v1/{agency}/dev/+/telemetry"
    sub = StreamSubscriber(settings(broker_host, broker_port, topic), handler, batch_size=50)
    frames = [
        wire.publish_packet(f"am/v1/{agency}/dev/d{i % 7}/telemetry", b"%d" % i)
        for i in range(2_000)
    ]
    async with running(sub):
        await asyncio.to_thread(publish_raw, broker_host, broker_port, frames)
        await eventually(lambda: len(got) == 2_000)
    assert [int(p) for _, p in got] == list(range(2_000))
    assert got[3][0] == f"am/v1/{agency}/dev/d3/telemetry".encode()
    assert max(sizes) <= 50
    assert sub.stats.received == 2_000
    assert sub.stats.dropped_incoming == 0
    assert not sub.connected


async def test_a_full_backlog_drops_the_oldest_and_counts(
    broker_host: str, broker_port: int, agency: str
) -> None:
    release = asyncio.Event()
    got: list[Publish] = []
    held: list[int] = []  # the size of the batch the handler held while the backlog filled

    async def handler(batch: Sequence[Publish]) -> None:
        if not held:
            held.append(len(batch))
        await release.wait()
        got.extend(batch)

    topic = f"am/v1/{agency}/dev/+/telemetry"
    sub = StreamSubscriber(
        settings(broker_host, broker_port, topic, max_queued_incoming=100), handler, batch_size=10
    )
    frames = [wire.publish_packet(f"am/v1/{agency}/dev/x/telemetry", b"%d" % i) for i in range(500)]
    async with running(sub):
        await asyncio.to_thread(publish_raw, broker_host, broker_port, frames)
        await eventually(lambda: sub.stats.received == 500)
        release.set()
        await eventually(lambda: sub.backlog == 0 and len(got) == 500 - sub.stats.dropped_incoming)
    # The first batch (up to 10, fewer if it was taken before ten had arrived) was held
    # by the handler; the backlog kept 100; everything else was dropped and counted.
    assert 1 <= held[0] <= 10
    assert sub.stats.dropped_incoming == 500 - 100 - held[0]
    assert got[-1][1] == b"499"  # the newest survive


class _HeldFirst:
    """A handler that holds its first batch until released, so that what the broker
    sends next queues behind it: the latest stream is *behind*."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held: list[Publish] = []
        self.got: list[Publish] = []

    async def __call__(self, batch: Sequence[Publish]) -> None:
        if not self.held:
            self.held.extend(batch)
            await self.release.wait()
        else:
            self.got.extend(batch)


async def _queue_behind_the_first(
    sub: LatestStreamSubscriber,
    handler: _HeldFirst,
    host: str,
    port: int,
    agency: str,
    frames: list[bytes],
) -> None:
    """Send one message the handler holds, then ``frames``, and wait until all arrived."""
    first = wire.publish_packet(f"am/v1/{agency}/dev/first/telemetry", b"first")
    await asyncio.to_thread(publish_raw, host, port, [first])
    await eventually(lambda: handler.held)
    await asyncio.to_thread(publish_raw, host, port, frames)
    await eventually(lambda: sub.stats.received == len(frames) + 1)


async def test_the_latest_stream_keeps_each_devices_newest_fix_in_its_place(
    broker_host: str, broker_port: int, agency: str
) -> None:
    handler = _HeldFirst()
    topic = f"am/v1/{agency}/dev/+/telemetry"
    sub = LatestStreamSubscriber(
        settings(broker_host, broker_port, topic), handler, supersede_above=7
    )
    # The first message is held by the handler; behind it 7 devices report 100 times
    # each, round robin: once 7 wait (it is behind), each device keeps its place in line
    # with its newest fix.
    frames = [
        wire.publish_packet(f"am/v1/{agency}/dev/d{i % 7}/telemetry", b"%d" % i) for i in range(700)
    ]
    async with running(sub):
        await _queue_behind_the_first(sub, handler, broker_host, broker_port, agency, frames)
        assert sub.backlog == 7
        handler.release.set()
        await eventually(lambda: len(handler.got) == 7)
    got = handler.got
    assert [t for t, _ in got] == [f"am/v1/{agency}/dev/d{k}/telemetry".encode() for k in range(7)]
    assert [int(p) for _, p in got] == list(range(693, 700))
    assert sub.stats.superseded == 700 - 7
    assert sub.stats.dropped_incoming == 0


async def test_the_latest_stream_hands_over_every_message_while_it_keeps_up(
    broker_host: str, broker_port: int, agency: str
) -> None:
    # Below its shedding point every message reaches the engine: a malformed one is
    # dead-lettered and a device's flood is charged to its rate budget.
    handler = _HeldFirst()
    topic = f"am/v1/{agency}/dev/+/telemetry"
    sub = LatestStreamSubscriber(
        settings(broker_host, broker_port, topic), handler, supersede_above=100
    )
    frames = [
        wire.publish_packet(f"am/v1/{agency}/dev/d{i % 3}/telemetry", b"%d" % i) for i in range(60)
    ]
    async with running(sub):
        await _queue_behind_the_first(sub, handler, broker_host, broker_port, agency, frames)
        handler.release.set()
        await eventually(lambda: len(handler.got) == 60)
    assert [int(p) for _, p in handler.got] == list(range(60))
    assert sub.stats.superseded == 0


async def test_the_latest_stream_drops_the_longest_waiting_device_beyond_its_bound(
    broker_host: str, broker_port: int, agency: str
) -> None:
    handler = _HeldFirst()
    topic = f"am/v1/{agency}/dev/+/telemetry"
    sub = LatestStreamSubscriber(
        settings(broker_host, broker_port, topic, max_queued_incoming=10), handler
    )
    frames = [
        wire.publish_packet(f"am/v1/{agency}/dev/d{i}/telemetry", b"%d" % i) for i in range(30)
    ]
    async with running(sub):
        await _queue_behind_the_first(sub, handler, broker_host, broker_port, agency, frames)
        handler.release.set()
        await eventually(lambda: len(handler.got) == 10)
    assert [int(p) for _, p in handler.got] == list(range(20, 30))  # the newest devices survive
    assert sub.stats.dropped_incoming == 20
    assert sub.stats.superseded == 0


@pytest.mark.logs_exception(RuntimeError, reason="the handler raises on the bad batch on purpose")
async def test_a_failing_batch_is_counted_and_the_stream_goes_on(
    broker_host: str, broker_port: int, agency: str
) -> None:
    got: list[Publish] = []

    async def handler(batch: Sequence[Publish]) -> None:
        if batch[0][1] == b"bad":
            raise RuntimeError("boom")
        got.extend(batch)

    topic = f"am/v1/{agency}/dev/+/telemetry"
    sub = StreamSubscriber(settings(broker_host, broker_port, topic), handler, batch_size=1)
    t = f"am/v1/{agency}/dev/a/telemetry"
    async with running(sub):
        frames = [wire.publish_packet(t, b"bad"), wire.publish_packet(t, b"ok")]
        await asyncio.to_thread(publish_raw, broker_host, broker_port, frames)
        await eventually(lambda: len(got) == 1)
    assert sub.stats.handler_errors == 1


async def test_reconnects_and_subscribes_again_after_a_broker_restart(
    fresh_mosquitto: ManagedMosquitto, agency: str
) -> None:
    got: list[Publish] = []

    async def handler(batch: Sequence[Publish]) -> None:
        got.extend(batch)

    host, port = fresh_mosquitto.host, fresh_mosquitto.port
    topic = f"am/v1/{agency}/dev/+/telemetry"
    sub = StreamSubscriber(settings(host, port, topic, keepalive_s=2), handler)
    frame = wire.publish_packet(f"am/v1/{agency}/dev/a/telemetry", b"1")
    async with running(sub):
        await fresh_mosquitto.arestart()
        await eventually(lambda: sub.stats.connects == 2 and sub.connected)
        await asyncio.to_thread(publish_raw, host, port, [frame])
        await eventually(lambda: len(got) == 1)
        # Time itself is under test: the first keepalive ping leaves keepalive/2 = 1 s
        # after the connect and nothing outside the link counts it or its answer, so
        # let that interval pass and see the link still up.
        await asyncio.sleep(1.5)
        assert sub.connected
    assert sub.stats.disconnects >= 1


async def test_no_broker_is_a_one_line_error() -> None:
    async def handler(batch: Sequence[Publish]) -> None:
        raise AssertionError("no messages without a broker")

    port = free_port()
    sub = StreamSubscriber(settings("127.0.0.1", port, "am/v1/x/dev/+/telemetry"), handler)
    task = asyncio.create_task(sub.run())
    try:
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port}"):
            await sub.wait_connected(0.3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_settings_are_checked() -> None:
    async def handler(batch: Sequence[Publish]) -> None:
        return None

    with pytest.raises(ValueError, match="subscription"):
        StreamSubscriber(LinkSettings(host="h", port=1, client_id="c"), handler)
    subscribed = (Subscription("t"),)
    v311 = LinkSettings(host="h", port=1, client_id="c", subscriptions=subscribed, protocol="3.1.1")
    with pytest.raises(ValueError, match="MQTT 5 only"):
        StreamSubscriber(v311, handler)
