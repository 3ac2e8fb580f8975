"""The durable outbox: once per endpoint and activation, leased attempts, retries."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actimesh.dispatch.models import DeliveryStatus
from actimesh.dispatch.outbox import Outbox, delivery_id

T0 = 1_800_000_000.0


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "webhooks.sqlite3") as box:
        yield box


async def test_enqueue_is_once_per_endpoint_and_activation(outbox: Outbox) -> None:
    every = await outbox.add_endpoint(url="http://a/", description="", event_types=(), now=T0)
    lights = await outbox.add_endpoint(
        url="http://b/", description="", event_types=("emergency_lights",), now=T0
    )
    assert every.secret != lights.secret
    n = await outbox.enqueue(
        aid="act-1", event_type="taser_draw", decided_ts=T0 + 1, body=b"{}", now=T0 + 1
    )
    assert n == 1  # the lights-only endpoint does not want a taser draw
    again = await outbox.enqueue(
        aid="act-1", event_type="taser_draw", decided_ts=T0 + 1, body=b"{}", now=T0 + 2
    )
    assert again == 0
    # Decided before the endpoint existed: not for it.
    late = await outbox.add_endpoint(url="http://c/", description="", event_types=(), now=T0 + 5)
    await outbox.enqueue(
        aid="act-0", event_type="taser_draw", decided_ts=T0 + 4, body=b"{}", now=T0 + 6
    )
    assert await outbox.deliveries(late.id) == []
    assert await outbox.unseen(["act-0", "act-1", "act-2"]) == ["act-2"]
    (d,) = await outbox.deliveries(every.id, status=DeliveryStatus.PENDING, limit=1)
    assert d.delivery_id == delivery_id(every.id, "act-0")


async def test_lease_counts_the_attempt_and_hides_the_delivery_while_in_flight(
    outbox: Outbox,
) -> None:
    e = await outbox.add_endpoint(url="http://a/", description="", event_types=(), now=T0)
    await outbox.enqueue(
        aid="act-1", event_type="collision", decided_ts=T0, body=b'{"a":1}', now=T0
    )
    (due,) = await outbox.lease(now=T0, limit=10, lease_s=15.0)
    assert due.attempt == 1
    assert due.body == b'{"a":1}'
    assert due.url == "http://a/"
    assert due.secret == e.secret
    assert await outbox.lease(now=T0 + 1, limit=10, lease_s=15.0) == []  # in flight
    assert await outbox.next_due() == T0 + 15.0
    (again,) = await outbox.lease(now=T0 + 15.0, limit=10, lease_s=15.0)  # the lease ran out
    assert again.attempt == 2
    await outbox.attempt_failed(due.delivery_id, status=503, error="HTTP 503", retry_at=T0 + 20)
    d = await outbox.delivery(due.delivery_id)
    assert d is not None
    assert (d.status, d.attempts, d.last_status, d.next_attempt_ts) == ("pending", 2, 503, T0 + 20)
    await outbox.attempt_failed(due.delivery_id, status=None, error="refused", retry_at=None)
    assert (await outbox.counts()) == {"pending": 0, "delivered": 0, "failed": 1}
    assert await outbox.retry(due.delivery_id, now=T0 + 30)
    (third,) = await outbox.lease(now=T0 + 30, limit=10, lease_s=15.0)
    assert third.attempt == 3
    await outbox.delivered(third.delivery_id, status=204, now=T0 + 31)
    assert not await outbox.retry(third.delivery_id, now=T0 + 40)  # delivered stays so
    (out,) = await outbox.endpoints()
    assert (out.pending, out.delivered, out.failed) == (0, 1, 0)


async def test_prune_and_delete(outbox: Outbox, tmp_path: Path) -> None:
    e = await outbox.add_endpoint(url="http://a/", description="", event_types=(), now=T0)
    await outbox.enqueue(aid="act-1", event_type="collision", decided_ts=T0, body=b"{}", now=T0)
    (due,) = await outbox.lease(now=T0, limit=1, lease_s=1.0)
    await outbox.delivered(due.delivery_id, status=200, now=T0)
    await outbox.enqueue(aid="act-2", event_type="collision", decided_ts=T0, body=b"{}", now=T0)
    assert await outbox.prune(before=T0 + 1, seen_before=T0 - 1) == 1  # pending stays
    assert [d.aid for d in await outbox.deliveries(e.id)] == ["act-2"]
    assert await outbox.delete_endpoint(e.id)
    assert not await outbox.delete_endpoint(e.id)
    assert await outbox.counts() == {"pending": 0, "delivered": 0, "failed": 0}
    mode = (tmp_path / "webhooks.sqlite3").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600  # it holds the signing secrets
