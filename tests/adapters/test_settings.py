"""``[adapters]`` in the TOML config: keys, defaults and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from actimesh.adapters import NmeaSettings
from actimesh.errors import ConfigError
from actimesh.runtime.config import Settings, load_settings


def test_adapters_are_off_by_default() -> None:
    adapters = load_settings().adapters
    assert not adapters.owntracks.enabled
    assert not adapters.osmand.enabled
    assert not adapters.nmea.enabled
    assert not adapters.listening


def test_adapter_tables_are_read(tmp_path: Path) -> None:
    adapters = load_settings(_write(tmp_path, _EXAMPLE)).adapters
    assert adapters.owntracks.enabled
    assert (adapters.osmand.enabled, adapters.osmand.port) == (True, 5055)
    assert adapters.nmea.ports == {"car-12": 10110, "car-13": 10111}
    assert adapters.nmea.hdop_factor_m == 4.0
    assert adapters.rate_per_s == 1.0
    assert adapters.listening


_EXAMPLE = """
[adapters]
rate_per_s = 1

[adapters.owntracks]
enabled = true

[adapters.osmand]
enabled = true
port = 5055

[adapters.nmea]
enabled = true
ports = { "car-12" = 10110, "car-13" = 10111 }
hdop_factor_m = 4
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "actimesh.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[adapters.osmand]\nprot = 1\n", "[adapters.osmand] has unknown key 'prot'"),
        ("[adapters.osmand]\nport = 70000\n", "adapters.osmand.port 70000 must be between"),
        ("[adapters.osmand]\nport = '5055'\n", "adapters.osmand.port must be a int"),
        ('[adapters.nmea]\nports = { "car 1" = 10110 }\n', "'car 1' is not a device id"),
        (
            '[adapters.nmea]\nports = { "car-1" = "x" }\n',
            "adapters.nmea.ports.car-1 must be a port",
        ),
        ("[adapters.nmea]\nenabled = true\n", "enabled with no ports"),
        ("[adapters]\nrate_per_s = 0\n", "adapters.rate_per_s must be above 0"),
        ("[adapters.gps]\nenabled = true\n", "[adapters] has unknown key 'gps'"),
    ],
)
def test_adapter_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_two_devices_may_not_share_a_port() -> None:
    with pytest.raises(ConfigError, match="both have port 10110"):
        NmeaSettings(ports={"car-1": 10110, "car-2": 10110})


def test_up_osmand_port_flag_sets_the_port_and_turns_the_listener_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import actimesh.runtime  # noqa: PLC0415 - patched where `up` imports it from
    from actimesh import cli  # noqa: PLC0415

    started: list[Settings] = []

    async def fake_up(settings: Settings, sim: object, console: object) -> None:
        started.append(settings)

    monkeypatch.setattr(actimesh.runtime, "run_up", fake_up)
    assert cli.main(["up", "--data-dir", str(tmp_path), "--osmand-port", "5056"]) == 0
    osmand = started[0].adapters.osmand
    assert (osmand.enabled, osmand.port) == (True, 5056)
    assert not started[0].adapters.nmea.enabled


def test_up_osmand_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from actimesh import cli  # noqa: PLC0415

    with pytest.raises(SystemExit) as caught:
        cli.main(["up", "--osmand-port", "70000"])
    assert caught.value.code == 2
    assert "70000 is not a TCP port" in capsys.readouterr().err
