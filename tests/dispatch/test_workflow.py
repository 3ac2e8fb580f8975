"""Dispatchers' acknowledgements and notes: ledger records of their own, served by REST,
shown live; and an incident's replay and a unit's track from the dispatch's recent
positions. Real engine, devices, Mosquitto and uvicorn; each ledger store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from actimesh.broker.messages import DeviceKind, activation_id
from actimesh.geofence import destination
from actimesh.ledger.postgres import schema_name
from actimesh.security import Registry
from tests.dispatch.conftest import (
    Dispatch,
    add,
    add_user,
    api,
    login,
    running_dispatch,
    silent_camera,
)
from tests.integration.harness import CENTER, fixed, mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def _records(root: Path, postgres_url: str | None, agency: str) -> list[tuple[Any, ...]]:
    query = (
        "SELECT event_type, subject, outcome, aid, body FROM records "
        "WHERE event_type IN ('dispatch_ack', 'incident_note') ORDER BY seq"
    )
    if postgres_url is None:
        with sqlite3.connect(root / "ledger.sqlite3") as db:
            return db.execute(query).fetchall()
    with psycopg.connect(postgres_url) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema_name(agency))))
        return conn.execute(query).fetchall()


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_acknowledgements_and_notes_are_ledger_records_served_by_rest(
    store: str, agency: str, broker_port: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url: str | None = None
    if store == "postgres":
        url = str(request.getfixturevalue("postgres_url"))
    async with mesh(agency, broker_port, tmp_path, ledger_url=url) as m:
        async with running_dispatch(m, tmp_path) as svc:
            add(m, "bwc-1", DeviceKind.BODY_CAM, unit="u1", at=0.0)
            add(m, "cew-1", DeviceKind.CEW, unit="u1", paired=("bwc-1",))
            await m.ready()
            # A camera near the event that never answers: a no_ack alert to acknowledge.
            await silent_camera(m, "bwc-mute", unit="u2", at=4.0, bearing=90)
            await eventually(lambda: "bwc-mute" in svc.state.devices)
            event = await m.agents["cew-1"].raise_event("taser_draw")
            aid = activation_id("cew-1", event.eid)
            alert_id = f"{aid}:bwc-mute:no_ack"
            await eventually(lambda: alert_id in svc.state.alerts)
            password = await add_user(svc, "kim")
            async with api(svc, None) as kim, api(svc, "integrator") as integrator:
                await login(kim, "kim", password)
                # Reading is for any caller; acknowledging and notes need the dispatch role.
                assert (await integrator.post(f"/api/v1/activations/{aid}/ack")).status_code == 403
                r = await integrator.get(f"/api/v1/activations/{aid}/workflow")
                assert r.status_code == 200, r.text
                assert r.json() == {"aid": aid, "acks": [], "notes": []}

                r = await kim.post(f"/api/v1/activations/{aid}/ack")
                assert r.status_code == 201, r.text
                first = r.json()
                assert (first["aid"], first["alert_id"], first["by"]) == (aid, None, "kim")
                again = await kim.post(f"/api/v1/activations/{aid}/ack")
                assert again.status_code == 200
                assert again.json() == first  # the first acknowledgement stands
                r = await kim.post(f"/api/v1/alerts/{alert_id}/ack")
                assert r.status_code == 201, r.text
                assert r.json()["alert_id"] == alert_id
                r = await kim.post(
                    f"/api/v1/activations/{aid}/notes", json={"text": "  Unit 12 on scene "}
                )
                assert r.status_code == 201, r.text
                assert r.json()["text"] == "Unit 12 on scene"

                # Bad requests, each refused with one line saying why.
                for path, body, status, says in (
                    (f"/api/v1/activations/{aid}/notes", {"text": ""}, 422, "text"),
                    (f"/api/v1/activations/{aid}/notes", {"text": "a\x07b"}, 422, "control"),
                    (f"/api/v1/activations/{aid}/notes", {"text": "x" * 2001}, 422, "text"),
                    ("/api/v1/activations/act-nope/notes", {"text": "hi"}, 404, "act-nope"),
                    ("/api/v1/activations/act-nope/ack", None, 404, "act-nope"),
                    ("/api/v1/alerts/nope:bwc-1:no_ack/ack", None, 404, "no alert"),
                ):
                    r = await kim.post(path, json=body)
                    assert r.status_code == status, (path, r.text)
                    assert says in r.json()["error"]

                r = await integrator.get(f"/api/v1/activations/{aid}/workflow")
                doc = r.json()
                assert [(a["alert_id"], a["by"]) for a in doc["acks"]] == [
                    (None, "kim"),
                    (alert_id, "kim"),
                ]
                assert [(n["by"], n["text"]) for n in doc["notes"]] == [("kim", "Unit 12 on scene")]
                assert doc["acks"][0]["seq"] == first["seq"]

                # The live map shows both acknowledgements.
                assert svc.state.activations[aid].to_json()["acked_by"] == "kim"
                assert svc.state.alerts[alert_id].to_json()["acked_by"] == "kim"
        # Restarted, the dispatch shows them acknowledged: the alert does not sound again.
        async with running_dispatch(m, tmp_path) as restarted:
            assert restarted.state.alerts[alert_id].acked_by == "kim"
            assert restarted.state.activations[aid].acked_by == "kim"

    rows = _records(tmp_path, url, agency)
    assert [(t, who, outcome, row_aid) for t, who, outcome, row_aid, _ in rows] == [
        ("dispatch_ack", "kim", "incident", aid),
        ("dispatch_ack", "kim", "alert", aid),
        ("incident_note", "kim", "ok", aid),
    ]
    note = json.loads(rows[2][4])
    assert note["text"] == "Unit 12 on scene"
    assert note["by"] == "kim"


async def test_detail_replay_and_track_come_from_the_recent_positions(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    # The registry of the dispatch's data directory names one unit's camera.
    with Registry.open(tmp_path) as registry:
        registry.add("bwc-near", DeviceKind.BODY_CAM, unit="u2", call_sign="12A3", officer="Kim")
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        add(m, "bwc-1", DeviceKind.BODY_CAM, unit="u1", at=0.0)
        add(m, "cew-1", DeviceKind.CEW, unit="u1", paired=("bwc-1",))
        add(m, "bwc-near", DeviceKind.BODY_CAM, unit="u2", at=8.0, bearing=90)
        await m.ready()
        await eventually(lambda: len(svc.state.tracks.between("bwc-near", 0, 4e9)) >= 1)
        event = await m.agents["cew-1"].raise_event("taser_draw")
        aid = activation_id("cew-1", event.eid)
        async with api(svc, "dispatcher") as client, api(svc, "integrator") as integrator:

            async def recorded() -> dict[str, Any] | None:
                r = await client.get(f"/api/v1/activations/{aid}")
                if r.status_code != 200:
                    return None
                doc: dict[str, Any] = r.json()
                cams = [c for c in doc["cameras"] if c["commanded"]]
                return doc if cams and all(c["outcome"] == "recording" for c in cams) else None

            doc = await eventually(recorded)
            near = next(c for c in doc["cameras"] if c["device_id"] == "bwc-near")
            assert (near["call_sign"], near["officer"]) == ("12A3", "Kim")
            device = (await client.get("/api/v1/devices/bwc-near")).json()
            assert (device["call_sign"], device["officer"], device["duty"]) == ("12A3", "Kim", None)
            view = svc.state.devices["bwc-near"]
            assert near["at_event"] == pytest.approx([view.lat, view.lon])
            # The radius the engine included cameras in: the rule's plus the GPS margin.
            assert doc["gps_margin_m"] == pytest.approx(6.0)
            assert doc["effective_radius_m"] == pytest.approx(doc["radius_m"] + 6.0)

            r = await client.get(f"/api/v1/activations/{aid}/replay")
            assert r.status_code == 200, r.text
            replay = r.json()
            assert replay["start"] == pytest.approx(event.ts - 30.0)
            assert replay["end"] >= replay["event_ts"]
            ids = {d["device_id"]: d for d in replay["devices"]}
            assert {"bwc-1", "bwc-near", "cew-1"} <= set(ids)
            assert ids["bwc-near"]["commanded"] is True
            assert ids["bwc-near"]["points"]
            assert replay["acks"]

            r = await client.get("/api/v1/devices/bwc-near/track", params={"seconds": 120})
            assert r.status_code == 200, r.text
            assert r.json()["points"]
            # Positions need the telemetry grant, like the live map.
            assert (await integrator.get(f"/api/v1/activations/{aid}/replay")).status_code == 403
            assert (await client.get("/api/v1/devices/nobody/track")).status_code == 404
            metrics = (await client.get("/metrics")).text
            kept = next(
                line
                for line in metrics.splitlines()
                if line.startswith("actimesh_dispatch_track_fixes ")
            )
            assert float(kept.split()[1]) >= 3
            assert 'actimesh_dispatch_dropped_total{what="track_fix"} 0.0' in metrics


def _at(svc: Dispatch, device_id: str) -> tuple[float | None, float | None] | None:
    """Where the dispatch shows a device now, if it knows it."""
    view = svc.state.devices.get(device_id)
    return None if view is None else (view.lat, view.lon)


async def _at_event(
    client: httpx.AsyncClient, aid: str, device_id: str
) -> tuple[str | None, tuple[float, float] | None]:
    async def found() -> dict[str, Any] | None:
        r = await client.get(f"/api/v1/activations/{aid}")
        return r.json() if r.status_code == 200 else None

    doc = await eventually(found)
    cam = next(c for c in doc["cameras"] if c["device_id"] == device_id)
    at = cam["at_event"]
    return cam["at_event_from"], None if at is None else (round(at[0], 9), round(at[1], 9))


async def test_where_cameras_were_comes_from_the_ledger_after_a_restart(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    lat, lon = destination(*CENTER, 90, 8.0)
    near_at = (round(lat, 9), round(lon, 9))
    async with mesh(agency, broker_port, tmp_path) as m:
        add(m, "bwc-1", DeviceKind.BODY_CAM, unit="u1", at=0.0)
        add(m, "cew-1", DeviceKind.CEW, unit="u1", paired=("bwc-1",))
        add(m, "bwc-near", DeviceKind.BODY_CAM, unit="u2", at=8.0, bearing=90)
        async with running_dispatch(m, tmp_path) as svc:
            await m.ready()
            await eventually(lambda: len(svc.state.tracks.between("bwc-near", 0, 4e9)) >= 1)
            event = await m.agents["cew-1"].raise_event("taser_draw")
            aid = activation_id("cew-1", event.eid)
            await eventually(lambda: aid in svc.state.activations)
            # The live record carries the ledger's position: the line's end.
            live = svc.state.activations[aid].cameras["bwc-near"].at
            assert live is not None
            assert (live.lat, live.lon) == pytest.approx(near_at, abs=1e-9)
            async with api(svc, "dispatcher") as client:
                assert await _at_event(client, aid, "bwc-near") == ("ledger", near_at)
                # A decision row from before positions were kept: the recent tracks.
                with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
                    kept = db.execute(
                        "SELECT device_id, lat, lon FROM decisions WHERE aid = ?", (aid,)
                    ).fetchall()
                    db.execute("UPDATE decisions SET lat = NULL, lon = NULL WHERE aid = ?", (aid,))
                assert await _at_event(client, aid, "bwc-near") == ("tracks", near_at)
                with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
                    db.executemany(
                        "UPDATE decisions SET lat = ?, lon = ? WHERE aid = ? AND device_id = ?",
                        [(lat, lon, aid, device) for device, lat, lon in kept],
                    )
            # The camera moves 60 m off, and this dispatch sees it there: every fix the
            # camera sent from where it was (its recording fix among them) came before.
            far = destination(*CENTER, 90, 60.0)
            m.agents["bwc-near"].position = fixed(*far)
            await eventually(lambda: _at(svc, "bwc-near") == pytest.approx(far, abs=1e-6))

        # The dispatch restarts: its recent tracks hold no fix from where the camera was.
        async with running_dispatch(m, tmp_path) as again, api(again, "dispatcher") as client:
            seen = again.state.tracks.at("bwc-near", event.ts, 5.0)
            assert seen is None or (seen.lat, seen.lon) == pytest.approx(far, abs=1e-6)

            async def ledgered() -> dict[str, Any] | None:
                r = await client.get(f"/api/v1/activations/{aid}")
                return r.json() if r.status_code == 200 else None

            doc = await eventually(ledgered)
            near = next(c for c in doc["cameras"] if c["device_id"] == "bwc-near")
            assert near["at_event_from"] == "ledger"
            assert near["at_event"] == pytest.approx(list(near_at), abs=1e-9)
            paired = next(c for c in doc["cameras"] if c["device_id"] == "bwc-1")
            assert paired["at_event_from"] == "ledger"

            replay = (await client.get(f"/api/v1/activations/{aid}/replay")).json()
            ids = {d["device_id"]: d for d in replay["devices"]}
            assert ids["bwc-near"]["at_event"] == pytest.approx(list(near_at), abs=1e-9)
            # No track of the event any more: the replay starts the camera where the
            # ledger says (fixes since the restart, 60 m off, may follow).
            first = ids["bwc-near"]["points"][0]
            assert first[1:3] == pytest.approx(list(near_at), abs=1e-9)
            assert first[0] <= replay["event_ts"]
