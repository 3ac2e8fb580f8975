"""The in-process bus keeps the contract of the real links."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from actimesh.broker.client import Subscription
from actimesh.broker.ingest import Publish
from actimesh.broker.intake import Delivery
from actimesh.broker.memory import MemoryBus, topic_matches
from actimesh.broker.transport import Inbound, StreamHandler
from actimesh.errors import BrokerError


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("am/v1/a/dev/+/event", "am/v1/a/dev/cew1/event", True),
        ("am/v1/a/dev/+/event", "am/v1/a/dev/cew1/ack", False),
        ("am/v1/a/dev/+/event", "am/v1/a/dev/cew1/event/x", False),
        ("am/v1/a/#", "am/v1/a/dev/cew1/event", True),
        ("$share/engines/am/v1/a/dev/+/event", "am/v1/a/dev/cew1/event", True),
        ("am/v1/a/dev/cew1/event", "am/v1/a/dev/cew2/event", False),
    ],
)
def test_topic_filters_match_as_mqtt_matches_them(
    topic_filter: str, topic: str, matches: bool
) -> None:
    assert topic_matches(topic_filter, topic) is matches


async def test_control_messages_pass_admission_and_are_counted_until_acknowledged() -> None:
    bus = MemoryBus()
    kept: list[Delivery] = []

    async def handler(batch: Sequence[Delivery]) -> None:
        kept.extend(batch)

    def admit(topic: bytes, _payload: bytes) -> str | None:
        return None if b"/flooder/" in topic else "ok"

    link = bus.control("ctl", (Subscription("dev/+/event", 1),), handler, admit=admit)
    with pytest.raises(BrokerError):
        await bus.hand("nobody", b"dev/x/event", b"")
    assert await bus.deliver("dev/one/event", b"1") == 0  # not connected yet: nobody takes it
    async with _running(link):
        assert await bus.deliver("dev/one/event", b"1") == 1
        assert await bus.deliver("dev/flooder/event", b"2") == 1
        assert await bus.deliver("dev/one/ack", b"3") == 0
    assert [d.payload for d in kept] == [b"1"]
    assert link.stats.refused == 1
    assert len(bus.unacknowledged) == 1
    assert kept[0].ack()
    assert kept[0].ack()  # twice: counted as a handler's bug
    assert (bus.unacknowledged, bus.stray_acks) == (set(), 1)


@contextlib.asynccontextmanager
async def _running(link: Inbound) -> AsyncIterator[None]:
    """Run a link of the bus for the length of a block."""
    task = asyncio.create_task(link.run(), name="memory-link")
    try:
        await link.wait_connected(5)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_share_group_hands_each_message_to_one_member_in_turn() -> None:
    bus = MemoryBus()
    got: dict[str, list[bytes]] = {"a": [], "b": [], "plain": []}

    def taker(name: str) -> StreamHandler:
        async def handler(batch: Sequence[Publish]) -> None:
            got[name].extend(payload for _topic, payload in batch)

        return handler

    shared = Subscription("$share/g/dev/+/tm", 0)
    links = [
        bus.stream("a", (shared,), taker("a"), max_queued=10),
        bus.stream("b", (shared,), taker("b"), max_queued=10),
        bus.stream("plain", (Subscription("dev/+/tm", 0),), taker("plain"), max_queued=10),
    ]
    async with _running(links[0]), _running(links[1]), _running(links[2]):
        for i in range(4):
            assert await bus.deliver("dev/x/tm", bytes([i])) == 2  # one member, one plain
    assert got["plain"] == [bytes([i]) for i in range(4)]
    assert (got["a"], got["b"]) == ([b"\0", b"\2"], [b"\1", b"\3"])
