"""Frame fan-out: bounded per client, slow clients cut off, closing ends everyone."""

from __future__ import annotations

import pytest

from actimesh.dispatch.hub import Hub, HubFullError


async def test_every_subscriber_gets_frames_in_order_after_its_first() -> None:
    hub: Hub[str] = Hub(queue_size=8)
    async with hub.subscribe(first="snapshot") as a, hub.subscribe() as b:
        hub.publish("f1")
        hub.publish("f2")
        assert [await a.get() for _ in range(3)] == ["snapshot", "f1", "f2"]
        assert [await b.get() for _ in range(2)] == ["f1", "f2"]
    assert len(hub) == 0


async def test_slow_subscriber_is_cut_off_and_counted_others_unaffected() -> None:
    hub: Hub[str] = Hub(queue_size=2)
    async with hub.subscribe() as slow, hub.subscribe() as fast:
        for n in range(3):
            hub.publish(f"f{n}")
            assert await fast.get() == f"f{n}"
        assert slow.closed
        assert await slow.get() is None  # the backlog is dropped for the stop sentinel
        assert hub.stats.clients_dropped == 1
        hub.publish("f3")
        assert await fast.get() == "f3"


async def test_close_stops_everyone_and_refuses_newcomers() -> None:
    hub: Hub[str] = Hub()
    async with hub.subscribe() as sub:
        hub.close()
        assert await sub.get() is None
    with pytest.raises(HubFullError):
        async with hub.subscribe():
            pass  # pragma: no cover


async def test_client_limit() -> None:
    hub: Hub[str] = Hub(max_clients=1)
    async with hub.subscribe():
        with pytest.raises(HubFullError):
            async with hub.subscribe():
                pass  # pragma: no cover
    assert hub.stats.clients_refused == 1
