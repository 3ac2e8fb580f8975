"""`actimesh devices|integrators|certs`: credentials shown once, changes applied live."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
from rich.console import Console

from actimesh import cli
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.broker.topics import Topics, device_client_id
from actimesh.errors import ConfigError
from actimesh.runtime.compose import broker_for, external_address, run_up
from actimesh.runtime.config import Settings, load_settings
from actimesh.security import SERVICE_ACCOUNTS, Registry, read_secret, verify_password
from actimesh.security.signing import load_or_create_engine_key, public_key_hex
from tests.waiting import eventually

TIMEOUT_S = 5.0


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _field(out: str, name: str) -> str:
    found = re.search(rf"^  {name}\s+(\S+)", out, re.MULTILINE)
    assert found is not None, out
    return found.group(1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", broker_port=free_port(), agency="cli")


@pytest.fixture
async def up(settings: Settings) -> AsyncIterator[ManagedMosquitto]:
    """The managed broker as `actimesh up` starts it on the data directory."""
    async with broker_for(settings) as (_, broker):
        assert broker is not None
        yield broker


def _client_id(username: str) -> str | None:
    """The client id the broker binds ``username`` to (agency "cli"); None for services."""
    if username.startswith("svc-"):
        return None
    named = username.startswith(("int-", "op-"))
    return username if named else device_client_id("cli", username)


async def _connects(broker: ManagedMosquitto, username: str, password: str) -> bool:
    try:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=_client_id(username),
            username=username,
            password=password,
            timeout=TIMEOUT_S,
        ):
            return True
    except aiomqtt.MqttCodeError:
        return False


def test_add_prints_credentials_once_and_stores_only_hashes(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(settings.data_dir)
    code, out, err = _run(
        capsys, "devices", "add", "bwc-1", "--kind", "body_cam", "--unit", "u7", "--data-dir", data
    )
    assert (code, err) == (0, "")
    password = _field(out, "password")
    assert len(_field(out, "private key")) == 64
    assert "mqtt://127.0.0.1:1883" in out
    assert "not running" in out
    with Registry.open(settings.data_dir) as reg:
        device = reg.get("bwc-1")
        assert device.unit == "u7"
        assert device.public_key == _field(out, "public key")
    assert password.encode() not in (settings.data_dir / "registry.sqlite3").read_bytes()
    passwd = (settings.data_dir / "broker" / "passwd").read_text()
    assert verify_password(password, passwd.split("bwc-1:", 1)[1].split()[0])
    code, out, _ = _run(capsys, "devices", "list", "--data-dir", data)
    assert code == 0
    assert "bwc-1" in out
    assert password not in out


def test_mistakes_are_one_line_errors(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(settings.data_dir)
    for argv, fragment in (
        (("devices", "add", "svc-x", "--kind", "cew"), "reserved"),
        (("devices", "add", "a/b", "--kind", "cew"), "not valid"),
        (("devices", "add", "cew-1", "--kind", "cew", "--paired", "ghost"), "no such device"),
        (("devices", "remove", "ghost"), "not registered"),
        (("devices", "rotate", "ghost"), "not registered"),
        (("integrators", "remove", "ghost"), "does not exist"),
        (("certs", "server"), "certs init"),
        (("certs", "show", "nobody"), "no certificate"),
    ):
        code, _, err = _run(capsys, *argv, "--data-dir", data)
        assert code == 1, argv
        assert err.count("\n") == 1, err
        assert fragment in err, (argv, err)
        assert "Traceback" not in err
    with pytest.raises(SystemExit) as exited:
        cli.main(["devices", "add", "x", "--kind", "toaster", "--data-dir", data])
    assert exited.value.code == 2
    assert "invalid choice: 'toaster'" in capsys.readouterr().err


async def test_add_remove_and_rotate_apply_to_the_running_broker(
    settings: Settings, up: ManagedMosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(settings.data_dir)
    pid = up.pid
    code, out, _ = await asyncio.to_thread(
        _run, capsys, "devices", "add", "bwc-1", "--kind", "body_cam", "--data-dir", data
    )
    assert code == 0
    assert f"applied live (pid {pid})" in out
    first = _field(out, "password")
    await _until_connects(up, "bwc-1", first)

    code, out, _ = await asyncio.to_thread(
        _run, capsys, "devices", "rotate", "bwc-1", "--data-dir", data
    )
    second = _field(out, "password")
    await _until_connects(up, "bwc-1", second)
    assert not await _connects(up, "bwc-1", first)

    async with aiomqtt.Client(
        up.host, up.port, username="bwc-1", password=second, identifier=_client_id("bwc-1")
    ) as client:
        await client.subscribe(Topics("cli").command("bwc-1"))
        code, out, _ = await asyncio.to_thread(
            _run, capsys, "devices", "remove", "bwc-1", "--data-dir", data
        )
        assert f"applied live (pid {pid})" in out
        with pytest.raises(aiomqtt.MqttError):
            await _drain(client)
    assert not await _connects(up, "bwc-1", second)
    assert up.pid == pid


async def test_new_accounts_are_told_the_port_the_broker_really_runs_on(
    settings: Settings, up: ManagedMosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    # The broker runs on a free port given as a flag would give it, not on the 1883 of
    # the (absent) settings file: the printed address is the running broker's.
    assert up.port != 1883
    data = str(settings.data_dir)
    for argv in (("devices", "add", "bwc-9", "--kind", "body_cam"), ("integrators", "add", "x")):
        code, out, _ = await asyncio.to_thread(_run, capsys, *argv, "--data-dir", data)
        assert code == 0
        assert _field(out, "broker") == f"mqtt://127.0.0.1:{up.port}", out


def test_without_a_running_broker_the_configured_port_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "actimesh.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[broker]\nport = 18883\n')
    code, out, _ = _run(capsys, "integrators", "add", "acme", "--config", str(config))
    assert code == 0
    assert _field(out, "broker") == "mqtt://127.0.0.1:18883"
    assert "not running" in out


def test_a_device_added_before_the_first_up_gets_the_engine_key_up_will_use(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(settings.data_dir)
    assert not (settings.data_dir / "keys").exists()
    code, out, _ = _run(capsys, "devices", "add", "bwc-1", "--kind", "body_cam", "--data-dir", data)
    assert code == 0
    printed = _field(out, "engine key")
    # `up` loads the key of the data directory, creating one only when there is none.
    assert printed == public_key_hex(load_or_create_engine_key(settings.data_dir).public_key())
    code, out, _ = _run(capsys, "devices", "add", "bwc-2", "--kind", "body_cam", "--data-dir", data)
    assert _field(out, "engine key") == printed


async def _drain(client: aiomqtt.Client) -> None:
    """Read until the broker drops the connection (MqttError) or the timeout."""
    async with asyncio.timeout(TIMEOUT_S):
        async for _ in client.messages:
            pass


async def _until_connects(broker: ManagedMosquitto, username: str, password: str) -> None:
    # The reload is a signal: the broker applies it a moment later.
    await eventually(lambda: _connects(broker, username, password), TIMEOUT_S, every=0.05)


async def _added(
    settings: Settings,
    up: ManagedMosquitto,
    capsys: pytest.CaptureFixture[str],
    command: str,
    name: str,
    username: str,
) -> tuple[str, str]:
    """``actimesh COMMAND add NAME``: what it printed and the password, once the running
    broker takes the new ``username``."""
    code, out, _ = await asyncio.to_thread(
        _run, capsys, command, "add", name, "--data-dir", str(settings.data_dir)
    )
    assert code == 0
    assert _field(out, "username") == username
    password = _field(out, "password")
    await _until_connects(up, username, password)
    return out, password


@asynccontextmanager
async def _it_and_the_engine(
    settings: Settings, up: ManagedMosquitto, username: str, password: str
) -> AsyncIterator[tuple[aiomqtt.Client, aiomqtt.Client]]:
    """Connected as ``username``, and as the engine's service account."""
    engine = read_secret(settings.data_dir, "svc-engine")
    async with (
        aiomqtt.Client(
            up.host, up.port, identifier=username, username=username, password=password
        ) as reader,
        aiomqtt.Client(up.host, up.port, username="svc-engine", password=engine) as eng,
    ):
        yield reader, eng


async def test_integrator_account_reads_activations_only(
    settings: Settings, up: ManagedMosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    _, password = await _added(settings, up, capsys, "integrators", "acme", "int-acme")
    t = Topics("cli")
    async with _it_and_the_engine(settings, up, "int-acme", password) as (reader, eng):
        refused = await reader.subscribe("#")
        assert [r.value for r in refused] == [0x80]  # type: ignore[union-attr]
        await reader.subscribe(f"{t.prefix}/#")
        await reader.subscribe(t.all_activations)
        await eng.publish(t.alerts("no_ack"), b"alert", qos=1)
        await eng.publish(t.activations("taser_draw"), b"act", qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            message = await anext(aiter(reader.messages))
    assert message.topic.value == t.activations("taser_draw")


async def test_operator_account_is_made_by_the_cli_and_reads_dead_letters(
    settings: Settings, up: ManagedMosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(settings.data_dir)
    out, password = await _added(settings, up, capsys, "operators", "night", "op-night")
    assert f"applied live (pid {up.pid})" in out
    t = Topics("cli")
    async with _it_and_the_engine(settings, up, "op-night", password) as (reader, eng):
        await reader.subscribe(t.all_deadletters)
        await eng.publish(t.deadletter("bad_payload"), b"dead", qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            message = await anext(aiter(reader.messages))
    assert (message.topic.value, message.payload) == (t.deadletter("bad_payload"), b"dead")
    code, out, _ = _run(capsys, "operators", "list", "--data-dir", data)
    assert (code, "op-night" in out, password in out) == (0, True, False)
    code, out, _ = await asyncio.to_thread(
        _run, capsys, "operators", "remove", "night", "--data-dir", data
    )
    assert code == 0
    await eventually(lambda: _refused_login(up, "op-night", password), TIMEOUT_S, every=0.05)


async def _refused_login(broker: ManagedMosquitto, username: str, password: str) -> bool:
    return not await _connects(broker, username, password)


def _fleet_file(path: Path, units: int) -> Path:
    """A fleet of ``units`` crews (body camera, dash camera, CEW paired with both)."""
    rows = ["id,kind,unit,call_sign,officer,paired"]
    for u in range(units):
        rows += [
            f"bwc-{u:04d},body_cam,unit-{u:04d},12A{u},Cst. {u},",
            f"dash-{u:04d},dash_cam,unit-{u:04d},12A{u},,",
            f"cew-{u:04d},cew,unit-{u:04d},12A{u},Cst. {u},bwc-{u:04d};dash-{u:04d}",
        ]
    path.write_text("\n".join(rows) + "\n")
    return path


async def test_import_registers_a_fleet_in_one_reload_of_the_running_broker(
    settings: Settings,
    up: ManagedMosquitto,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from actimesh.broker.reload import reload_managed_broker  # noqa: PLC0415

    reloads: list[Path] = []

    def counted(broker_dir: Path) -> int | None:
        reloads.append(broker_dir)
        return reload_managed_broker(broker_dir)

    monkeypatch.setattr("actimesh.security.provision.reload_managed_broker", counted)
    data = str(settings.data_dir)
    # 300 devices: the plugin's commands cost more the more accounts it holds (docs/
    # OPERATIONS.md), and 1,350 would hold the test for half a minute.
    source = _fleet_file(tmp_path / "fleet.csv", 100)
    code, out, err = await asyncio.to_thread(
        _run, capsys, "devices", "import", str(source), "--data-dir", data
    )
    assert (code, err) == (0, ""), err
    assert "imported 300 devices" in out
    assert f"applied live in one reload (pid {up.pid})" in out
    assert len(reloads) == 1
    found = re.search(r"^credentials: (\S+) \(mode 0600", out, re.MULTILINE)
    assert found is not None, out
    mode, lines = await asyncio.to_thread(_private_lines, Path(found.group(1)))
    assert mode == 0o600
    assert len(lines) == 301
    for password in (line.split(",")[1] for line in lines[1:]):
        assert password not in out
    # A device from the file logs in with its credentials from the file, first and last.
    for line in (lines[1], lines[-1]):
        device_id, password = line.split(",")[:2]
        await _until_connects(up, device_id, password)
    access = (settings.data_dir / "broker" / "access.json").read_text()
    # and the service accounts
    assert access.count('"username": "') == 300 + len(SERVICE_ACCOUNTS)
    # Export writes the file's format back (sorted by id, no secrets).
    export = tmp_path / "export.csv"
    code, out, _ = _run(capsys, "devices", "export", str(export), "--data-dir", data)
    assert code == 0
    assert sorted(export.read_text().splitlines()) == sorted(source.read_text().splitlines())


def _private_lines(path: Path) -> tuple[int, list[str]]:
    return path.stat().st_mode & 0o777, path.read_text().splitlines()


def test_import_with_bad_rows_imports_nothing_and_reports_each(
    settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = str(settings.data_dir)
    source = _fleet_file(tmp_path / "fleet.csv", 3)
    with source.open("a") as fh:
        fh.write("bwc-0001,body_cam,,,,\n")  # row 11: twice
        fh.write("cam-x,toaster,,,,\n")  # row 12: no such kind
    code, out, err = _run(capsys, "devices", "import", str(source), "--data-dir", data)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"{source}: row 11: device 'bwc-0001' is on row 5 already")
    assert lines[1].startswith(f"{source}: row 12: kind 'toaster' is not a device kind")
    assert "2 problem(s)" in lines[2]
    assert "nothing imported" in lines[2]
    assert "Traceback" not in err
    with Registry.open(settings.data_dir) as reg:
        assert reg.devices() == []
    assert not (settings.data_dir / "secrets").exists()
    code, _, err = _run(capsys, "devices", "import", str(tmp_path / "none.csv"), "--data-dir", data)
    assert code == 2
    assert err.count("\n") == 1
    assert "no file" in err
    # An earlier import's credentials file is never replaced, and nothing is registered.
    taken = tmp_path / "taken.csv"
    taken.write_text("earlier secrets\n")
    good = _fleet_file(tmp_path / "good.csv", 1)
    argv = ("devices", "import", str(good), "--credentials", str(taken), "--data-dir", data)
    code, _, err = _run(capsys, *argv)
    assert (code, err.count("\n")) == (2, 1)
    assert "exists already" in err
    assert taken.read_text() == "earlier secrets\n"
    with Registry.open(settings.data_dir) as reg:
        assert reg.devices() == []


def test_certs_init_then_up_opens_a_tls_listener(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(settings.data_dir)
    code, out, _ = _run(capsys, "certs", "init", "--host", "cams.example", "--data-dir", data)
    assert code == 0
    assert "cams.example" in out
    code, out, _ = _run(capsys, "certs", "show", "ca", "--data-dir", data)
    assert code == 0
    assert "CN=actimesh broker CA" in out
    code, out, _ = _run(capsys, "devices", "add", "bwc-1", "--kind", "body_cam", "--data-dir", data)
    assert "mqtts://cams.example:8883" in out
    assert str(settings.data_dir / "certs" / "ca.pem") in out


async def test_up_prints_both_broker_addresses_and_runs_on_service_accounts(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = _run(capsys, "certs", "init", "--data-dir", str(settings.data_dir))
    assert code == 0
    tls_port = free_port()
    settings = replace(
        settings,
        dispatch=replace(settings.dispatch, enabled=False),
        evidence=replace(settings.evidence, port=0),
        broker=replace(settings.broker, tls_port=tls_port, tls_host="127.0.0.1"),
    )
    out = io.StringIO()
    log_path = settings.data_dir / "broker" / "mosquitto.log"

    def logged_in(account: str) -> bool:
        return log_path.exists() and f"u'{account}'" in log_path.read_text()

    task = asyncio.create_task(run_up(settings, None, Console(file=out, width=200)), name="up")
    try:
        await eventually(lambda: "Ctrl-C" in out.getvalue(), timeout=30, every=0.05)
        # The monitor starts last, just before that line: wait for its login itself.
        await eventually(lambda: logged_in("svc-monitor"), timeout=30, every=0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    text = out.getvalue()
    assert f"mqtt://127.0.0.1:{settings.broker_port} (managed Mosquitto)" in text
    assert (
        f"mqtts://127.0.0.1:{tls_port} (TLS, CA {settings.data_dir / 'certs' / 'ca.pem'})" in text
    )
    log = (settings.data_dir / "broker" / "mosquitto.log").read_text()
    for account in ("svc-engine", "svc-monitor"):
        assert f"u'{account}'" in log
    assert "not authorised" not in log  # every component logged in with its account


# ---------------------------------------------------------------------- config


def test_broker_login_comes_from_a_private_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "engine.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    conf = tmp_path / "a.toml"
    conf.write_text(
        f'[broker]\nusername = "svc-engine"\npassword_file = "{secret}"\n'
        f'ca_file = "{tmp_path / "ca.pem"}"\n'
    )
    settings = load_settings(conf)
    address = external_address(settings, "mqtts://broker.example")
    assert (address.host, address.port) == ("broker.example", 8883)
    assert address.url == "mqtts://broker.example:8883"
    assert address.tls is not None
    assert address.tls.ca_file == tmp_path / "ca.pem"
    assert address.login("svc-engine") == {"username": "svc-engine", "password": "s3cret"}
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        external_address(settings, "mqtt://127.0.0.1:1883")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('username = "u"', "go together"),
        ('password_file = "/x"', "go together"),
        ('cert_file = "/x"', "cert_file and key_file"),
        ("tls_port = 0", "tls_port"),
        ('tls_port = "x"', "must be a int"),
        ("tls = 1", "must be a bool"),
        ("bogus = 1", "unknown key"),
    ],
)
def test_bad_broker_section_is_a_one_line_config_error(
    tmp_path: Path, body: str, fragment: str
) -> None:

    conf = tmp_path / "a.toml"
    conf.write_text(f"[broker]\n{body}\n")
    with pytest.raises(ConfigError, match=fragment) as info:
        load_settings(conf)
    assert "\n" not in str(info.value)


def test_missing_password_file_is_a_one_line_config_error(tmp_path: Path) -> None:

    conf = tmp_path / "a.toml"
    conf.write_text(f'[broker]\nusername = "u"\npassword_file = "{tmp_path / "none"}"\n')
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(conf).broker.password()


async def test_services_init_makes_accounts_an_external_broker_accepts(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """For a broker actimesh does not run: the service accounts are created once and
    kept (their processes read the password files), rotated only when asked."""
    data = str(settings.data_dir)
    code, out, err = _run(capsys, "services", "init", "--data-dir", data)
    assert (code, err) == (0, "")
    assert "dynsec.json" in out
    first = read_secret(settings.data_dir, "svc-engine")
    secret = settings.data_dir / "secrets" / "svc-engine.password"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert _run(capsys, "services", "init", "--data-dir", data)[0] == 0
    assert read_secret(settings.data_dir, "svc-engine") == first
    # A Mosquitto reading the rendered files, as an operator's broker configured with
    # deploy/mosquitto/actimesh.conf would.
    broker_dir = settings.data_dir / "broker"
    config = MosquittoConfig(data_dir=broker_dir, port=free_port(), persistence=False)
    async with ManagedMosquitto(config) as external:
        assert await _connects(external, "svc-engine", first)
        assert not await _connects(external, "svc-engine", "wrong")
        code, _, err = _run(capsys, "services", "init", "--rotate", "--data-dir", data)
        assert code == 0, err
        rotated = read_secret(settings.data_dir, "svc-engine")
        assert rotated != first
        passwd = (broker_dir / "passwd").read_text()
        assert verify_password(rotated, passwd.split("svc-engine:", 1)[1].split()[0])
