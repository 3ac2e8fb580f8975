"""The `actimesh` command: one-line errors, no tracebacks, and the exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from actimesh import cli
from actimesh.broker import mosquitto
from actimesh.broker.mosquitto import free_port
from actimesh.runtime import postgres


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


def test_mqtt_protocol_is_5_or_3_1_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["up", "--mqtt-protocol", "4"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "invalid choice: '4' (choose from '5', '3.1.1')" in err


def test_cluster_up_without_postgresql_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(postgres, "_PG_ROOT", tmp_path / "no-postgresql")
    code = cli.main(["cluster", "up", "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "make postgres-deps" in err
