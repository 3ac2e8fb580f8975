"""`actimesh up` starts the dispatch map, prints its address and (on first start) the
admin's password, and stops it cleanly."""

from __future__ import annotations

import asyncio
import io
import re
import socket
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from actimesh import cli
from actimesh.broker.mosquitto import free_port
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import ConfigError
from actimesh.runtime import run_up
from actimesh.runtime.config import load_settings
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def _up(tmp_path: Path) -> tuple[asyncio.Task[None], io.StringIO, str]:
    """Start `up` on ``tmp_path``; the task, its output so far, the dispatch URL."""
    settings = load_settings(data_dir=tmp_path, broker_port=free_port(), agency="citymap")
    settings = replace(
        settings,
        dispatch=replace(settings.dispatch, port=0),
        evidence=replace(settings.evidence, port=0),
    )
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False)
    task = asyncio.create_task(run_up(settings, None, console), name="up")
    found = await eventually(
        lambda: re.search(r"dispatch (http://127\.0\.0\.1:\d+)", out.getvalue()), timeout=30
    )
    await eventually(lambda: "Ctrl-C" in out.getvalue(), timeout=30)
    return task, out, found.group(1)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_up_serves_the_map_at_the_printed_address(tmp_path: Path) -> None:
    task, out, url = await _up(tmp_path)
    try:
        # First start: an admin, its password printed once, and how to change it.
        found = re.search(r"login    user admin, password (\S+)\n", out.getvalue())
        assert found is not None, out.getvalue()
        password = found.group(1)
        assert "actimesh users passwd admin" in out.getvalue()
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=5) as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert '<script src="/vendor/leaflet/leaflet.js">' in page.text
            leaflet = await client.get("/vendor/leaflet/leaflet.js")
            assert leaflet.status_code == 200, "run `make web-deps` (npm ci) to install Leaflet"
            renderer = await client.get("/vendor/protomaps-leaflet/protomaps-leaflet.js")
            assert renderer.status_code == 200, "run `make web-deps` (npm ci)"
            assert (await client.get("/static/app.js")).status_code == 200
            # Open health says only ok or not; the rest is for those logged in.
            health = (await client.get("/api/v1/health")).json()
            assert "agency" not in health
            assert (await client.get("/api/v1/devices")).status_code == 401
            r = await client.post(
                "/api/v1/session", json={"username": "admin", "password": password}
            )
            assert r.status_code == 200, r.text
            assert r.json()["role"] == "admin"
            health = (await client.get("/api/v1/health")).json()
            assert health["agency"] == "citymap"
            assert health["mqtt_connected"] is True
    finally:
        await _stop(task)
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


async def test_up_again_says_the_admin_exists_and_prints_no_password(tmp_path: Path) -> None:
    task, first, _ = await _up(tmp_path)
    await _stop(task)
    assert "login    user admin, password " in first.getvalue()
    task, again, _ = await _up(tmp_path)
    await _stop(task)
    assert "login    user admin exists (1 users" in again.getvalue()
    assert "password" not in again.getvalue()


def test_busy_http_port_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The evidence API on a free port too: its default (8471) may be taken by a demo
    # running beside the tests, and that would be the error reported instead.
    config = tmp_path / "actimesh.toml"
    config.write_text(f"[evidence]\nport = {free_port()}\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(
            [
                "up",
                "--config",
                str(config),
                "--data-dir",
                str(tmp_path),
                "--broker-port",
                str(free_port()),
                "--http-port",
                str(port),
            ]
        )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert f"dispatch cannot listen on 127.0.0.1:{port}" in err
    assert "--http-port N" in err


def test_dispatch_settings_from_toml(tmp_path: Path) -> None:
    conf = tmp_path / "a.toml"
    conf.write_text(
        '[dispatch]\nport = 9090\nack_timeout_s = 8\nconsole_id = "north"\n'
        'basemap = "https://tiles.example.org/{z}/{x}/{y}.png"\n'
    )
    d = load_settings(conf).dispatch
    assert (d.port, d.ack_timeout_s, d.source_device) == (9090, 8, "dispatch-north")
    conf.write_text('[dispatch]\nallowed_hosts = ["dispatch.agency.example"]\n')
    assert load_settings(conf).dispatch.allowed_hosts == ("dispatch.agency.example",)
    assert d.tile_origin == "https://tiles.example.org"


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("[dispatch]\nport = 99999\n", "dispatch.port 99999 must be between 0 and 65535"),
        ("[dispatch]\nport = 80.5\n", "dispatch.port must be a whole number"),
        ("[dispatch]\nack_timeout_s = 0\n", "dispatch.ack_timeout_s must be a positive number"),
        ("[dispatch]\ncolour = 'red'\n", "[dispatch] has unknown key 'colour'"),
        ("[dispatch]\nbasemap = 'ftp://x/{z}/{x}/{y}'\n", "a tile URL must be http(s)"),
        ("[dispatch]\nbasemap = 'https://x/tiles'\n", "has neither {z}, {x} and {y} (XYZ)"),
        ("[dispatch]\ntile_url = 'https://x/{z}/{x}/{y}'\n", "tile_url is now dispatch.basemap"),
        ("[dispatch]\nconsole_id = 'a b'\n", "dispatch.console_id 'a b' must match"),
        ("[dispatch]\ncors_origins = ['*']\n", "dispatch.cors_origins: '*' is not an origin"),
        ("[dispatch]\ncors_origins = ['https://cad.example/app']\n", "with no path"),
        ("[dispatch]\ncors_origins = 'https://cad.example'\n", "cors_origins must be a list"),
        ("[dispatch]\ncors_origins = [3]\n", "dispatch.cors_origins: 3 is not an origin"),
        ("[dispatch]\npublic_url = 'dispatch.example'\n", "must be an http(s) URL"),
        (
            "[dispatch]\nallowed_hosts = ['https://d.example']\n",
            "dispatch.allowed_hosts: 'https://d.example' is not a host name",
        ),
        ("[dispatch]\nallowed_hosts = 'd.example'\n", "allowed_hosts must be a list"),
        ("[dispatch]\ntls_certfile = 'a.pem'\n", "tls_certfile and dispatch.tls_keyfile go"),
        ("[dispatch]\nlogin_max_failures = 0\n", "login_max_failures must be a positive"),
        ("[dispatch]\nlogin_max_failures = 2.5\n", "login_max_failures must be a whole"),
        ("[dispatch]\nsession_idle_s = 86400\n", "session_idle_s must not exceed session_max"),
    ],
)
def test_bad_dispatch_settings_are_one_line(tmp_path: Path, toml: str, says: str) -> None:
    conf = tmp_path / "a.toml"
    conf.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(conf)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_defaults_are_loopback_8080_with_no_external_tiles() -> None:
    d = DispatchSettings()
    assert (d.host, d.port, d.basemap, d.ack_timeout_s) == ("127.0.0.1", 8080, None, 5.0)
    # No other site may call the API, sessions end after 30 min idle and 12 h in all.
    assert (d.cors_origins, d.session_idle_s, d.session_max_s) == ((), 1800.0, 43200.0)
    assert not d.public_url_https


def test_web_security_settings_from_toml(tmp_path: Path) -> None:
    conf = tmp_path / "a.toml"
    conf.write_text(
        '[dispatch]\ncors_origins = ["https://cad.agency.example"]\n'
        'public_url = "https://dispatch.agency.example/map"\n'
        'tls_certfile = "/etc/actimesh/server.pem"\ntls_keyfile = "/etc/actimesh/server.key"\n'
        "login_max_failures = 3\nsession_idle_s = 600\n"
    )
    d = load_settings(conf).dispatch
    assert d.cors_origins == ("https://cad.agency.example",)
    assert d.public_origin == "https://dispatch.agency.example"
    assert d.tls_certfile == Path("/etc/actimesh/server.pem")
    assert (d.tls, d.public_url_https, d.login_max_failures, d.session_idle_s) == (
        True,
        True,
        3,
        600,
    )
