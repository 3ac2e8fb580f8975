"""TLS and mutual TLS on the real broker, with certificates from `actimesh certs`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509

from actimesh.broker.client import LinkSettings, MqttLink, Subscription, TlsSettings
from actimesh.broker.ingest import StreamSubscriber
from actimesh.broker.mosquitto import free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig, TlsListener, render_config
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.errors import ConfigError, SecurityError
from actimesh.security import (
    SERVICE_ENGINE,
    Credentials,
    describe,
    init_ca,
    issue_client,
    issue_server,
    server_tls,
)
from tests.conftest import SecureBroker, start_secure_broker

TIMEOUT_S = 5.0


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    init_ca(directory)
    issue_server(directory, hosts=("broker.example",))
    return directory


def _listener(certs: Path, *, mutual: bool = False) -> TlsListener:
    return TlsListener(
        port=free_port(),
        host="127.0.0.1",
        certfile=certs / "server.pem",
        keyfile=certs / "server.key",
        cafile=certs / "ca.pem",
        require_certificate=mutual,
    )


def _secure(tmp_path: Path, agency: str, certs: Path, *, mutual: bool) -> Iterator[SecureBroker]:
    secure = start_secure_broker(tmp_path / "data", agency, tls=_listener(certs, mutual=mutual))
    try:
        yield secure
    finally:
        secure.broker.stop()


@pytest.fixture
def tls_broker(tmp_path: Path, agency: str, certs: Path) -> Iterator[SecureBroker]:
    yield from _secure(tmp_path, agency, certs, mutual=False)


@pytest.fixture
def mtls_broker(tmp_path: Path, agency: str, certs: Path) -> Iterator[SecureBroker]:
    yield from _secure(tmp_path, agency, certs, mutual=True)


def _port(secure: SecureBroker) -> int:
    assert secure.broker.config.tls is not None
    return secure.broker.config.tls.port


async def _connect(
    secure: SecureBroker, creds: Credentials, tls: TlsSettings, host: str = "127.0.0.1"
) -> None:
    async with aiomqtt.Client(
        host,
        _port(secure),
        identifier=secure.client_id(creds.username),
        username=creds.username,
        password=creds.password,
        tls_context=tls.context(),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=TIMEOUT_S,
    ) as client:
        await client.publish(Topics(secure.policy.agency).telemetry(creds.username), b"x")


# ---------------------------------------------------------------------- the CA


def test_ca_server_and_client_certificates_chain_and_name_the_hosts(certs: Path) -> None:
    client = issue_client(certs, "bwc-1", days=30)
    ca, server, leaf = (describe(p) for p in (certs / "ca.pem", certs / "server.pem", client.cert))
    assert ca.is_ca
    assert not server.is_ca
    assert not leaf.is_ca
    assert server.issuer == leaf.issuer == ca.subject
    assert set(server.names) == {"localhost", "broker.example", "127.0.0.1", "::1"}
    assert "CN=bwc-1" in leaf.subject
    assert dt.timedelta(days=29) < leaf.not_after - dt.datetime.now(dt.UTC) < dt.timedelta(days=31)
    for key in (certs / "ca.key", certs / "server.key", client.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(server.path.read_bytes())
    assert cert.signature_hash_algorithm is not None
    assert cert.public_key().key_size == 256  # type: ignore[union-attr]
    assert server_tls(certs) is not None


def test_ca_is_kept_unless_forced_and_leaves_need_one(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="certs init"):
        issue_server(tmp_path / "none")
    init_ca(tmp_path)
    first = describe(tmp_path / "ca.pem").sha256
    with pytest.raises(SecurityError, match="--force"):
        init_ca(tmp_path)
    init_ca(tmp_path, force=True)
    assert describe(tmp_path / "ca.pem").sha256 != first
    with pytest.raises(SecurityError, match="not valid"):
        issue_client(tmp_path, "a/b")
    with pytest.raises(SecurityError, match="host name"):
        issue_server(tmp_path, hosts=("bad host!",))
    with pytest.raises(SecurityError, match="days"):
        issue_client(tmp_path, "x", days=0)
    assert server_tls(tmp_path) is None


def test_tls_listener_is_rendered_with_mutual_tls_and_passwords(
    certs: Path, tmp_path: Path
) -> None:
    listener = _listener(certs, mutual=True)
    lines = render_config(MosquittoConfig(data_dir=tmp_path, tls=listener)).splitlines()
    for expected in (
        f"listener {listener.port} 127.0.0.1",
        f"certfile {certs / 'server.pem'}",
        f"cafile {certs / 'ca.pem'}",
        "require_certificate true",
        "use_identity_as_username false",
        "allow_anonymous false",
    ):
        assert expected in lines
    assert lines.index("listener 1883 127.0.0.1") < lines.index(
        f"listener {listener.port} 127.0.0.1"
    )


# ---------------------------------------------------------------------- the broker


async def test_good_client_connects_over_tls_and_checks_the_host_name(
    tls_broker: SecureBroker, certs: Path
) -> None:
    creds = tls_broker.add_device("bwc-1").mqtt
    tls = TlsSettings(ca_file=certs / "ca.pem")
    await _connect(tls_broker, creds, tls)
    await _connect(tls_broker, creds, tls, host="localhost")
    assert tls_broker.broker.tls_url == f"mqtts://127.0.0.1:{_port(tls_broker)}"
    # Still a password broker: TLS alone admits nobody.
    with pytest.raises(aiomqtt.MqttCodeError):
        await _connect(tls_broker, Credentials("bwc-1", "wrong"), tls)


# paho leaves the socket of a failed TLS handshake for the garbage collector to close
# (paho-mqtt 2.2, client.py _ssl_wrap_socket); pytest reports that as unraisable.
_PAHO_HANDSHAKE_LEAK = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_PAHO_HANDSHAKE_LEAK
async def test_server_from_another_ca_is_refused_by_the_client(
    tls_broker: SecureBroker, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    init_ca(other)
    creds = tls_broker.add_device("bwc-1").mqtt
    with pytest.raises(aiomqtt.MqttError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        await _connect(tls_broker, creds, TlsSettings(ca_file=other / "ca.pem"))


async def test_mutual_tls_needs_a_valid_client_certificate_and_the_password(
    mtls_broker: SecureBroker, certs: Path, tmp_path: Path
) -> None:
    creds = mtls_broker.add_device("bwc-1").mqtt
    ca = certs / "ca.pem"
    good = issue_client(certs, "bwc-1")
    expired = issue_client(
        certs, "old", days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    )
    other_dir = tmp_path / "other"
    init_ca(other_dir)
    foreign = issue_client(other_dir, "bwc-1")

    await _connect(mtls_broker, creds, TlsSettings(ca, good.cert, good.key))
    for refused, reason in (
        (TlsSettings(ca), "CERTIFICATE_REQUIRED"),
        (TlsSettings(ca, expired.cert, expired.key), "CERTIFICATE_EXPIRED"),
        (TlsSettings(ca, foreign.cert, foreign.key), "UNKNOWN_CA"),
    ):
        assert reason in await _alert(mtls_broker, refused)
    # The certificate does not replace the password.
    with pytest.raises(aiomqtt.MqttCodeError):
        await _connect(mtls_broker, Credentials("bwc-1", "x"), TlsSettings(ca, good.cert, good.key))
    log = mtls_broker.broker.log_tail(200)
    assert "peer did not return a certificate" in log
    assert "certificate verify failed" in log


async def _alert(secure: SecureBroker, tls: TlsSettings) -> str:
    """The TLS alert the broker ends a connection with. Under TLS 1.3 the server checks
    the client's certificate after the client has finished its handshake, so a refusal
    arrives as an alert on the first read (paho only times out on it). Nothing is sent:
    data written to a connection the server has closed would reset it, and the reset
    would discard the alert."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", _port(secure), ssl=tls.context(), server_hostname="127.0.0.1"
    )
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await reader.read(1)
    except ssl.SSLError as exc:
        return str(exc.reason)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return "the broker kept the connection open"


async def test_links_and_the_stream_subscriber_speak_tls(
    tls_broker: SecureBroker, certs: Path, agency: str
) -> None:
    t = Topics(agency)
    tls = TlsSettings(ca_file=certs / "ca.pem")
    engine = tls_broker.services[SERVICE_ENGINE]
    cam = tls_broker.add_device("bwc-1")
    got: list[bytes] = []
    done = asyncio.Event()

    async def batch(messages: object) -> None:
        assert isinstance(messages, list)
        got.extend(p for _, p in messages)
        done.set()

    base = {"host": "127.0.0.1", "port": _port(tls_broker), "tls": tls}
    sub = StreamSubscriber(
        LinkSettings(
            client_id="tm",
            username=engine.username,
            password=engine.password,
            subscriptions=(Subscription(t.all_devices(DeviceChannel.TELEMETRY), 0),),
            **base,  # type: ignore[arg-type]
        ),
        batch,
    )
    device = MqttLink(LinkSettings(client_id=tls_broker.client_id("bwc-1") or "", **base))  # type: ignore[arg-type]
    device.reconfigure(username=cam.username, password=cam.password)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(sub.run(), name="sub"), tg.create_task(device.run(), name="dev")]
        await sub.wait_connected(TIMEOUT_S)
        await device.wait_connected(TIMEOUT_S)
        # Nagle stays off under TLS (FIELD-NOTES §5): the option is on the TLS socket.
        client = device.current_client
        assert client is not None
        sock = client._client.socket()
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await device.publish(t.telemetry("bwc-1"), b"fix", qos=0)
        async with asyncio.timeout(TIMEOUT_S):
            await done.wait()
        for task in tasks:
            task.cancel()
    assert got == [b"fix"]


def test_tls_settings_report_missing_files_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        TlsSettings(ca_file=tmp_path / "nope.pem").context()
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="key"):
        TlsSettings(ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "c.pem")
    assert isinstance(ssl.create_default_context(), ssl.SSLContext)
