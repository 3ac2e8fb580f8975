"""A simulated shift on Helsinki's streets, on the dispatch map in headless Chromium.

The demo's fleet (``make map-data``: the basemap and the street graph it drives and
walks) runs ten simulated minutes on a clock of the test's own, so crews are spread
over the streets and gathered at scenes; then its clock joins real time, its devices
connect to a real engine and dispatch, and an officer at a scene draws a CEW. Each of
the incident's lines must end where the ledger says the camera's judged fix put it,
and stay there while the cameras move on.

``ACTIMESH_SHIFT_SCREENSHOTS=docs`` saves the pictures at 1600x900 for the docs
(``dispatch-shift.png``: the city with units, clusters and the incident;
``dispatch-incident.png``: the incident's detail; ``dispatch-replay.png``: its replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from actimesh.devices.agent import DeviceAgent
from actimesh.devices.simulator import FleetSimulator, SimSettings
from actimesh.devices.simulator_streets import StreetMap
from actimesh.devices.simulator_world import Mode, Unit
from actimesh.dispatch.accounts import Role
from tests.dispatch.conftest import api, running_dispatch
from tests.dispatch.test_basemap import demo_pmtiles
from tests.dispatch.test_basemap_browser import PIXELS, logged_in
from tests.dispatch.test_browser import MAP_SETTLED, PASSWORD, browser, until
from tests.integration.harness import HOST, mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration

STREETS_DRAWN = f"(() => {{ const d = {PIXELS}; return d.painted > 0.25 * d.total; }})()"
#: Simulated seconds the shift runs before the map is looked at.
WARM_UP_S = 600.0
UNITS = 12


class ShiftClock:
    """The fleet's clock: the test's own while it warms up, then real time."""

    def __init__(self, start: float) -> None:
        self.fake: float | None = start

    def __call__(self) -> float:
        return time.time() if self.fake is None else self.fake


class OffAir:
    """The world's actions while it warms up: nothing reaches the broker (the engine
    would refuse triggers ten minutes old)."""

    async def fire(self, agent: DeviceAgent, event_type: str) -> None:
        return None

    async def stop(self, agent: DeviceAgent) -> None:
        return None

    async def outage(self, agent: DeviceAgent, seconds: float) -> None:
        return None

    def dock(self, unit: Unit) -> None:
        return None


def _at_a_shared_scene(units: list[Unit]) -> Unit:
    """A crew on a scene another crew is at too (the most crowded), else any on a scene."""
    on_scene = [u for u in units if u.mode is Mode.ON_SCENE and u.scene is not None and u.cews]
    assert on_scene, [u.mode for u in units]
    return max(on_scene, key=lambda u: sum(v.scene == u.scene for v in units))


async def _ledger_positions(client: httpx.AsyncClient, aid: str) -> dict[str, list[float]]:
    async def found() -> dict[str, Any] | None:
        r = await client.get(f"/api/v1/activations/{aid}")
        if r.status_code != 200:
            return None
        doc: dict[str, Any] = r.json()
        return doc if any(c["commanded"] for c in doc["cameras"]) else None

    doc = await eventually(found)
    return {
        c["device_id"]: c["at_event"]
        for c in doc["cameras"]
        if c["commanded"] and c["at_event_from"] == "ledger"
    }


async def test_a_shift_in_helsinki_draws_each_line_to_where_the_ledger_says(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    basemap = demo_pmtiles()
    streets = StreetMap.load(basemap.with_suffix(".osm.pbf"))
    clock = ShiftClock(time.time() - WARM_UP_S)
    out = os.environ.get("ACTIMESH_SHIFT_SCREENSHOTS")
    async with (
        asyncio.timeout(170),
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, basemap=str(basemap)) as svc,
    ):
        sim = FleetSimulator(
            topics=m.topics,
            broker_host=HOST,
            broker_port=m.port,
            data_dir=tmp_path / "fleet",
            settings=SimSettings(
                units=UNITS,
                streets=streets,
                incidents_per_crew_hour=6.0,
                on_scene_s=(400.0, 900.0),
                seed=15,
            ),
            clock=clock,
            verifier=m.signer.verifier(),
        )
        # Ten simulated minutes in a second or two: crews drive, respond and gather.
        start = clock()
        assert clock.fake is not None
        while clock.fake < start + WARM_UP_S:
            clock.fake += 1.0
            await sim.world.step(clock.fake, 1.0, OffAir())
        clock.fake = None  # real time from here on (the world is a moment behind)
        fleet = m.tg.create_task(sim.run(), name="fleet")
        try:
            await sim.wait_connected()
            await svc.accounts.add_user("kim", Role.DISPATCHER, PASSWORD)
            await eventually(lambda: len(svc.state.devices) >= len(sim.agents), timeout=20)
            crew = _at_a_shared_scene(sim.units)
            event_at = time.time()
            await sim.fire(crew.cews[0], "taser_draw")
            async with api(svc, "dispatcher") as client:
                aid = await eventually(
                    lambda: next(
                        (
                            a
                            for a, v in svc.state.activations.items()
                            if v.record.src == crew.cews[0].device_id
                            and v.record.ets >= event_at - 5
                        ),
                        None,
                    ),
                    timeout=10,
                )
                ledger = await _ledger_positions(client, aid)
            assert ledger, "no commanded camera with a position in the ledger"

            async with browser() as b:
                watched = await logged_in(b, svc.url)
                page = watched.page
                await page.wait_for_selector(".dev-cluster")
                await until(page, f"window.actimesh.lines({aid!r}) >= {len(ledger)}")
                # Each line ends where the ledger says the camera was, not where it is.
                ends = await page.evaluate(f"window.actimesh.lineEnds({aid!r})")
                for device_id, at in ledger.items():
                    assert ends[device_id] == pytest.approx(at, abs=1e-9), device_id

                # The whole patrol area: units on the streets, crews clustered at scenes.
                await page.evaluate(
                    """(() => {
                      const pts = [...window.actimesh.state.devices.values()]
                        .filter((d) => d.lat != null).map((d) => [d.lat, d.lon]);
                      window.actimesh.map.fitBounds(pts, { padding: [30, 30] });
                    })()"""
                )
                await until(page, MAP_SETTLED)
                # Tiles outside the extract (east of it) may leave the layer "loading":
                # wait for the streets drawn instead.
                await until(page, STREETS_DRAWN, timeout=30)
                await until(page, "document.querySelectorAll('.dev-cluster').length >= 1")
                shots = tmp_path / "shots"
                shots.mkdir()
                await page.screenshot(path=str(shots / "dispatch-shift.png"))

                # The incident's detail: its cameras, and the map fitted to the scene.
                await page.locator(f'li.inc[data-aid="{aid}"]').click()
                await page.locator("#detail").wait_for(state="visible")
                await until(page, MAP_SETTLED)
                ends = await page.evaluate(f"window.actimesh.lineEnds({aid!r})")
                for device_id, at in ledger.items():
                    assert ends[device_id] == pytest.approx(at, abs=1e-9), device_id
                await page.screenshot(path=str(shots / "dispatch-incident.png"))

                await page.click("#replay-btn")
                await until(page, "window.actimesh.replay !== null")
                # Two seconds after the event: every camera where the ledger put it.
                await page.evaluate(
                    """(() => {
                      const scrub = document.querySelector('#replay-scrub');
                      scrub.value = String(window.actimesh.replay.t + 32);
                      scrub.dispatchEvent(new Event('input'));
                    })()"""
                )
                await until(page, MAP_SETTLED)
                await page.screenshot(path=str(shots / "dispatch-replay.png"))
                assert watched.outside == []
                assert watched.problems == []
            for shot in shots.iterdir():
                assert shot.stat().st_size > 50_000, shot
                if out:
                    shutil.copyfile(shot, Path(out) / shot.name)
        finally:
            fleet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fleet
