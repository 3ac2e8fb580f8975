"""`actimesh up --sim` and `sim`: the fleet's flags, its city, and every listener's port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import actimesh.runtime
from actimesh import cli
from actimesh.devices.simulator import DEFAULT_SEED, SimSettings
from actimesh.runtime.config import Settings
from tests.devices.osm import grid_city


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Settings, SimSettings | None]]:
    """What `up` would run, instead of running it."""
    calls: list[tuple[Settings, SimSettings | None]] = []

    async def fake_up(settings: Settings, sim: SimSettings | None, console: Console) -> None:
        calls.append((settings, sim))

    monkeypatch.setattr(actimesh.runtime, "run_up", fake_up)
    return calls


def test_a_missing_map_given_by_flag_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    code = cli.main(["up", "--sim", "2", "--map", str(tmp_path / "nowhere.osm.pbf")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "does not exist; run `make map-data`" in err
    assert started == []


def test_a_file_that_is_no_extract_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[Any]
) -> None:
    bad = tmp_path / "bad.osm.pbf"
    bad.write_text("not a map\n")
    assert cli.main(["up", "--sim", "2", "--map", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is not a usable OpenStreetMap extract" in err


def test_without_the_demo_extract_the_fleet_patrols_a_synthetic_area(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[tuple[Settings, SimSettings | None]],
) -> None:
    monkeypatch.chdir(tmp_path)  # no build/map/helsinki.osm.pbf here
    assert cli.main(["up", "--sim", "3"]) == 0
    assert "run `make map-data`" in capsys.readouterr().out
    ((_, sim),) = started
    assert sim is not None
    assert sim.streets is None
    assert sim.seed == DEFAULT_SEED


def test_fleet_flags_seed_busy_and_map(
    tmp_path: Path, started: list[tuple[Settings, SimSettings | None]]
) -> None:
    city = tmp_path / "city.osm.pbf"
    grid_city(city)
    assert cli.main(["up", "--sim", "3", "--seed", "7", "--busy", "--map", str(city)]) == 0
    ((_, sim),) = started
    assert sim is not None
    assert sim.seed == 7
    assert sim.streets is not None
    assert sim.streets.source == city
    assert sim.incidents_per_crew_hour == SimSettings().busy().incidents_per_crew_hour
    assert sim.incidents_per_crew_hour > 10 * SimSettings().incidents_per_crew_hour


def test_every_listener_has_a_port_flag(
    tmp_path: Path, started: list[tuple[Settings, SimSettings | None]]
) -> None:
    args = ["up", "--data-dir", str(tmp_path), "--broker-port", "11883"]
    args += ["--broker-tls-port", "18883", "--http-port", "18080", "--evidence-port", "18471"]
    args += ["--osmand-port", "15055"]
    assert cli.main(args) == 0
    ((settings, sim),) = started
    assert sim is None
    assert settings.broker_port == 11883
    assert settings.broker.tls_port == 18883
    assert settings.dispatch.port == 18080
    assert settings.evidence.port == 18471
    assert settings.adapters.osmand.port == 15055


def test_the_evidence_port_is_also_a_config_key(
    tmp_path: Path, started: list[tuple[Settings, SimSettings | None]]
) -> None:
    config = tmp_path / "a.toml"
    config.write_text("[evidence]\nport = 18472\n[dispatch]\nport = 18081\n")
    assert cli.main(["up", "--config", str(config), "--data-dir", str(tmp_path)]) == 0
    ((settings, _),) = started
    assert settings.evidence.port == 18472
    assert settings.dispatch.port == 18081


def test_incident_every_paces_the_fleet_and_refuses_zero(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[tuple[Settings, SimSettings | None]],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["up", "--sim", "2", "--incident-every", "5"]) == 0
    ((_, sim),) = started
    assert sim is not None
    assert sim.incident_every_s == 5.0
    assert cli.main(["up", "--sim", "2", "--incident-every", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--incident-every must be a number of seconds above 0" in err


def test_the_fleet_reports_motion_scaled_by_config_or_flag(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[tuple[Settings, SimSettings | None]],
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "a.toml"
    config.write_text('[telemetry]\nmode = "motion"\nheartbeat_s = 20\n')
    assert cli.main(["up", "--sim", "1", "--config", str(config)]) == 0
    assert cli.main(["up", "--sim", "1", "--config", str(config), "--heartbeat", "12"]) == 0
    assert cli.main(["up", "--sim", "1", "--telemetry", "1hz"]) == 0
    modes = [(s.reporting.mode.value, s.reporting.heartbeat_s) for _, s in started if s]
    assert modes == [("motion", 20.0), ("motion", 12.0), ("1hz", 10.0)]
    for flags, message in [
        (["--telemetry", "fast"], "--telemetry must be '1hz' or 'motion', got 'fast'"),
        (["--heartbeat", "0"], "--heartbeat must be seconds above 0 and at most 300"),
        (["--heartbeat", "nan"], "--heartbeat must be seconds above 0 and at most 300"),
    ]:
        assert cli.main(["up", "--sim", "1", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert message in err
