"""Settings: embedded defaults, the TOML file, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from actimesh.errors import ConfigError
from actimesh.geofence import InclusionMode
from actimesh.runtime.compose import BrokerAddress
from actimesh.runtime.config import RetentionSettings, load_settings
from actimesh.security.acl import SERVICE_DISPATCH, SERVICE_ENGINE
from actimesh.triggers.settings import EngineSettings


def test_defaults_need_no_file() -> None:
    settings = load_settings()
    assert settings.agency == "demo"
    assert settings.broker_url is None
    assert settings.policy.mode is InclusionMode.INCLUSIVE
    assert {r.event_type for r in settings.rules} >= {"taser_draw", "emergency_lights", "collision"}
    assert settings.ledger_location == Path("actimesh-data") / "ledger.sqlite3"


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "actimesh.toml"
    path.write_text(
        'agency = "calgary"\n'
        "[engine]\ncommand_expiry_s = 60\nfollow_up_silent_s = 50\n"
        '[policy]\nmode = "centre"\nmax_fix_age_s = 5\nmax_still_bracket_s = 240\n'
        '[rules.holster_draw]\ncamera_kinds = ["body_cam"]\n'
        '[broker]\nurl = "mqtt://10.0.0.5:1883"\n'
    )
    settings = load_settings(path, data_dir=tmp_path / "data", agency=None)
    assert settings.agency == "calgary"
    assert settings.engine.command_expiry_s == 60
    assert settings.policy.mode is InclusionMode.CENTRE
    assert settings.policy.max_fix_age_s == 5
    assert settings.policy.max_still_bracket_s == 240
    assert settings.engine.follow_up_silent_s == 50
    assert settings.rules.get("holster_draw") is not None
    assert settings.broker_url == "mqtt://10.0.0.5:1883"
    assert settings.data_dir == tmp_path / "data"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agency = 'has space'", "agency 'has space' must be"),
        ("colour = 'blue'", "unknown setting 'colour'"),
        ("[engine]\nspeed = 3", r"\[engine\] has unknown key 'speed'"),
        ("[engine]\ncommand_expiry_s = -1", "must be a positive number"),
        ("[engine]\ncommand_expiry_s = true", "must be a number, not true/false"),
        ("[policy]\nmode = 'nearby'", "policy.mode must be 'inclusive' or 'centre'"),
        ("[policy]\nmax_fix_age_s = -3", r"\[policy\]"),
        ("[policy]\nmode = 3", "policy.mode must be a str"),
        ("[policy]\nmax_still_bracket_s = 30", r"\[policy\]: max_still_bracket_s must be"),
        ("[engine]\nfollow_up_silent_s = 10", "engine.follow_up_silent_s .* at least"),
        ("engine = 3", r"\[engine\] must be a table"),
        ("rules = 3", r"\[rules\] must be a table"),
        ("[rules]\ntaser_draw = 3", r"\[rules.taser_draw\] must be a table"),
        ("this is not toml", "is not valid TOML"),
        ("[broker]\nport = 0", r"broker port 0 must be between 1 and 65535 \(\[broker\] port"),
        ("[broker]\nport = '1883'", "broker.port must be a int"),
        ("[broker]\nhost = ''", "broker.host must name an address"),
        ("[broker]\nmqtt_protocol = '3'", r"broker.mqtt_protocol '3' must be '5' or '3.1.1'"),
        ("[broker]\nmqtt_protocol = 5", r"broker.mqtt_protocol must be a str"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path)
    assert "\n" not in str(info.value)


def test_the_mqtt_protocol_reaches_every_service_but_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[broker]\nmqtt_protocol = '3.1.1'\n")
    settings = load_settings(path)
    assert settings.broker.mqtt_protocol == "3.1.1"
    assert load_settings().broker.mqtt_protocol == "5"
    address = BrokerAddress("127.0.0.1", 1883, protocol=settings.broker.mqtt_protocol)
    assert address.transport(SERVICE_DISPATCH).settings("x.y").protocol == "3.1.1"
    assert address.transport(SERVICE_DISPATCH).settings("x.y").client_id == "x~y"
    # Its shared subscription and its will need MQTT 5.
    assert address.transport(SERVICE_ENGINE).settings("e").protocol == "5"


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bad_port_and_engine_id() -> None:
    with pytest.raises(ConfigError, match="between 1 and 65535"):
        load_settings(broker_port=70000)
    with pytest.raises(ConfigError, match="engine_id"):
        EngineSettings(engine_id="no spaces please")


def test_every_listener_port_is_a_key_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "actimesh.toml"
    path.write_text(
        '[broker]\nhost = "127.0.0.2"\nport = 11883\ntls_port = 18883\n'
        "[dispatch]\nport = 18080\n[evidence]\nport = 18471\n"
    )
    settings = load_settings(path)
    assert (settings.broker_host, settings.broker_port) == ("127.0.0.2", 11883)
    assert settings.broker.tls_port == 18883
    assert settings.dispatch.port == 18080
    assert settings.evidence.port == 18471
    assert settings.broker_url is None  # a port alone still means the managed broker
    # --broker-port overrides the file, as every flag does.
    assert load_settings(path, broker_port=12883).broker_port == 12883


def test_retention_shorter_than_a_year_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"retention\.days must be at least 365"):
        RetentionSettings(days=90)
    assert RetentionSettings().days == 396


def test_a_ledger_url_puts_the_ledger_in_postgresql(tmp_path: Path) -> None:
    path = tmp_path / "actimesh.toml"
    path.write_text(
        'agency = "calgary-ps"\n[ledger]\nurl = "postgresql://am:s3cret@db.example:5432/am"\n'
    )
    settings = load_settings(path)
    assert settings.ledger_location == "postgresql://am:s3cret@db.example:5432/am"
    assert settings.ledger_shown == "postgresql://am@db.example:5432/am"
    assert "s3cret" not in repr(settings)
    flag = load_settings(ledger_url="postgres://am@db2/am?password=x&sslmode=verify-full")
    assert flag.ledger_shown == "postgres://am@db2/am?sslmode=verify-full"
    assert load_settings(data_dir=tmp_path).ledger_shown == str(tmp_path / "ledger.sqlite3")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://am:pw@db/am", r"must start with postgresql:// \(or postgres://\); remove"),
        ("/var/lib/actimesh/ledger.sqlite3", "must start with postgresql://"),
        ("postgresql://am:pw@db", "must name a host and a database"),
        ("postgresql://am:pw@db:99999/am", "is not a valid URL"),
        ("postgresql://am:pw@db1:5432,db2:99999/am", "is not a valid URL"),
        ("postgresql://am:pw@db1:5432,/am", "must name a host and a database"),
    ],
)
def test_a_bad_ledger_url_is_one_line_without_its_password(
    tmp_path: Path, url: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[ledger]\nurl = "{url}"\n')
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path)
    assert "\n" not in str(info.value)
    assert "pw" not in str(info.value)
    with pytest.raises(ConfigError, match=message):
        load_settings(ledger_url=url)


def test_a_ledger_url_may_name_a_primary_and_its_standby(tmp_path: Path) -> None:
    # libpq's multi-host form: the one that accepts writes is used (Patroni failover).
    url = (
        "postgresql://am:s3cret@db1.example:5432,db2.example:5433/am"
        "?target_session_attrs=read-write"
    )
    path = tmp_path / "actimesh.toml"
    path.write_text(f'agency = "calgary-ps"\n[ledger]\nurl = "{url}"\n')
    settings = load_settings(path)
    assert settings.ledger_location == url
    assert settings.ledger_shown == url.replace("am:s3cret@", "am@")


def test_ledger_table_keys_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[ledger]\npath = "x"\n')
    with pytest.raises(ConfigError, match=r"\[ledger\] has unknown key 'path'; allowed: url"):
        load_settings(path)
    path.write_text("[ledger]\nurl = 5\n")
    with pytest.raises(ConfigError, match=r"ledger\.url must be a str"):
        load_settings(path)


def test_an_agency_too_long_for_a_postgres_schema_is_refused() -> None:
    with pytest.raises(ConfigError, match="too long for a PostgreSQL ledger"):
        load_settings(agency="a" * 61, ledger_url="postgresql://am@db/am")
    assert load_settings(agency="a" * 61).ledger_url is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[telemetry]\nmode = "fast"', "telemetry.mode must be '1hz' or 'motion', got 'fast'"),
        ("[telemetry]\nheartbeat_s = 0", "telemetry.heartbeat_s must be seconds above 0"),
        ("[telemetry]\nheartbeat_s = 301", "telemetry.heartbeat_s must be seconds above 0"),
        ("[telemetry]\nrate = 1", r"\[telemetry\] has unknown key 'rate'"),
        ("[engine]\nslowdown = 1", "engine.slowdown must be a bool"),
        ("[engine]\nslowdown_heartbeat_s = 0", "engine.slowdown_heartbeat_s must be a positive"),
        ("[engine]\nslowdown_calm_per_s = 500", "must be below engine.slowdown_shed_per_s"),
        ("[engine]\nslowdown_window_s = -1", "engine.slowdown_window_s must be a positive"),
    ],
)
def test_telemetry_and_slow_down_settings_are_checked_in_one_line(
    tmp_path: Path, table: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(table + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path)
    assert "\n" not in str(info.value)


def test_telemetry_and_slow_down_settings_are_read(tmp_path: Path) -> None:
    path = tmp_path / "actimesh.toml"
    path.write_text(
        '[telemetry]\nmode = "motion"\nheartbeat_s = 15\n'
        "[engine]\nslowdown = false\nslowdown_heartbeat_s = 45\nslowdown_shed_per_s = 900\n"
    )
    settings = load_settings(path)
    assert settings.telemetry.mode.value == "motion"
    assert settings.telemetry.heartbeat_s == 15.0
    assert settings.engine.slowdown is False
    assert settings.engine.slowdown_heartbeat_s == 45.0
    assert settings.engine.slowdown_shed_per_s == 900.0
