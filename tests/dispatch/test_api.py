"""The integrator API against a real uvicorn server, engine, devices and Mosquitto."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import websockets
from psycopg import sql

from actimesh.broker.messages import DeviceKind, activation_id
from actimesh.broker.transport import MqttTransport
from actimesh.dispatch.service import DispatchService
from actimesh.ledger.postgres import schema_name
from tests.dispatch.conftest import (
    add,
    add_user,
    api,
    bearer,
    login,
    running_dispatch,
)
from tests.integration.harness import CENTER, mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def _detail(client: httpx.AsyncClient, aid: str, want: str = "recording") -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        r = await client.get(f"/api/v1/activations/{aid}")
        if r.status_code != 200:
            return None
        doc: dict[str, Any] = r.json()
        commanded = [c for c in doc["cameras"] if c["commanded"]]
        return doc if commanded and all(c["outcome"] == want for c in commanded) else None

    found: dict[str, Any] = await eventually(ready)
    return found


async def test_an_activation_in_a_postgres_ledger_is_served_by_the_api(
    agency: str, broker_port: int, tmp_path: Path, postgres_url: str
) -> None:
    """End to end on PostgreSQL: a real engine writes the agency's ledger there, and the
    dispatch's REST API (a real uvicorn server) answers from it."""
    async with (
        mesh(agency, broker_port, tmp_path, ledger_url=postgres_url) as m,
        running_dispatch(m, tmp_path) as svc,
    ):
        add(m, "bwc-1", DeviceKind.BODY_CAM, unit="u1", at=0.0)
        add(m, "cew-1", DeviceKind.CEW, unit="u1", paired=("bwc-1",))
        add(m, "bwc-far", DeviceKind.BODY_CAM, unit="u3", at=15.0, bearing=180)
        await m.ready()
        event = await m.agents["cew-1"].raise_event("taser_draw")
        aid = activation_id("cew-1", event.eid)
        assert await m.commanded(aid, {"bwc-1"}) == {"bwc-1"}
        async with api(svc) as client:
            doc = await _detail(client, aid)
            r = await client.get("/api/v1/activations", params={"device": "bwc-1"})
    assert not (tmp_path / "ledger.sqlite3").exists()
    cameras = {c["device_id"]: c["outcome"] for c in doc["cameras"]}
    assert cameras == {"bwc-1": "recording", "bwc-far": "not_commanded"}
    assert r.status_code == 200
    assert [a["aid"] for a in r.json()["items"]] == [aid]
    with psycopg.connect(postgres_url) as conn:
        schema = sql.Identifier(schema_name(agency))
        conn.execute(sql.SQL("SET search_path TO {}").format(schema))
        kinds = [k for (k,) in conn.execute("SELECT event_type FROM records ORDER BY seq")]
    assert kinds[0] == "activation"
    assert "ack" in kinds


async def test_devices_activations_and_per_camera_outcomes(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        add(m, "bwc-1", DeviceKind.BODY_CAM, unit="u1", at=0.0)
        add(m, "cew-1", DeviceKind.CEW, unit="u1", paired=("bwc-1",))
        add(m, "bwc-near", DeviceKind.BODY_CAM, unit="u2", at=8.0, bearing=90)
        add(m, "bwc-far", DeviceKind.BODY_CAM, unit="u3", at=15.0, bearing=180)
        add(m, "bwc-stale", DeviceKind.BODY_CAM, unit="u3", at=3.0, bearing=270, age=40.0)
        await m.ready()
        async with api(svc) as client:
            # Devices and their state, once telemetry has arrived.
            await eventually(lambda: len(svc.state.devices) == 5)
            r = await client.get("/api/v1/devices", params={"unit": "u3"})
            assert r.status_code == 200
            by_id = {d["id"]: d for d in r.json()}
            assert set(by_id) == {"bwc-far", "bwc-stale"}
            assert by_id["bwc-stale"]["stale"] is True
            assert by_id["bwc-far"]["stale"] is False
            assert by_id["bwc-far"]["status"] == "buffering"
            one = (await client.get("/api/v1/devices/cew-1")).json()
            assert one["kind"] == "cew"
            assert one["paired"] == ["bwc-1"]

            event = await m.agents["cew-1"].raise_event("taser_draw")
            aid = activation_id("cew-1", event.eid)
            doc = await _detail(client, aid)
            cams = {c["device_id"]: c for c in doc["cameras"]}
            assert {d for d, c in cams.items() if c["commanded"]} == {"bwc-1", "bwc-near"}
            assert cams["bwc-1"]["reason"] == "paired"
            assert cams["bwc-near"]["reason"] == "proximity"
            assert cams["bwc-near"]["distance_m"] == pytest.approx(8.0, abs=0.05)
            assert cams["bwc-near"]["pre_roll_covered_s"] == pytest.approx(30.0)
            assert cams["bwc-near"]["recording_id"]
            assert cams["bwc-near"]["ack_latency_s"] < 2.0
            assert cams["bwc-far"]["outcome"] == "not_commanded"
            assert cams["bwc-far"]["reason"] == "too_far"
            assert cams["bwc-stale"]["reason"] == "stale"
            assert doc["type"] == "taser_draw"
            assert doc["commanded"] == 2
            assert doc["recording"] == 2
            assert doc["rule"]["radius_m"] == pytest.approx(9.144)
            assert doc["acks"]

            # A second trigger elsewhere in time and kind, for the queries.
            gw = add(m, "gw-2", DeviceKind.GATEWAY, unit="u2", at=8.0, bearing=90)
            await m.ready()
            event2 = await gw.raise_event("emergency_lights")
            aid2 = activation_id("gw-2", event2.eid)
            await _detail(client, aid2)

            async def query(**params: Any) -> list[str]:
                r = await client.get("/api/v1/activations", params=params)
                assert r.status_code == 200, r.text
                return [a["aid"] for a in r.json()["items"]]

            assert await query() == [aid2, aid]  # newest first
            assert await query(type="taser_draw") == [aid]
            assert await query(type=["taser_draw", "emergency_lights"]) == [aid2, aid]
            assert await query(device="bwc-near") == [aid2, aid]  # commanded by both
            assert await query(device="cew-1") == [aid]  # raised it
            assert await query(device="bwc-far") == []
            assert await query(since=event2.ts) == [aid2]
            assert await query(until=event2.ts) == [aid]
            iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.ts - 60))
            assert await query(since=iso) == [aid2, aid]
            lat, lon = CENTER
            box = f"{lon - 0.001},{lat - 0.001},{lon + 0.001},{lat + 0.001}"
            assert await query(bbox=box) == [aid2, aid]
            assert await query(bbox="10,10,11,11") == []
            # gw-2 raised its event 8 m east of the centre: a 5 m circle around the
            # centre holds only the taser draw; 20 m holds both.
            assert await query(lat=lat, lon=lon, radius_m=5) == [aid]
            assert await query(lat=lat, lon=lon, radius_m=20) == [aid2, aid]
            page = (await client.get("/api/v1/activations", params={"limit": 1})).json()
            assert [a["aid"] for a in page["items"]] == [aid2]
            rest = await client.get(
                "/api/v1/activations", params={"limit": 1, "cursor": page["next_cursor"]}
            )
            assert [a["aid"] for a in rest.json()["items"]] == [aid]
            assert rest.json()["next_cursor"] is None

            # Health and metrics.
            health = await client.get("/api/v1/health")
            assert health.status_code == 200, health.text
            assert health.json()["status"] == "ok"
            metrics = (await client.get("/metrics")).text
            assert 'actimesh_dispatch_devices{status="recording"}' in metrics
            assert 'actimesh_dispatch_camera_outcomes_total{outcome="recording"}' in metrics
            assert "actimesh_activation_decision_seconds_count 2.0" in metrics
            spec = (await client.get("/openapi.json")).json()
            assert "/api/v1/activations/{aid}" in spec["paths"]
            assert "/api/v1/zones" in spec["paths"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        (
            "post",
            "/api/v1/zones",
            {"lat": 91, "lon": 0, "radius_m": 50, "dispatcher": "A"},
            422,
            "lat: Input should be less than or equal to 90",
        ),
        (
            "post",
            "/api/v1/zones",
            {"lat": 1, "lon": 0, "radius_m": 5000, "dispatcher": "A"},
            422,
            "radius_m: Input should be less than or equal to 1000",
        ),
        ("post", "/api/v1/zones", {"lat": 1, "lon": 0}, 422, "radius_m: Field required"),
        (
            "post",
            "/api/v1/zones",
            {"lat": 1, "lon": 0, "radius_m": 5, "dispatcher": "A", "x": 1},
            422,
            "x: Extra inputs are not permitted",
        ),
        (
            "post",
            "/api/v1/zones",
            {"lat": 1, "lon": 0, "radius_m": 5, "dispatcher": "A\x07"},
            422,
            "dispatcher: Value error, must be printable text",
        ),
        (
            "post",
            "/api/v1/webhooks",
            {"url": "ftp://example.org/x"},
            422,
            "url: Value error, must be an http:// or https:// URL with a host",
        ),
        (
            "post",
            "/api/v1/webhooks",
            {"url": "https://u:p@example.org/x"},
            422,
            "url: Value error, must not carry credentials",
        ),
        ("get", "/api/v1/activations?bbox=1,2,3", None, 422, "bbox: bbox must be four numbers"),
        ("get", "/api/v1/activations?lat=1&lon=2", None, 422, "lat, lon and radius_m go together"),
        ("get", "/api/v1/activations?since=yesterday", None, 422, "since: use UNIX seconds"),
        ("get", "/api/v1/activations?limit=0", None, 422, "limit: Input should be greater"),
        ("get", "/api/v1/activations?cursor=zzz", None, 422, "cursor: pass back the next_cursor"),
        ("get", "/api/v1/activations/act-nope", None, 404, "no activation 'act-nope'"),
        ("get", "/api/v1/devices/ghost", None, 404, "no device 'ghost'"),
        ("get", "/api/v1/webhooks/wh-nope", None, 404, "no webhook 'wh-nope'"),
        ("delete", "/api/v1/webhooks/wh-nope", None, 404, "no webhook 'wh-nope'"),
        ("post", "/api/v1/deliveries/dlv-nope/retry", None, 404, "no undelivered delivery"),
    ],
)
async def test_bad_input_gets_4xx_with_one_line_error(
    agency: str,
    broker_port: int,
    tmp_path: Path,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    says: str,
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc) as client,
    ):
        r = await client.request(method, path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error
    assert "\n" not in error


async def test_malformed_json_body_is_a_one_line_422(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc) as client,
    ):
        r = await client.post(
            "/api/v1/zones", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert r.status_code == 422
    assert r.json()["error"].startswith("the request body is not valid JSON (")


async def test_dispatcher_zone_goes_through_engine_rules_and_ledger(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        add(m, "bwc-in", DeviceKind.BODY_CAM, unit="u1", at=35.0, bearing=0)
        add(m, "dash-in", DeviceKind.DASH_CAM, unit="u1", at=20.0, bearing=120)
        add(m, "bwc-out", DeviceKind.BODY_CAM, unit="u2", at=60.0, bearing=240)
        await m.ready()
        lat, lon = CENTER
        password = await add_user(svc, "kim")
        async with api(svc, None) as client:
            # A dispatcher logged in to the map: the ledger names her, whatever a body says.
            await login(client, "kim", password)
            r = await client.post(
                "/api/v1/zones",
                params={"wait": 5},
                json={"lat": lat, "lon": lon, "radius_m": 40, "call_id": "C2025-00042"},
            )
            assert r.status_code == 201, r.text
            accepted = r.json()
            assert accepted["source"] == "dispatch-console-1"
            assert accepted["eid"] == "C2025-00042"
            assert accepted["aid"] == activation_id("dispatch-console-1", "C2025-00042")
            live = accepted["activation"]
            assert live["type"] == "dispatch_zone"
            assert live["by"] == "kim"
            assert live["radius"] == 40
            assert {c["id"] for c in live["cameras"]} == {"bwc-in", "dash-in"}
            doc = await _detail(client, accepted["aid"])
            assert doc["initiated_by"] == "kim"
            assert doc["radius_m"] == 40
            assert doc["rule"]["event_type"] == "dispatch_zone"
            by = await client.get("/api/v1/activations", params={"initiated_by": "kim"})
            assert [a["aid"] for a in by.json()["items"]] == [accepted["aid"]]
            # The same CAD call again is the same activation: the engine dedupes it.
            again = await client.post(
                "/api/v1/zones",
                json={"lat": lat, "lon": lon, "radius_m": 40, "call_id": "C2025-00042"},
            )
            assert again.status_code == 202
            assert again.json()["aid"] == accepted["aid"]
            engine = m.engine
            assert engine is not None
            await eventually(lambda: engine.stats.duplicates == 1)
    # The engine's ledger says who asked (read with our own connection), and the audit
    # trail has her zone requests, tied to the activation by its id.
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        rows = db.execute("SELECT type, initiated_by, src FROM activations").fetchall()
        audit = db.execute(
            "SELECT subject, outcome, aid, body FROM records WHERE event_type = 'api_change'"
        ).fetchall()
    assert rows == [("dispatch_zone", "kim", "dispatch-console-1")]
    assert [(who, outcome, aid) for who, outcome, aid, _ in audit] == [
        ("kim", "ok", accepted["aid"]),
        ("kim", "ok", accepted["aid"]),
    ]
    body = json.loads(audit[0][3])
    assert body["action"] == "zone.create"
    assert body["via"].startswith("session:")
    assert body["call_id"] == "C2025-00042"


async def test_live_websocket_sends_snapshot_then_deltas_within_a_second(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        add(m, "bwc", DeviceKind.BODY_CAM, unit="u1", at=0.0)
        add(m, "cew", DeviceKind.CEW, unit="u1", paired=("bwc",))
        await m.ready()
        await eventually(lambda: len(svc.state.devices) == 2)
        url = svc.ws_url
        auth = bearer(svc, "dispatcher")
        async with websockets.connect(url, open_timeout=5, additional_headers=auth) as ws:
            async with asyncio.timeout(5):
                snapshot = json.loads(await ws.recv())
            assert snapshot["type"] == "snapshot"
            assert {d["id"] for d in snapshot["devices"]} == {"bwc", "cew"}
            assert snapshot["config"]["max_fix_age_s"] == 10.0
            assert snapshot["config"]["ack_timeout_s"] == 1.5
            assert snapshot["connected"] is True
            sent = time.time()
            event = await m.agents["cew"].raise_event("taser_draw")
            aid = activation_id("cew", event.eid)
            seen_at = None
            statuses: list[str] = []
            async with asyncio.timeout(5):
                while "recording" not in statuses:
                    frame = json.loads(await ws.recv())
                    for a in frame.get("activations", []):
                        if a["aid"] == aid:
                            seen_at = seen_at or time.time()
                            statuses = [c["status"] for c in a["cameras"]]
            assert seen_at is not None
            assert seen_at - sent < 1.0
            assert statuses == ["recording"]
        # A page opened later gets the activation at once, in its snapshot.
        async with websockets.connect(url, open_timeout=5, additional_headers=auth) as late:
            async with asyncio.timeout(5):
                snapshot = json.loads(await late.recv())
        (act,) = snapshot["activations"]
        assert act["aid"] == aid
        assert act["cameras"][0]["pre_cov"] == pytest.approx(30.0)


async def test_server_sent_events_stream_activations_and_outcomes(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        add(m, "bwc", DeviceKind.BODY_CAM, unit="u1", at=2.0)
        add(m, "gw", DeviceKind.GATEWAY, unit="u1", at=0.0)
        await m.ready()
        events: list[tuple[str, dict[str, Any]]] = []
        async with (
            api(svc, "integrator") as client,
            client.stream("GET", "/api/v1/stream", params={"types": "collision"}) as r,
        ):
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.aiter_lines()
            assert await anext(lines) == "retry: 2000"
            await m.agents["gw"].raise_event("emergency_lights")  # filtered out
            collision = await m.agents["gw"].raise_event("collision")
            kind = ""
            async with asyncio.timeout(5):
                async for line in lines:
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        events.append((kind, json.loads(line[6:])))
                        if kind == "camera" and events[-1][1]["status"] == "recording":
                            break
        aid = activation_id("gw", collision.eid)
        assert events[0][0] == "activation"
        assert events[0][1]["aid"] == aid
        assert all(e[1]["type"] == "collision" for e in events)
        assert ("camera", "bwc") in {(k, d["id"]) for k, d in events if k == "camera"}


async def test_slow_live_client_is_cut_off_not_buffered(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, client_queue=2) as svc,
    ):
        async with websockets.connect(
            svc.ws_url, open_timeout=5, max_queue=1, additional_headers=bearer(svc)
        ) as ws:
            async with asyncio.timeout(5):
                await ws.recv()  # the snapshot; then read nothing
            sub = await eventually(lambda: next(iter(svc.live._subscribers), None))
            for n in range(50):  # frames pile up faster than this client reads them
                svc.live.publish(json.dumps({"type": "tick", "now": n}))
            assert sub.closed
        assert svc.live.stats.clients_dropped == 1
        assert await eventually(lambda: len(svc.live) == 0)


async def test_port_in_use_is_a_one_line_config_error(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    from actimesh.errors import ConfigError  # noqa: PLC0415

    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as first:
        assert first.address is not None
        port = first.address[1]
        second = DispatchService(
            topics=m.topics,
            transport=MqttTransport("127.0.0.1", m.port),
            settings=first.settings.__class__(port=port),
            data_dir=tmp_path / "second",
            ledger_location=tmp_path / "ledger.sqlite3",
            max_fix_age_s=10.0,
        )
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await second.run()


async def _read_until_closed(ws: websockets.ClientConnection) -> None:
    while True:
        async with asyncio.timeout(5):
            await ws.recv()


async def test_stopping_with_live_clients_connected_closes_them_promptly(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        async with running_dispatch(m, tmp_path) as svc:
            ws = await websockets.connect(
                svc.ws_url, open_timeout=5, additional_headers=bearer(svc)
            )
            async with asyncio.timeout(5):
                await ws.recv()
            client = api(svc)
            stream = client.stream("GET", "/api/v1/stream")
            response = await stream.__aenter__()
            lines = response.aiter_lines()
            assert await anext(lines) == "retry: 2000"
            started = time.monotonic()
        # Leaving the block cancelled the service: both clients were told to go.
        assert time.monotonic() - started < 3.0
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await _read_until_closed(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code in (1012, 1013)
        rest = [line async for line in lines]
        assert rest == [""]  # the stream ended
        await stream.__aexit__(None, None, None)
        await client.aclose()
        await ws.close()
