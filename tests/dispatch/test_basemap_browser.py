"""The basemap in headless Chromium: Helsinki's streets, and nothing from another host.

A unit at a scene in central Helsinki and two more crews down the street; the dispatch
serves the demo's PMTiles (``make map-data``). Every request the page makes goes through
a route that refuses, and records, any whose host is not the test server: the test fails
on one. The streets must be drawn (tile canvases with road and building colours, not
only the background), the layer must report loaded, and the credit OpenStreetMap's
licence requires must be on the map. Then a TASER draw, and a picture at 1600x900.
Set ``ACTIMESH_BASEMAP_SCREENSHOT=docs/dispatch-basemap.png`` to refresh the one in
the docs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, Route

from actimesh.broker.messages import DeviceKind, activation_id
from actimesh.dispatch.accounts import Role
from tests.dispatch.conftest import add, running_dispatch
from tests.dispatch.pmtiles_file import raster_pmtiles
from tests.dispatch.test_basemap import demo_pmtiles
from tests.dispatch.test_browser import MAP_SETTLED, PASSWORD, browser, until, watch_errors
from tests.integration import harness
from tests.integration.harness import mesh

pytestmark = pytest.mark.integration

#: The middle of the demo's extract (its PMTiles centre): Kamppi, central Helsinki.
HELSINKI = (60.17163, 24.94430)

#: Share of each tile's pixels that are street white, building or green, and that are
#: anything but the background; measured on a sample of every 4th pixel.
PIXELS = """(() => {
  const tiles = [...document.querySelectorAll('.basemap canvas')];
  let total = 0, painted = 0, streets = 0;
  for (const c of tiles) {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 16) {
      total++;
      const r = d[i], g = d[i + 1], b = d[i + 2];
      if (d[i + 3] === 0 || (r === 0xf3 && g === 0xf0 && b === 0xeb)) continue;
      painted++;
      if (r > 250 && g > 250 && b > 250) streets++;
    }
  }
  return { tiles: tiles.length, total, painted, streets };
})()"""


#: Every basemap tile on the map has been drawn, and the layer says so.
TILES_DRAWN = """document.querySelector('#map').dataset.basemap === 'loaded'
  && [...document.querySelectorAll('.basemap .leaflet-tile')]
       .every((tile) => tile.classList.contains('leaflet-tile-loaded'))"""


@dataclass
class Watched:
    """A logged-in page, every request it made to another host (refused), the errors
    it logged, and (status, Range) of each basemap read."""

    page: Page
    outside: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tiles: list[tuple[int, str]] = field(default_factory=list)


async def logged_in(b: Browser, url: str) -> Watched:
    """The map page at 1600x900, logged in as kim, any request elsewhere refused."""
    server = urlsplit(url).netloc
    watched = Watched(await b.new_page(viewport={"width": 1600, "height": 900}))
    page = watched.page
    page.set_default_timeout(15_000)

    async def only_this_server(route: Route) -> None:
        if urlsplit(route.request.url).netloc != server:
            watched.outside.append(route.request.url)
            await route.abort("blockedbyclient")
        else:
            await route.continue_()

    await page.route("**/*", only_this_server)
    watch_errors(page, watched.problems)
    page.on(
        "response",
        lambda r: (
            watched.tiles.append((r.status, r.request.headers.get("range", "")))
            if "/api/v1/basemap/" in r.url
            else None
        ),
    )
    await page.goto(url + "/", wait_until="load")
    await page.fill("#login-user", "kim")
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-go")
    await page.wait_for_selector("#app", state="visible")
    return watched


async def test_the_basemap_draws_helsinki_streets_from_this_server_only(
    agency: str, broker_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = demo_pmtiles()
    # The mesh places its devices around its centre: Helsinki, where the streets are.
    monkeypatch.setattr(harness, "CENTER", HELSINKI)
    async with (
        asyncio.timeout(90),
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, basemap=str(path)) as svc,
    ):
        add(m, "u12-bwc1", DeviceKind.BODY_CAM, unit="unit012", at=0.0)
        add(m, "u12-cew1", DeviceKind.CEW, unit="unit012", paired=("u12-bwc1",))
        add(m, "u12-bwc2", DeviceKind.BODY_CAM, unit="unit012", at=6.0, bearing=70)
        add(m, "u12-dash", DeviceKind.DASH_CAM, unit="unit012", at=9.0, bearing=200)
        add(m, "u07-bwc1", DeviceKind.BODY_CAM, unit="unit007", at=170.0, bearing=35)
        add(m, "u07-dash", DeviceKind.DASH_CAM, unit="unit007", at=176.0, bearing=38)
        add(m, "u03-dash", DeviceKind.DASH_CAM, unit="unit003", at=240.0, bearing=235)
        await m.ready()
        await svc.accounts.add_user("kim", Role.DISPATCHER, PASSWORD)

        async with browser() as b:
            watched = await logged_in(b, svc.url)
            page, outside, problems, tiles = (
                watched.page,
                watched.outside,
                watched.problems,
                watched.tiles,
            )
            await page.wait_for_selector(".dev.kind-dash_cam")
            await page.wait_for_selector("#map[data-basemap=loaded]")
            await until(page, MAP_SETTLED)

            # Read in pieces from this server: the header, directories, the tiles.
            assert len(tiles) >= 2, tiles
            assert all(status == 206 and rng.startswith("bytes=") for status, rng in tiles), tiles
            drawn: dict[str, Any] = await page.evaluate(PIXELS)
            assert drawn["tiles"] >= 4, drawn
            # Streets, buildings, parks: a real share of the map is more than background,
            # and some of it is the white of the streets.
            assert drawn["painted"] > 0.25 * drawn["total"], drawn
            assert drawn["streets"] > 0.02 * drawn["total"], drawn
            credit = await page.locator(".leaflet-control-attribution").inner_text()
            assert "© OpenStreetMap contributors" in credit

            # Zooming out to the whole city and quickly back in (pending tile reads are
            # cancelled on the way) draws the same view again, without an error. The
            # steps are set, not clicked: Leaflet ignores a zoom click while it animates
            # the last one, so clicks would end at a zoom that depends on the load.
            start = await page.evaluate("window.actimesh.map.getZoom()")
            for step in [*range(start - 1, start - 6, -1), *range(start - 4, start + 1)]:
                await page.evaluate(f"window.actimesh.map.setZoom({step}, {{animate: false}})")
            await until(page, f"window.actimesh.map.getZoom() === {start}")
            await until(page, MAP_SETTLED)
            await until(page, TILES_DRAWN)
            again: dict[str, Any] = await page.evaluate(PIXELS)
            share, share_again = (
                drawn["painted"] / drawn["total"],
                again["painted"] / again["total"],
            )
            assert abs(share_again - share) < 0.05, (drawn, again)

            # A TASER draw at the scene: the circle and the incident over the streets.
            event = await m.agents["u12-cew1"].raise_event("taser_draw")
            aid = activation_id("u12-cew1", event.eid)
            await until(
                page, f"window.actimesh.state.activations.get({aid!r})?.summary.recording >= 3"
            )
            await page.wait_for_selector("path.act-circle")
            # Counted as recording in the header (the markers may be drawn as a cluster
            # at this zoom, so the count, not the number of marker elements).
            await until(
                page, "Number(document.querySelector('#counts .c-rec b')?.textContent) >= 3"
            )
            await until(page, MAP_SETTLED)
            shot = tmp_path / "dispatch-basemap.png"
            await page.screenshot(path=str(shot))
            assert shot.stat().st_size > 50_000
            target = os.environ.get("ACTIMESH_BASEMAP_SCREENSHOT")
            if target:
                shutil.copyfile(shot, target)

            assert outside == []  # nothing from a CDN, a tile server, a font service
            assert problems == []  # no CSP violation, no script error


async def test_a_raster_pmtiles_basemap_is_drawn_from_this_server_only(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    # An orthophoto stand-in: one-colour PNG tiles around Helsinki, zoom 14 to 17.
    blue = (42, 111, 219)
    path = raster_pmtiles(tmp_path / "ortho.pmtiles", HELSINKI, blue, range(14, 18))
    async with (
        asyncio.timeout(60),
        mesh(agency, broker_port, tmp_path, engine=False) as m,
        running_dispatch(m, tmp_path, basemap=str(path)) as svc,
    ):
        await svc.accounts.add_user("kim", Role.DISPATCHER, PASSWORD)
        async with browser() as b:
            watched = await logged_in(b, svc.url)
            page = watched.page
            # No devices: the map opens at the file's centre and zoom.
            await page.wait_for_selector("#map[data-basemap=loaded]")
            await until(page, MAP_SETTLED)
            share = await page.evaluate(f"""(() => {{
              let total = 0, blue = 0;
              for (const c of document.querySelectorAll('.basemap canvas')) {{
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                for (let i = 0; i < d.length; i += 16) {{
                  total++;
                  const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
                  if (r === {blue[0]} && g === {blue[1]} && b === {blue[2]}) blue++;
                }}
              }}
              return total ? blue / total : 0;
            }})()""")
            assert share > 0.9, share
            credit = await page.locator(".leaflet-control-attribution").inner_text()
            assert "© Test orthophoto" in credit
            assert watched.tiles
            assert all(status == 206 for status, _ in watched.tiles), watched.tiles
            assert watched.outside == []
            assert watched.problems == []
