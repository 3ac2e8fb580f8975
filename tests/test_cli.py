"""The `actimesh` command: one-line errors, the drill, and `up` with a simulated fleet."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from actimesh import cli
from actimesh.broker import mosquitto
from actimesh.broker.mosquitto import free_port
from actimesh.devices.simulator import SimSettings
from actimesh.drills import default_scenarios, run_drill
from actimesh.geofence import InclusionMode, InclusionPolicy
from actimesh.runtime import run_up
from actimesh.runtime.config import load_settings


def recording_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, highlight=False), out


def test_bad_flag_is_one_line_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "actimesh", "up", "--sim", "zero"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "'zero' is not a whole number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "a.toml"
    bad.write_text("[policy]\nmode = 'nearby'\n")
    assert cli.main(["up", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == "actimesh: policy.mode must be 'inclusive' or 'centre'\n"


def test_missing_mosquitto_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(mosquitto, "FALLBACK_PATHS", ())
    code = cli.main(["up", "--data-dir", str(tmp_path / "d"), "--broker-port", str(free_port())])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert "apt-get install mosquitto" in err


def test_broker_url_of_wrong_scheme_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["up", "--data-dir", str(tmp_path), "--broker", "http://example:80"])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1


async def test_drill_passes_on_a_correct_engine(tmp_path: Path) -> None:
    console, out = recording_console()
    report = await run_drill(console, rounds=1, data_dir=tmp_path)
    assert report.ok, out.getvalue()
    assert "drill passed" in out.getvalue()
    assert len(report.latencies_ms) == sum(len(r.expected) for r in report.results)
    assert (tmp_path / "ledger.sqlite3").exists()


async def test_drill_fails_when_the_engine_misses_a_camera(tmp_path: Path) -> None:
    """The drill's expectations are its own: an engine with another policy fails it."""
    console, out = recording_console()
    expect_inclusive = default_scenarios(InclusionPolicy(mode=InclusionMode.INCLUSIVE))
    report = await run_drill(
        console,
        rounds=1,
        data_dir=tmp_path,
        policy=InclusionPolicy(mode=InclusionMode.CENTRE),
        scenarios=expect_inclusive,
    )
    assert not report.ok
    assert report.results[0].missed == {"s1-bwc-10m-acc1_5"}
    assert "MISSED s1-bwc-10m-acc1_5" in out.getvalue()
    assert "drill FAILED" in out.getvalue()


async def test_up_runs_broker_engine_and_fleet_then_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = load_settings(data_dir=tmp_path, broker_port=port, agency="citytest")
    settings = replace(
        settings,
        dispatch=replace(settings.dispatch, port=0),
        evidence=replace(settings.evidence, port=0),
    )
    sim = SimSettings(units=3, incident_every_s=1.0, seed=7, stop_after_s=2.0)
    console, out = recording_console()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(9.0):
            await run_up(settings, sim, console)
    text = out.getvalue()
    # Nothing went wrong along the way (e.g. retention starting before the recordings).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert f"mqtt://127.0.0.1:{port} (managed Mosquitto)" in text
    assert "3 units" in text
    assert "emergency_lights" in text
    assert "recording, pre-roll 30.0 s" in text
    assert (tmp_path / "ledger.sqlite3").exists()
    assert any((tmp_path / "recordings").iterdir())
    # The managed broker is gone with the command.
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
