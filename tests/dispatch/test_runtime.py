"""`actimesh up` starts the dispatch map, prints its address, and stops it cleanly."""

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
from actimesh.config import load_settings
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import ConfigError
from actimesh.runtime import run_up
from tests.dispatch.conftest import eventually

pytestmark = pytest.mark.integration


async def test_up_serves_the_map_at_the_printed_address(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, broker_port=free_port(), agency="citymap")
    settings = replace(settings, dispatch=replace(settings.dispatch, port=0))
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False)
    task = asyncio.create_task(run_up(settings, None, console), name="up")
    try:
        found = await eventually(
            lambda: re.search(r"dispatch (http://127\.0\.0\.1:\d+)", out.getvalue()), timeout=30
        )
        url = found.group(1)
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=5) as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert '<script src="/vendor/leaflet/leaflet.js">' in page.text
            leaflet = await client.get("/vendor/leaflet/leaflet.js")
            assert leaflet.status_code == 200, "run `make web-deps` (npm ci) to install Leaflet"
            assert (await client.get("/static/app.js")).status_code == 200
            health = (await client.get("/api/v1/health")).json()
            assert health["agency"] == "citymap"
            assert health["mqtt_connected"] is True
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_busy_http_port_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(["up", "--data-dir", str(tmp_path), "--broker-port", str(free_port()),
                         "--http-port", str(port)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert f"dispatch cannot listen on 127.0.0.1:{port}" in err
    assert "--http-port N" in err


def test_dispatch_settings_from_toml(tmp_path: Path) -> None:
    conf = tmp_path / "a.toml"
    conf.write_text(
        '[dispatch]\nport = 9090\nack_timeout_s = 8\nconsole_id = "north"\n'
        'tile_url = "https://tiles.example.org/{z}/{x}/{y}.png"\n'
    )
    d = load_settings(conf).dispatch
    assert (d.port, d.ack_timeout_s, d.source_device) == (9090, 8, "dispatch-north")
    assert d.tile_origin == "https://tiles.example.org"


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("[dispatch]\nport = 99999\n", "dispatch.port 99999 must be between 0 and 65535"),
        ("[dispatch]\nport = 80.5\n", "dispatch.port must be a whole number"),
        ("[dispatch]\nack_timeout_s = 0\n", "dispatch.ack_timeout_s must be a positive number"),
        ("[dispatch]\ncolour = 'red'\n", "[dispatch] has unknown key 'colour'"),
        ("[dispatch]\ntile_url = 'ftp://x/{z}/{x}/{y}'\n", "must be an http(s) URL"),
        ("[dispatch]\ntile_url = 'https://x/tiles'\n", "must contain {z}, {x} and {y}"),
        ("[dispatch]\nconsole_id = 'a b'\n", "dispatch.console_id 'a b' must match"),
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
    assert (d.host, d.port, d.tile_url, d.ack_timeout_s) == ("127.0.0.1", 8080, None, 5.0)
