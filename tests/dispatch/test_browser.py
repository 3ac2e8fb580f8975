"""The live map in headless Chromium (Debian's), driven by Playwright.

Logs in through the page's form (a wrong password first), fires TASER draws over MQTT,
and watches the activation circle, the incident list and each camera's state appear;
measures how long an activation takes from the trigger's publish to the page (p50
printed, p50 under 1 s asserted); checks a silent camera turns into a visible "no
acknowledgement" alert; takes a screenshot; logs out; and finds the login, the map
view, the zone and the logout in the audit ledger.
Set ``ACTIMESH_SCREENSHOT=docs/dispatch-map.png`` to refresh the one in the docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from actimesh.broker.messages import DeviceKind, activation_id
from actimesh.dispatch.accounts import Role
from tests.dispatch.conftest import add, keep_fresh, running_dispatch, silent_camera
from tests.integration.harness import mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUNS = 5
PASSWORD = "correct horse battery staple"


def _chromium() -> str:
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found is None:
        # Fail, not skip: a suite that silently skips its browser test looks green.
        pytest.fail(
            "chromium is not installed: run `make system-deps` (apt-get install chromium)",
            pytrace=False,
        )
    return found


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    executable = _chromium()
    async with async_playwright() as pw:
        # Playwright gives every launch a fresh, temporary profile (--user-data-dir).
        b = await pw.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            await b.close()


def watch_errors(page: Page, problems: list[str]) -> None:
    """Note in ``problems`` every error the page logs to its console or raises."""
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))


async def until(page: Page, expression: str, timeout: float = 10.0) -> Any:
    """Poll ``expression`` in the page until it is truthy. (Playwright's wait_for_function
    evaluates strings with eval, which the page's Content-Security-Policy forbids.)"""
    try:
        return await eventually(lambda: page.evaluate(expression), timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"{expression!r} not true in the page within {timeout:g} s") from None


async def click_across_a_redraw(page: Page, item: Locator) -> None:
    """Click ``item`` with the incident list redrawn between the button's press and its
    release, as an incident's answers redraw it many times a second."""
    await page.evaluate("import('/static/incidents.js').then((m) => { window.incidents = m; })")
    await item.scroll_into_view_if_needed()
    box = await item.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()
    await page.evaluate("window.incidents.markListDirty(); window.incidents.renderList()")
    await page.mouse.up()


#: The map has stopped moving: no zoom or pan animation on its pane and every grid tile
#: faded in. Checked at the next animation frame, when Leaflet has started an animated
#: zoom it asked that frame for.
MAP_SETTLED = """new Promise((done) => requestAnimationFrame(() => done(
  !document.querySelector('.leaflet-map-pane').matches('.leaflet-zoom-anim, .leaflet-pan-anim')
  && [...document.querySelectorAll('.leaflet-tile')]
       .every((tile) => getComputedStyle(tile).opacity === '1'))))"""


async def test_live_map_shows_activation_cameras_and_alerts_within_a_second(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        # Unit 12 at the scene: an officer with a CEW (no GPS of its own: it borrows its
        # paired body camera's fix) and a body camera, a partner 6 m
        # away, their cruiser 7 m away. Around them: a camera just out of range, one with
        # a stale fix, one switched off, another unit down the street, and a camera that
        # never answers its commands.
        add(m, "u12-bwc1", DeviceKind.BODY_CAM, unit="unit012", at=0.0)
        add(m, "u12-cew1", DeviceKind.CEW, unit="unit012", paired=("u12-bwc1",))
        add(m, "u12-bwc2", DeviceKind.BODY_CAM, unit="unit012", at=6.0, bearing=70)
        add(m, "u12-dash", DeviceKind.DASH_CAM, unit="unit012", at=7.5, bearing=200)
        add(m, "u12-gw", DeviceKind.GATEWAY, unit="unit012", at=8.5, bearing=205)
        add(m, "u07-bwc1", DeviceKind.BODY_CAM, unit="unit007", at=13.0, bearing=120)
        add(m, "u07-bwc2", DeviceKind.BODY_CAM, unit="unit007", at=19.0, bearing=310, age=25.0)
        off = add(m, "u09-bwc1", DeviceKind.BODY_CAM, unit="unit009", at=24.0, bearing=20)
        add(m, "u03-dash", DeviceKind.DASH_CAM, unit="unit003", at=30.0, bearing=250)
        add(m, "u03-gw", DeviceKind.GATEWAY, unit="unit003", at=31.5, bearing=252)
        await m.ready()
        await off.power_off()
        await silent_camera(m, "u05-bwc1", unit="unit005", at=4.0, bearing=300)

        async with browser() as b, asyncio.TaskGroup() as tg:
            fresh = tg.create_task(keep_fresh(m, "u05-bwc1", at=4.0, bearing=300))
            page = await b.new_page(viewport={"width": 1400, "height": 860})
            page.set_default_timeout(10_000)
            problems: list[str] = []
            watch_errors(page, problems)
            await svc.accounts.add_user("kim", Role.DISPATCHER, PASSWORD)
            await page.goto(svc.url + "/", wait_until="load")
            # The login form, not the map: a wrong password first, then the right one.
            await page.wait_for_selector("#login-form", state="visible")
            assert await page.locator("#app").is_hidden()
            await page.fill("#login-user", "kim")
            await page.fill("#login-password", "not the password")
            await page.click("#login-go")
            await until(page, "document.querySelector('#login-msg').textContent")
            assert await page.locator("#login-msg").inner_text() == "wrong user name or password"
            # Chromium logs the 401 answer as a console error; that one was expected.
            assert all("401" in p for p in problems), problems
            problems.clear()
            await page.fill("#login-password", PASSWORD)
            await page.click("#login-go")
            await page.wait_for_selector("#app", state="visible")
            assert await page.locator("#who").inner_text() == "kim · dispatcher"
            await until(page, "window.actimesh && window.actimesh.frames > 0")
            await page.wait_for_selector(".dev.kind-gateway")
            await page.wait_for_selector(".dev.stale")  # u07-bwc2's fix is 25 s old
            await page.wait_for_selector(".dev-offline.kind-body_cam")
            assert await page.locator("#conn-text").inner_text() == "live"

            # Trigger → page latency, measured in the page's own clock (same machine).
            latencies = []
            cew = m.agents["u12-cew1"]
            for _ in range(RUNS):
                sent_ms = time.time() * 1000
                event = await cew.raise_event("taser_draw")
                aid = activation_id("u12-cew1", event.eid)
                seen = await until(page, f"window.actimesh.seen[{aid!r}]", timeout=5.0)
                latencies.append(float(seen) - sent_ms)
                # One activation at a time: the next trigger waits until the page shows
                # this one's three answering cameras recording (u05-bwc1 never answers).
                await until(
                    page, f"window.actimesh.state.activations.get({aid!r}).summary.recording >= 3"
                )
            p50 = statistics.median(latencies)
            print(  # noqa: T201 - the number the issue asks for, in the test log
                f"\ntrigger→page latency over {RUNS} runs: p50 {p50:.0f} ms, "
                f"min {min(latencies):.0f} ms, max {max(latencies):.0f} ms"
            )
            assert p50 < 1000

            # The last activation: its circle, its cameras, the list, the detail.
            await page.wait_for_selector("path.act-circle")
            await page.wait_for_selector(".cam-ring.cam-recording")
            await page.wait_for_selector("path.act-line.cam-no_ack", timeout=5000)
            item = page.locator(f'li.inc[data-aid="{aid}"]')
            await item.wait_for()
            assert "TASER drawn" in await item.inner_text()
            assert "recording" in await item.inner_text()
            # u05-bwc1 never answers: after the timeout the camera and the banner say so.
            banner = page.locator("#alerts")
            await banner.wait_for(state="visible", timeout=5000)
            assert "no acknowledgement from u05-bwc1" in await banner.inner_text()
            # The click selects the incident even if the list is redrawn meanwhile.
            await click_across_a_redraw(page, item)
            detail = page.locator("#detail")
            await detail.wait_for(state="visible")
            await until(page, "document.querySelectorAll('#detail .st-recording').length >= 3")
            # u05-bwc1 turns from commanded to "no acknowledgement" after the timeout.
            await until(
                page, "document.querySelector('#detail').innerText.includes('no acknowledgement')"
            )
            text = await detail.inner_text()
            assert "u12-bwc2" in text
            assert "30.0 / 30 s" in text
            await page.wait_for_selector("#detail h4")  # the ledger's left-out cameras
            assert "too far" in await detail.inner_text()
            assert await page.locator("li.inc").count() == RUNS

            # Filters: another unit's incidents only → none of these.
            await page.select_option("#f-unit", "unit003")
            await page.wait_for_selector("#no-incidents", state="visible")
            await page.select_option("#f-unit", "")

            # Unit 3's lights go on down the street; a dispatcher opens a zone from the
            # map: click "Activate zone", a point, a radius, a name.
            await m.agents["u03-gw"].raise_event("emergency_lights")
            await page.locator("li.inc", has_text="Emergency lights").wait_for()
            await page.click("#zone-btn")
            box = await page.locator("#map").bounding_box()
            assert box is not None
            # The map still (the incident's zoom), then the click; the popup pans the
            # map to fit the form, and a click that lands while the form moves would hit
            # the map and open a new form instead of sending this one.
            await until(page, MAP_SETTLED)
            await page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
            form = page.locator("form.zone-form")
            await form.wait_for()
            await until(page, MAP_SETTLED)
            await form.locator("input[name=radius]").fill("12")
            assert "as kim" in await form.inner_text()
            async with page.expect_response(lambda r: r.url.endswith("/api/v1/zones")) as sent:
                await form.locator("button.go").click()
            answer = await sent.value
            assert answer.status == 202, await answer.text()
            zone_aid = (await answer.json())["aid"]
            zone = page.locator("li.inc", has_text="Dispatcher zone")
            try:
                await zone.wait_for()
            except PlaywrightTimeoutError:
                # Say which link of the chain broke: the engine, or the page's feed.
                with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
                    recorded = db.execute(
                        "SELECT 1 FROM activations WHERE aid = ?", (zone_aid,)
                    ).fetchone()
                connection = await page.locator("#conn-text").inner_text()
                raise AssertionError(
                    f"zone {zone_aid} not listed: in the ledger {recorded is not None}, "
                    f"page connection {connection!r}"
                ) from None
            assert "by kim" in await zone.inner_text()
            assert await page.locator("path.act-circle.zone").count() == 1
            await form.wait_for(state="detached")  # the form closes itself once sent
            assert await page.locator("#zone-btn").inner_text() == "Activate zone…"

            await item.click()
            await until(page, MAP_SETTLED)  # the zoom to the incident has finished
            shot = tmp_path / "dispatch-map.png"
            await page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            target = os.environ.get("ACTIMESH_SCREENSHOT")
            if target:
                shutil.copyfile(shot, target)
            assert problems == []  # no CSP violation, no script error, nothing from outside

            # Log out: back to the form, the map's picture gone with the session.
            await page.click("#logout-btn")
            await page.wait_for_selector("#login-form", state="visible")
            assert await page.locator("#login-msg").inner_text() == "Logged out."
            assert await page.locator("li.inc").count() == 0
            assert await page.evaluate("window.actimesh.state.devices.size") == 0
            fresh.cancel()
        print(f"screenshot: {shot}")  # noqa: T201
    # Who logged in, watched the live map, raised a zone and logged out: in the chain.
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        trail = db.execute(
            "SELECT event_type, subject, outcome FROM records WHERE event_type IN "
            "('login', 'live_view', 'api_change', 'logout') ORDER BY seq"
        ).fetchall()
    assert trail[:3] == [
        ("login", "kim", "denied"),
        ("login", "kim", "success"),
        ("live_view", "kim", "started"),
    ]
    assert ("api_change", "kim", "ok") in trail
    assert trail[-1] == ("logout", "kim", "success")
