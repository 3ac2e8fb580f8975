"""Webhooks: signed CloudEvents, at least once from a durable outbox, across restarts."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from actimesh.broker.messages import DeviceKind, activation_id
from actimesh.dispatch.cloudevents import ACTIVATION_EVENT_TYPE, verify
from actimesh.dispatch.webhooks import backoff_s
from tests.dispatch.conftest import add, api, running_dispatch
from tests.dispatch.receiver import Received, receiver
from tests.integration.harness import mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_s(n, initial_s=1.0, max_s=60.0, rng=rng) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_s(10_000, initial_s=1.0, max_s=60.0, rng=rng) <= 60.0


def _check(request: Received, secret: str) -> dict[str, Any]:
    """A delivery as an integrator would check it: signature, type, then the event."""
    assert request.path == "/hooks/actimesh"
    assert request.headers["content-type"] == "application/cloudevents+json; charset=utf-8"
    assert verify(secret, request.body, request.headers["x-actimesh-signature-256"])
    assert not verify(secret + "x", request.body, request.headers["x-actimesh-signature-256"])
    event: dict[str, Any] = json.loads(request.body)
    return event


async def test_signed_cloudevent_is_delivered_once_across_a_restart_mid_delivery(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with receiver(mode="fail") as rx, mesh(agency, broker_port, tmp_path) as m:
        add(m, "bwc", DeviceKind.BODY_CAM, unit="u7", at=3.0)
        add(m, "gw", DeviceKind.GATEWAY, unit="u7", at=0.0)
        await m.ready()
        async with running_dispatch(m, tmp_path) as svc, api(svc) as client:
            r = await client.post(
                "/api/v1/webhooks", json={"url": rx.url, "description": "evidence system"}
            )
            assert r.status_code == 201, r.text
            hook = r.json()
            secret = hook["secret"]
            assert secret.startswith("whsec_")
            listed = (await client.get("/api/v1/webhooks")).json()
            assert [h["id"] for h in listed] == [hook["id"]]
            assert "secret" not in listed[0]  # shown once, at registration

            event = await m.agents["gw"].raise_event("collision")
            aid = activation_id("gw", event.eid)
            # The receiver fails the first attempts; the outbox retries with backoff.
            await eventually(lambda: len(rx.requests) >= 2)
            rx.mode = "hang"
            await eventually(lambda: rx.requests[-1].answered is None)
            (pending,) = (await client.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()
            assert pending["status"] == "pending"
            assert pending["last_status"] == 500
        # The service is stopped while a delivery is in flight; nothing was delivered.
        assert rx.delivered == []
        with sqlite3.connect(tmp_path / "webhooks.sqlite3") as db:
            ((status, attempts),) = db.execute("SELECT status, attempts FROM deliveries")
        assert status == "pending"
        assert attempts >= 3

        rx.mode = "ok"
        async with running_dispatch(m, tmp_path) as svc, api(svc) as client:
            await eventually(lambda: rx.delivered)
            deliveries = (await client.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()
            assert deliveries[0]["status"] == "delivered"
            assert deliveries[0]["attempts"] == attempts + 1
            one = (await client.get(f"/api/v1/deliveries/{deliveries[0]['delivery_id']}")).json()
            assert one["last_status"] == 204

    (done,) = rx.delivered
    ids = {req.headers["x-actimesh-delivery"] for req in rx.requests}
    assert ids == {deliveries[0]["delivery_id"]}  # one id across every attempt and restart
    assert [int(req.headers["x-actimesh-attempt"]) for req in rx.requests] == list(
        range(1, attempts + 2)
    )
    assert {req.body for req in rx.requests} == {done.body}  # byte for byte
    cloud = _check(done, secret)
    assert cloud["specversion"] == "1.0"
    assert cloud["type"] == ACTIVATION_EVENT_TYPE
    assert cloud["id"] == aid
    assert cloud["source"] == f"/actimesh/{agency}"
    assert cloud["subject"] == "gw"
    assert cloud["time"].endswith("Z")
    assert cloud["datacontenttype"] == "application/json"
    assert cloud["data"]["aid"] == aid
    assert cloud["data"]["type"] == "collision"
    assert [c["id"] for c in cloud["data"]["cameras"]] == ["bwc"]


async def test_activation_missed_on_the_broker_is_delivered_from_the_ledger(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Activations decided while the dispatch was away past its session come from the
    ledger, the source of truth, by the reconciler."""
    async with receiver(mode="ok") as rx, mesh(agency, broker_port, tmp_path) as m:
        add(m, "bwc", DeviceKind.BODY_CAM, unit="u1", at=1.0)
        add(m, "gw", DeviceKind.GATEWAY, unit="u1", at=0.0)
        await m.ready()
        # A clean session: the broker keeps nothing for the dispatch while it is away.
        async with running_dispatch(m, tmp_path, session_expiry_s=0) as svc, api(svc) as client:
            hook = (await client.post("/api/v1/webhooks", json={"url": rx.url})).json()
        event = await m.agents["gw"].raise_event("collision")
        aid = activation_id("gw", event.eid)
        engine = m.engine
        assert engine is not None
        await eventually(lambda: engine.stats.activations == 1)
        async with running_dispatch(m, tmp_path, session_expiry_s=0) as svc:
            await eventually(lambda: rx.delivered)
            assert svc.webhooks.stats.reconciled == 1
            assert svc.webhooks.stats.enqueued == 0
    (done,) = rx.delivered
    cloud = _check(done, hook["secret"])
    assert cloud["id"] == aid


async def test_webhook_for_other_trigger_types_gets_nothing(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with receiver(mode="ok") as rx, mesh(agency, broker_port, tmp_path) as m:
        add(m, "gw", DeviceKind.GATEWAY, unit="u1", at=0.0)
        add(m, "bwc", DeviceKind.BODY_CAM, unit="u1", at=1.0)
        await m.ready()
        async with running_dispatch(m, tmp_path) as svc, api(svc) as client:
            wanted = await client.post(
                "/api/v1/webhooks", json={"url": rx.url, "event_types": ["collision"]}
            )
            await m.agents["gw"].raise_event("emergency_lights")
            collision = await m.agents["gw"].raise_event("collision")
            await eventually(lambda: rx.delivered)
            deliveries = (
                await client.get(f"/api/v1/webhooks/{wanted.json()['id']}/deliveries")
            ).json()
            assert [d["aid"] for d in deliveries] == [activation_id("gw", collision.eid)]
            gone = await client.delete(f"/api/v1/webhooks/{wanted.json()['id']}")
            assert gone.status_code == 204
            assert (await client.get("/api/v1/webhooks")).json() == []
