"""The engine's intake reader against a real Mosquitto: QoS 1 acknowledged by its
handler, refusals acknowledged at read time, sources served in turn, bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable, Sequence

import aiomqtt
import pytest

from actimesh.broker.client import LinkSettings, Subscription
from actimesh.broker.intake import ControlSubscriber, Delivery
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def settings(port: int, agency: str, *, qos: int = 1, **kw: object) -> LinkSettings:
    return LinkSettings(
        host="127.0.0.1",
        port=port,
        client_id=f"{agency}-intake",
        subscriptions=(Subscription(f"{agency}/dev/+/event", qos),),
        session_expiry_s=60,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        **kw,  # type: ignore[arg-type]
    )


def by_device(topic: bytes, _payload: bytes) -> Hashable:
    """The device segment of ``<agency>/dev/<id>/event``: each device its own turn."""
    return topic.split(b"/")[2]


@contextlib.asynccontextmanager
async def running(sub: ControlSubscriber) -> AsyncIterator[None]:
    task = asyncio.create_task(sub.run(), name="intake-under-test")
    try:
        await sub.wait_connected(5)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish(port: int, topics_payloads: Sequence[tuple[str, bytes]], qos: int = 1) -> None:
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        for topic, payload in topics_payloads:
            await c.publish(topic, payload, qos=qos)


async def test_only_what_the_handler_acknowledged_stays_delivered_across_a_reconnect(
    broker_port: int, agency: str
) -> None:
    """The session is persistent: what the handler did not acknowledge (an event not
    yet durable) is sent again on the next connection; what it did, never again."""
    got: list[Delivery] = []

    async def ack_even(batch: Sequence[Delivery]) -> None:
        for d in batch:
            got.append(d)
            if int(d.payload) % 2 == 0:
                assert d.ack()

    topic = f"{agency}/dev/d1/event"
    async with running(ControlSubscriber(settings(broker_port, agency), ack_even)):
        await publish(broker_port, [(topic, b"%d" % i) for i in range(10)])
        await eventually(lambda: len(got) == 10)
    assert [int(d.payload) for d in got] == list(range(10))
    assert all(d.packet_id for d in got)
    assert not got[1].ack()  # its connection is gone: the broker will send it again

    again: list[Delivery] = []

    async def ack_all(batch: Sequence[Delivery]) -> None:
        for d in batch:
            again.append(d)
            assert d.ack()

    async with running(ControlSubscriber(settings(broker_port, agency), ack_all)):
        await eventually(lambda: len(again) == 5)
    assert sorted(int(d.payload) for d in again) == [1, 3, 5, 7, 9]

    last: list[bytes] = []

    async def keep(batch: Sequence[Delivery]) -> None:
        for d in batch:
            last.append(d.payload)
            d.ack()

    async with running(ControlSubscriber(settings(broker_port, agency), keep)):
        await publish(broker_port, [(topic, b"marker")])
        await eventually(lambda: b"marker" in last)
    assert last == [b"marker"]  # nothing acknowledged before came again


async def test_refused_messages_are_acknowledged_while_read_and_never_handled(
    broker_port: int, agency: str
) -> None:
    handled: list[str] = []

    async def handler(batch: Sequence[Delivery]) -> None:
        for d in batch:
            handled.append(d.topic)
            d.ack()

    def admit(topic: bytes, payload: bytes) -> Hashable | None:
        return None if b"/flood/" in topic else by_device(topic, payload)

    flood = [(f"{agency}/dev/flood/event", b"x")] * 300
    sub = ControlSubscriber(settings(broker_port, agency), handler, admit=admit)
    async with running(sub):
        await publish(broker_port, [*flood, (f"{agency}/dev/good/event", b"y")])
        await eventually(lambda: handled == [f"{agency}/dev/good/event"])
        await eventually(lambda: sub.stats.refused == 300)

    resumed: list[str] = []

    async def after(batch: Sequence[Delivery]) -> None:
        resumed.extend(d.topic for d in batch)
        for d in batch:
            d.ack()

    async with running(ControlSubscriber(settings(broker_port, agency), after)):
        await publish(broker_port, [(f"{agency}/dev/good/event", b"marker")])
        await eventually(lambda: len(resumed) == 1)
    assert resumed == [f"{agency}/dev/good/event"]  # no refused message came again


async def test_a_burst_from_one_device_does_not_hold_up_another_devices_message(
    broker_port: int, agency: str
) -> None:
    """Sources take turns: one device's 300 queued messages delay another device's
    one by a single turn, not by 300."""
    order: list[str] = []
    release = asyncio.Event()

    async def handler(batch: Sequence[Delivery]) -> None:
        await release.wait()
        for d in batch:
            order.append(d.topic.split("/")[2])
            d.ack()

    sub = ControlSubscriber(settings(broker_port, agency), handler, admit=by_device)
    async with running(sub):
        noisy = [(f"{agency}/dev/noisy/event", b"%d" % i) for i in range(300)]
        await publish(broker_port, [*noisy, (f"{agency}/dev/quiet/event", b"!")])
        # Everything read: the first batch is with the (held) handler, the rest queued.
        await eventually(lambda: sub.stats.received == 301)
        queued = sub.backlog
        release.set()
        await eventually(lambda: len(order) == 301)
    first_batch = 301 - queued
    assert order.index("quiet") <= first_batch + 1, order[: first_batch + 4]
    assert sub.stats.dropped_incoming == 0


async def test_qos0_beyond_the_bound_is_dropped_and_counted_qos1_never(
    broker_port: int, agency: str
) -> None:
    release = asyncio.Event()
    handled: list[Delivery] = []

    async def handler(batch: Sequence[Delivery]) -> None:
        await release.wait()
        for d in batch:
            handled.append(d)
            d.ack()

    sub = ControlSubscriber(settings(broker_port, agency, max_queued_incoming=10), handler)
    topic = f"{agency}/dev/d/event"
    async with running(sub):
        await publish(broker_port, [(topic, b"0")] * 50, qos=0)
        await publish(broker_port, [(topic, b"1")] * 50, qos=1)
        await eventually(lambda: sub.stats.received == 100)
        release.set()
        await eventually(lambda: sub.backlog == 0)
        await eventually(lambda: len(handled) == 100 - sub.stats.dropped_incoming)
    assert sum(d.payload == b"1" for d in handled) == 50  # QoS 1: bounded by the broker
    assert 0 < sub.stats.dropped_incoming <= 50 - 10
    assert sum(d.payload == b"0" for d in handled) <= 10 + sub.batch_size


@pytest.mark.logs_exception(KeyError, reason="the admit callback raises on purpose")
async def test_an_admit_that_raises_keeps_the_message_and_counts_it(
    broker_port: int, agency: str, caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[str] = []

    async def handler(batch: Sequence[Delivery]) -> None:
        handled.extend(d.topic for d in batch)
        for d in batch:
            d.ack()

    def broken(_topic: bytes, _payload: bytes) -> Hashable | None:
        raise KeyError("bug")

    sub = ControlSubscriber(settings(broker_port, agency), handler, admit=broken)
    async with running(sub):
        await publish(broker_port, [(f"{agency}/dev/d/event", b"x")])
        await eventually(lambda: len(handled) == 1)
    assert sub.admit_errors == 1
    assert "admit failed" in caplog.text


def test_delivery_without_a_packet_id_or_connection_has_nothing_to_acknowledge() -> None:
    class Acker:
        def __init__(self) -> None:
            self.acked: list[int] = []

        def puback(self, packet_id: int) -> bool:
            self.acked.append(packet_id)
            return True

    acker = Acker()
    assert not Delivery("t", b"", 0, acker).ack()
    assert not Delivery("t", b"", 7).ack()
    assert Delivery("t", b"", 7, acker).ack()
    assert acker.acked == [7]
    with pytest.raises(ValueError, match="receive_maximum"):
        ControlSubscriber(
            LinkSettings(host="h", port=1, client_id="c"), _nothing, receive_maximum=0
        )


async def _nothing(_batch: Sequence[Delivery]) -> None:
    return None
