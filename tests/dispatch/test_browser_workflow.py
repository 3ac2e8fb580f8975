"""The map a dispatcher uses for a shift, in headless Chromium at 1600x900: lines to
where cameras were at the event that fade when the activation ends, clustering at city
zoom with the event pin on top, acknowledging an alert and an incident, a note, the
audible alert and its mute, and an incident's replay scrubbed back and forth."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from actimesh.broker.codec import encode
from actimesh.broker.messages import DeviceKind, DeviceState, Presence, Telemetry, activation_id
from actimesh.dispatch.accounts import Role
from actimesh.geofence import destination
from tests.dispatch.conftest import add, keep_fresh, running_dispatch, silent_camera
from tests.dispatch.test_browser import MAP_SETTLED, PASSWORD, browser, until, watch_errors
from tests.integration.harness import CENTER, Mesh, fixed, mesh

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(120)]

#: Units spread over the city, for clustering: (id, metres from the centre, bearing).
CITY = [(f"c{n:02d}-bwc1", 250.0 + 60.0 * n, 15.0 * n) for n in range(24)]


async def _city(m: Mesh) -> None:
    """Presence and one fix for each of the city's units (no agent each: one client)."""
    async with m.client() as client:
        for device_id, at, bearing in CITY:
            lat, lon = destination(*CENTER, bearing, at)
            presence = Presence(
                online=True, ts=time.time(), device_kind=DeviceKind.BODY_CAM, unit=device_id[:3]
            )
            fix = Telemetry(ts=time.time(), state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=3.0)
            await client.publish(m.topics.presence(device_id), encode(presence), qos=1, retain=True)
            await client.publish(m.topics.telemetry(device_id), encode(fix), qos=1)


async def _scrub(page: Page, t: float) -> Any:
    """Move the replay's time line to ``t`` as a dispatcher dragging it would."""
    return await page.evaluate(
        """(t) => { const s = document.querySelector('#replay-scrub'); s.value = String(t);
        s.dispatchEvent(new Event('input')); return window.actimesh.replay; }""",
        t,
    )


async def test_a_shift_on_the_map_lines_clusters_acknowledgements_and_replay(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        add(m, "u12-bwc1", DeviceKind.BODY_CAM, unit="unit012", at=0.0)
        add(m, "u12-cew1", DeviceKind.CEW, unit="unit012", paired=("u12-bwc1",))
        bwc2 = add(m, "u12-bwc2", DeviceKind.BODY_CAM, unit="unit012", at=6.0, bearing=70)
        add(m, "u12-dash", DeviceKind.DASH_CAM, unit="unit012", at=7.5, bearing=200)
        add(m, "u14-bwc1", DeviceKind.BODY_CAM, unit="unit014", at=5.0, bearing=140)
        await m.ready()
        await silent_camera(m, "u05-bwc1", unit="unit005", at=4.0, bearing=300)
        await _city(m)
        await svc.accounts.add_user("kim", Role.DISPATCHER, PASSWORD)

        async with browser() as b, asyncio.TaskGroup() as tg:
            fresh = tg.create_task(keep_fresh(m, "u05-bwc1", at=4.0, bearing=300))
            page = await b.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(10_000)
            problems: list[str] = []
            watch_errors(page, problems)
            await page.goto(svc.url + "/", wait_until="load")
            await page.fill("#login-user", "kim")
            await page.fill("#login-password", PASSWORD)
            await page.click("#login-go")
            await page.wait_for_selector("#app", state="visible")
            await until(page, "window.actimesh.state.devices.size >= 30")

            # City zoom: the units are a few counted clusters, not 30 overlapping icons.
            await page.evaluate("window.actimesh.map.setView(window.actimesh.map.getCenter(), 14)")
            await until(page, MAP_SETTLED)
            await until(page, "document.querySelectorAll('.dev-cluster').length > 0")
            icons = await page.evaluate(
                "document.querySelectorAll('.leaflet-marker-icon.dev').length"
            )
            assert icons < 20, icons

            # The trigger: u12's CEW; bwc1 (paired), bwc2, the dash and u14 within range,
            # u05 never answers.
            event = await m.agents["u12-cew1"].raise_event("taser_draw")
            aid = activation_id("u12-cew1", event.eid)
            await until(page, f"window.actimesh.state.activations.get({aid!r})")
            # At city zoom the event pin is on top of the cluster at the same place.
            on_top = """(aid) => { const pin = document.querySelector('.act-pin');
              const r = pin.getBoundingClientRect();
              const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
              return Boolean(hit && hit.closest('.act-pin')); }"""
            assert await page.evaluate(on_top, aid)
            city = os.environ.get("ACTIMESH_CITY_SCREENSHOT")
            if city:  # the picture for the docs: clusters and the event at city zoom
                await page.screenshot(path=city)
            await until(
                page, f"window.actimesh.state.activations.get({aid!r}).summary.recording >= 4"
            )
            await until(page, f"window.actimesh.lines({aid!r}) >= 5")  # active: lines drawn

            # bwc2 walks 40 m off after the event: its line still ends where it was.
            at_event = await page.evaluate(
                f"window.actimesh.state.activations.get({aid!r}).cameras"
                ".find((c) => c.id === 'u12-bwc2').at"
            )
            lat, lon = destination(*CENTER, 70, 46.0)
            bwc2.position = fixed(lat, lon)
            await until(
                page,
                f"Math.abs(window.actimesh.state.devices.get('u12-bwc2').lat - {lat}) < 1e-7",
            )
            again = await page.evaluate(
                f"window.actimesh.state.activations.get({aid!r}).cameras"
                ".find((c) => c.id === 'u12-bwc2').at"
            )
            assert again == at_event
            assert at_event[0] == pytest.approx(destination(*CENTER, 70, 6.0)[0], abs=1e-6)

            # The alert sounds, once; acknowledging it takes it off the bar, in the ledger.
            banner = page.locator("#alerts")
            await banner.wait_for(state="visible", timeout=5000)
            assert "u05-bwc1" in await banner.inner_text()
            await until(page, "window.actimesh.beeps === 1")
            await page.click("#alert-ack")
            await banner.wait_for(state="hidden")

            # The incident: several camera rows visible at 1600x900 without scrolling.
            await page.locator(f'li.inc[data-aid="{aid}"]').click()
            detail = page.locator("#detail")
            await detail.wait_for(state="visible")
            await until(page, MAP_SETTLED)
            rows_visible = await page.evaluate(
                """() => { const box = document.querySelector('#detail').getBoundingClientRect();
                return [...document.querySelectorAll('#detail table:first-of-type tr')].slice(1)
                  .filter((tr) => tr.getBoundingClientRect().bottom <= box.bottom).length; }"""
            )
            assert rows_visible >= 5, rows_visible
            assert "effective" in await detail.inner_text()
            # The view fits the incident: its effective radius all in sight.
            fits = """(aid) => { const a = window.actimesh.state.activations.get(aid);
              const r = a.radius + window.actimesh.state.config.gps_margin_m;
              const scene = L.latLng(a.lat, a.lon).toBounds(2 * r);
              return window.actimesh.map.getBounds().contains(scene); }"""
            assert await page.evaluate(fits, aid)

            # Acknowledge it, and leave a note: both in the ledger, both on the page.
            await page.click("#ack-btn")
            await until(page, "document.querySelector('#ack-btn').textContent.includes('kim')")
            await page.fill(".note-form textarea", "Unit 12 on scene, suspect detained")
            await page.click(".note-form button")
            await until(
                page, "document.querySelector('#detail .notes').innerText.includes('detained')"
            )
            await until(page, f"document.querySelector('li.inc[data-aid=\"{aid}\"] .acked')")
            target = os.environ.get("ACTIMESH_SHIFT_SCREENSHOT")
            if target:  # the picture for the docs: the selected incident at 1600x900
                await page.screenshot(path=target)

            # Following unit 12 draws where it went in the last 2 minutes.
            await page.select_option("#follow", "unit012")
            await until(page, "window.actimesh.trackPoints() >= 4")
            await until(page, "document.querySelectorAll('path.track').length >= 1")
            await page.select_option("#follow", "")

            # The officers stop recording: the activation has ended. Selected, its lines
            # stay; once closed, they fade out and are gone.
            for device_id in ("u12-bwc1", "u12-bwc2", "u12-dash", "u14-bwc1"):
                await m.agents[device_id].stop_recording()
            await until(
                page,
                "['u12-bwc1','u12-bwc2','u12-dash','u14-bwc1'].every((id) => "
                "window.actimesh.state.devices.get(id).status === 'buffering')",
            )
            assert await page.evaluate(f"window.actimesh.lines({aid!r})") >= 5
            # The replay: from 30 s before the event, scrubbed to before the event and to
            # while the cameras recorded.
            await page.click("#replay-btn")
            await page.wait_for_selector("#replay", state="visible")
            start = await until(page, "window.actimesh.replay && window.actimesh.replay.t")
            assert start == pytest.approx(event.ts - 30.0, abs=0.05)
            replay = await (
                await page.request.get(f"{svc.url}/api/v1/activations/{aid}/replay")
            ).json()
            points = next(d for d in replay["devices"] if d["device_id"] == "u12-bwc1")["points"]
            recording = next(p[0] for p in points if p[4] == "recording")
            stopped = next(p[0] for p in points if p[0] > recording and p[4] == "buffering")
            before = await _scrub(page, event.ts - 0.5)
            assert before["states"]["u12-bwc1"] == "buffering"
            during = await _scrub(page, recording + 0.05)
            assert during["states"]["u12-bwc1"] == "recording"
            after = await _scrub(page, stopped + 0.05)
            assert after["states"]["u12-bwc1"] == "buffering"
            # At its end every camera that recorded is buffering again.
            end = await _scrub(page, replay["end"])
            assert [end["states"][d] for d in ("u12-bwc2", "u12-dash", "u14-bwc1")] == [
                "buffering"
            ] * 3
            await page.click("#replay-close")
            await page.wait_for_selector("#replay", state="hidden")

            await page.click("#detail button:text('Close')")
            await until(page, f"window.actimesh.lines({aid!r}) === 0", timeout=5.0)

            # Muted, a new alert makes no sound.
            await page.click("#mute-btn")
            event2 = await m.agents["u12-cew1"].raise_event("taser_draw")
            aid2 = activation_id("u12-cew1", event2.eid)
            await until(page, f"window.actimesh.state.alerts.get('{aid2}:u05-bwc1:no_ack')")
            await until(page, "window.actimesh.mutedBeeps >= 1")
            assert await page.evaluate("window.actimesh.beeps") == 1
            # Street level: every device on its own again.
            await page.evaluate(f"window.actimesh.map.setView([{CENTER[0]}, {CENTER[1]}], 18)")
            await until(page, MAP_SETTLED)
            await until(page, "document.querySelectorAll('.dev-cluster').length === 0")
            assert problems == []
            fresh.cancel()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        rows = db.execute(
            "SELECT event_type, subject, outcome, aid FROM records WHERE event_type IN "
            "('dispatch_ack', 'incident_note') ORDER BY seq"
        ).fetchall()
    assert rows == [
        ("dispatch_ack", "kim", "alert", aid),
        ("dispatch_ack", "kim", "incident", aid),
        ("incident_note", "kim", "ok", aid),
    ]
