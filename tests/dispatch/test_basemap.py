"""The basemap: ``[dispatch] basemap`` checked at load, and the PMTiles file served.

The demo's file is the one ``make map-data`` builds (a dependency of ``make test``):
central Helsinki from OpenStreetMap. Other PMTiles files are written by the tests
(:mod:`tests.dispatch.pmtiles_file`), to show each mistake is refused in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from actimesh.dispatch.basemap import BasemapKind
from actimesh.dispatch.routes.page import content_security_policy
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import ConfigError
from actimesh.runtime.config import load_settings
from tests.dispatch.conftest import add_user, api, login, running_dispatch
from tests.dispatch.pmtiles_file import pmtiles_file, raster_pmtiles
from tests.integration.harness import mesh

#: What `make map-data` builds (the Makefile's MAP_PMTILES).
DEMO_PMTILES = Path(__file__).resolve().parents[2] / "build" / "map" / "helsinki.pmtiles"
#: The extract's bounds (west, south, east, north), from its PBF header.
HELSINKI = (24.93517, 60.16415, 24.95341, 60.17911)


def demo_pmtiles() -> Path:
    if not DEMO_PMTILES.is_file():
        # Fail, not skip: the basemap would go untested while the suite looked green.
        pytest.fail("no demo basemap: run `make map-data`", pytrace=False)
    return DEMO_PMTILES


def test_the_demo_basemap_is_read_from_its_pmtiles_header() -> None:
    d = DispatchSettings(basemap=str(demo_pmtiles()))
    source = d.basemap_source
    assert source is not None
    assert source.kind is BasemapKind.PMTILES
    assert source.attribution == "© OpenStreetMap contributors"
    assert {"roads", "buildings", "water"} <= set(source.layers)
    assert (source.min_zoom, source.max_zoom) == (10, 15)
    assert source.bounds is not None
    assert source.bounds == pytest.approx(HELSINKI, abs=1e-4)
    lat, lon, zoom = source.center or (0.0, 0.0, 0)
    assert (lat, lon) == pytest.approx((60.17163, 24.9443), abs=1e-4)
    assert zoom == 15
    assert source.url == "/api/v1/basemap/helsinki.pmtiles"
    # Served by the dispatch: the page may load images and data from itself only.
    assert d.tile_origin is None
    assert "img-src 'self' data:;" in content_security_policy(d)


def test_xyz_and_wmts_templates_are_drawn_from_the_operators_tile_server() -> None:
    xyz = DispatchSettings(
        basemap="https://{s}.tiles.agency.example/streets/{z}/{x}/{y}.png",
        basemap_attribution="City GIS",
    )
    assert xyz.basemap_source is not None
    assert xyz.basemap_source.kind is BasemapKind.XYZ
    assert xyz.basemap_source.to_json()["attribution"] == "City GIS"
    assert "img-src 'self' data: https://*.tiles.agency.example;" in content_security_policy(xyz)
    wmts = DispatchSettings(
        basemap="https://gis.agency.example/wmts/streets/default/GoogleMapsCompatible/"
        "{TileMatrix}/{TileRow}/{TileCol}.png"
    )
    assert wmts.basemap_source is not None
    assert wmts.basemap_source.kind is BasemapKind.WMTS
    assert wmts.basemap_source.url == (
        "https://gis.agency.example/wmts/streets/default/GoogleMapsCompatible/{z}/{y}/{x}.png"
    )
    assert wmts.tile_origin == "https://gis.agency.example"


def test_a_raster_pmtiles_file_is_drawn_from_its_images(tmp_path: Path) -> None:
    path = raster_pmtiles(tmp_path / "ortho.pmtiles", (60.17, 24.94), (42, 111, 219), range(13, 15))
    d = DispatchSettings(basemap=str(path))
    assert d.basemap_source is not None
    doc = d.basemap_source.to_json()
    assert (doc["kind"], doc["tile_type"], doc["layers"]) == ("pmtiles", "png", [])
    assert (doc["min_zoom"], doc["max_zoom"]) == (13, 14)
    assert doc["attribution"] == "© Test orthophoto"
    assert d.tile_origin is None


def test_a_file_without_attribution_takes_the_configured_one(tmp_path: Path) -> None:
    path = pmtiles_file(tmp_path / "city.pmtiles")
    d = DispatchSettings(basemap=str(path), basemap_attribution="© City of Example")
    assert d.basemap_source is not None
    assert d.basemap_source.attribution == "© City of Example"
    assert d.basemap_source.center == (60.17, 24.944, 14)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("missing.pmtiles", "no file"),
        ("garbage.pmtiles", "is not a PMTiles version 3 file"),
        ("unknown.pmtiles", "does not say what its tiles are (tile type 0)"),
        ("brotli.pmtiles", "compresses its tiles with brotli"),
        ("bare.pmtiles", "names no attribution; set dispatch.basemap_attribution"),
        ("city.mbtiles", "is neither a tile URL"),
        ("ftp://tiles.example/{z}/{x}/{y}.png", "a tile URL must be http(s)"),
        ("https://tiles.example/streets.png", "has neither {z}, {x} and {y} (XYZ)"),
        ("https:///{z}/{x}/{y}.png", "has no host"),
        (" ", "dispatch.basemap is empty"),
    ],
)
def test_bad_basemaps_are_refused_in_one_line_at_load(
    tmp_path: Path, value: str, says: str
) -> None:
    (tmp_path / "garbage.pmtiles").write_bytes(b"<html>not found</html>" * 10)
    pmtiles_file(tmp_path / "unknown.pmtiles", tile_type=0, metadata={"attribution": "x"})
    pmtiles_file(tmp_path / "brotli.pmtiles", tile_compression=3, metadata={"attribution": "x"})
    pmtiles_file(tmp_path / "bare.pmtiles")
    (tmp_path / "city.mbtiles").write_bytes(b"SQLite format 3\0")
    where = value if "://" in value or not value.strip() else str(tmp_path / value)
    conf = tmp_path / "a.toml"
    conf.write_text(f"[dispatch]\nbasemap = {json.dumps(where)}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(conf)
    assert says in str(info.value)
    assert str(info.value).startswith("dispatch.basemap")
    assert "\n" not in str(info.value)


@pytest.mark.integration
async def test_the_pmtiles_file_is_served_in_ranges_behind_the_login(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    path = demo_pmtiles()
    whole = path.read_bytes()
    url = "/api/v1/basemap/helsinki.pmtiles"
    async with (
        mesh(agency, broker_port, tmp_path, engine=False) as m,
        running_dispatch(m, tmp_path, basemap=str(path)) as svc,
    ):
        async with api(svc, None) as anonymous:
            r = await anonymous.get(url, headers={"Range": "bytes=0-126"})
            assert r.status_code == 401
            assert "log in" in r.json()["error"]
        # What the renderer asks for: the header, then pieces further in.
        async with api(svc, "integrator") as client:
            head = await client.get(url, headers={"Range": "bytes=0-126"})
            assert head.status_code == 206
            assert head.content == whole[:127]
            assert head.content.startswith(b"PMTiles\x03")
            assert head.headers["content-range"] == f"bytes 0-126/{len(whole)}"
            assert head.headers["content-type"] == "application/vnd.pmtiles"
            assert head.headers["etag"]
            piece = await client.get(url, headers={"Range": "bytes=1000-4999"})
            assert (piece.status_code, piece.content) == (206, whole[1000:5000])
            full = await client.get(url)
            assert (full.status_code, full.content) == (200, whole)
            assert full.headers["accept-ranges"] == "bytes"
            beyond = await client.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})
            assert beyond.status_code == 416
        # A dispatcher's browser session reads it too (the page's renderer does).
        password = await add_user(svc, "kim")
        async with httpx.AsyncClient(base_url=svc.url, trust_env=False) as browser:
            await login(browser, "kim", password)
            r = await browser.get(url, headers={"Range": "bytes=0-126"})
            assert r.status_code == 206


@pytest.mark.integration
async def test_only_the_configured_file_is_served_whatever_the_name_holds(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    path = maps / "helsinki.pmtiles"
    shutil.copyfile(demo_pmtiles(), path)
    (maps / "helsinki.osm.pbf").write_bytes(b"PMTiles\x03 the neighbour")
    secret = tmp_path / "secret.pmtiles"
    secret.write_bytes(b"PMTiles\x03 not for the browser")
    async with (
        mesh(agency, broker_port, tmp_path, engine=False) as m,
        running_dispatch(m, tmp_path, basemap=str(path)) as svc,
        api(svc) as client,
    ):
        for name in (
            "helsinki.osm.pbf",  # its neighbour
            "..%2F..%2Fpyproject.toml",
            "%2e%2e%2fhelsinki.pmtiles",
            "..",
            f"..%2F..%2F..%2F..%2F..%2F..%2F..{secret}".replace("/", "%2F"),
            "HELSINKI.PMTILES",
        ):
            r = await client.get(f"/api/v1/basemap/{name}")
            assert r.status_code == 404, (name, r.status_code)
            assert b"PMTiles" not in r.content
            # A name with a (decoded) slash or a dot segment does not even reach the route.
            if name.endswith(("S", "pbf")):
                assert "this server serves /api/v1/basemap/helsinki.pmtiles" in r.json()["error"]
        # Raw dot segments never leave the route either (whatever the client does).
        raw = await client.get(
            httpx.URL(svc.url + "/api/v1/basemap/x").copy_with(
                raw_path=b"/api/v1/basemap/../../../pyproject.toml"
            )
        )
        assert raw.status_code in (401, 404)
        assert b"[project]" not in raw.content
        assert (await client.get("/api/v1/basemap/helsinki.pmtiles")).status_code == 200
        # The file taken away under a running server: a clear 503, not a 500.
        path.unlink()
        gone = await client.get("/api/v1/basemap/helsinki.pmtiles")
        assert gone.status_code == 503
        assert "is gone; put it back" in gone.json()["error"]


@pytest.mark.integration
async def test_without_a_pmtiles_basemap_there_is_nothing_to_serve(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path, engine=False) as m,
        running_dispatch(m, tmp_path, basemap="https://tiles.example.org/{z}/{x}/{y}.png") as svc,
        api(svc) as client,
    ):
        r = await client.get("/api/v1/basemap/helsinki.pmtiles")
        assert r.status_code == 404
        assert r.json()["error"].endswith("this server serves none")
