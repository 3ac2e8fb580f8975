"""The messages motion-scaled telemetry saves over a simulated shift, against 1 Hz."""

from __future__ import annotations

from pathlib import Path

import pytest

from actimesh.devices import ReportingSettings, TelemetryMode
from actimesh.devices.simulator import SimSettings
from actimesh.devices.simulator_rate import main, measure_rates

MOTION = ReportingSettings(mode=TelemetryMode.MOTION)


async def test_standing_and_walking_crews_send_a_fraction_of_1_hz(tmp_path: Path) -> None:
    report = await measure_rates(SimSettings(units=6), 0.25, tmp_path, reporting=MOTION)
    assert 6 * 5 <= report.devices <= 6 * 7  # a car's 3 devices, 1 or 2 officers' 2 each
    assert report.seconds == 900.0
    assert report.fixed_per_device_s == 1.0
    assert set(report.fixed_by_activity.values()) == {1.0}
    # Standing crews (docked, at a scene) fall to about the heartbeat, 1 in 10 s; a
    # driving one to nearly every second (2.29 m of dead-band at 8 to 14 m/s).
    motion = report.motion_by_activity
    assert motion["driving"] > 0.5
    for activity in set(motion) - {"driving"}:
        assert 0.09 < motion[activity] < 0.25, (activity, motion[activity])
    assert 0.0 < report.motion_per_device_s < 0.9
    assert report.ratio == pytest.approx(1.0 / report.motion_per_device_s)
    assert report.motion_reasons["heartbeat"] > 0
    assert report.motion_reasons["moved"] > 0


async def test_the_same_seed_measures_the_same(tmp_path: Path) -> None:
    settings = SimSettings(units=3)
    first = await measure_rates(settings, 0.05, tmp_path / "a", reporting=MOTION)
    second = await measure_rates(settings, 0.05, tmp_path / "b", reporting=MOTION)
    assert first == second


def test_the_command_prints_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--units", "2", "--hours", "0.02"])
    out = capsys.readouterr().out
    assert "1 Hz:           1.0000 messages per device per second" in out
    assert "ratio:" in out


def test_the_command_refuses_a_bad_fleet_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--units", "0"])
    err = capsys.readouterr().err
    assert "between 1 and 2000 units" in err
