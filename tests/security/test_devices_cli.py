"""`actimesh devices|integrators|certs`: credentials shown once, changes applied live."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
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
from actimesh.security import Registry, read_secret, verify_password
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
    return username if username.startswith("int-") else device_client_id("cli", username)


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


async def _drain(client: aiomqtt.Client) -> None:
    """Read until the broker drops the connection (MqttError) or the timeout."""
    async with asyncio.timeout(TIMEOUT_S):
        async for _ in client.messages:
            pass


async def _until_connects(broker: ManagedMosquitto, username: str, password: str) -> None:
    # The reload is a signal: the broker applies it a moment later.
    await eventually(lambda: _connects(broker, username, password), TIMEOUT_S, every=0.05)


async def test_integrator_account_reads_activations_only(
    settings: Settings, up: ManagedMosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(settings.data_dir)
    code, out, _ = await asyncio.to_thread(
        _run, capsys, "integrators", "add", "acme", "--data-dir", data
    )
    assert code == 0
    assert _field(out, "username") == "int-acme"
    password = _field(out, "password")
    await _until_connects(up, "int-acme", password)
    engine = read_secret(settings.data_dir, "svc-engine")
    t = Topics("cli")
    async with (
        aiomqtt.Client(
            up.host, up.port, identifier="int-acme", username="int-acme", password=password
        ) as reader,
        aiomqtt.Client(up.host, up.port, username="svc-engine", password=engine) as eng,
    ):
        refused = await reader.subscribe("#")
        assert [r.value for r in refused] == [0x80]  # type: ignore[union-attr]
        await reader.subscribe(f"{t.prefix}/#")
        await reader.subscribe(t.all_activations)
        await eng.publish(t.alerts("no_ack"), b"alert", qos=1)
        await eng.publish(t.activations("taser_draw"), b"act", qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            message = await anext(aiter(reader.messages))
    assert message.topic.value == t.activations("taser_draw")


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
