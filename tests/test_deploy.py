"""The shipped deployment files are accepted by the real programs they configure."""

from __future__ import annotations

import asyncio
import configparser
import getpass
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from actimesh.broker.client import TlsSettings
from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import find_mosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig, TlsListener, render_config
from actimesh.security import AclPolicy, Registry, init_ca, issue_server
from tests.waiting import eventually_sync

DEPLOY = Path(__file__).parents[1] / "deploy"


def _options(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value)
    return out


def test_external_broker_config_matches_the_managed_one(tmp_path: Path) -> None:
    shipped = _options((DEPLOY / "mosquitto" / "actimesh.conf").read_text())
    tls = TlsListener(
        certfile=tmp_path / "s.pem", keyfile=tmp_path / "s.key", cafile=tmp_path / "ca.pem"
    )
    managed = _options(render_config(MosquittoConfig(data_dir=tmp_path, tls=tls)))
    for key in (
        "set_tcp_nodelay",
        "persistence",
        "max_packet_size",
        "queue_qos0_messages",
        "max_queued_messages",
        "autosave_interval",
        "per_listener_settings",
        "allow_anonymous",
        "tls_version",
        "require_certificate",
        "use_identity_as_username",
    ):
        assert shipped[key] == managed[key], key
    assert shipped["allow_anonymous"] == ["false"]
    assert [Path(p).name for p in shipped["plugin"]] == [Path(p).name for p in managed["plugin"]]
    assert "acl_file" not in shipped
    assert shipped["listener"][0] == "1883 127.0.0.1"  # plain: loopback only


@pytest.fixture
def external_broker(tmp_path: Path) -> Iterator[tuple[int, int, Path, str]]:
    """The shipped config on a real mosquitto, with a registry's files and a CA's
    certificates in place of /etc/mosquitto/actimesh. Yields plain port, TLS port, CA
    and a device's password."""
    etc = tmp_path / "etc"
    init_ca(etc)
    issue_server(etc)
    with Registry.open(tmp_path / "data") as registry:
        creds = registry.add("bwc-1", DeviceKind.BODY_CAM)
        registry.write_broker_files(etc, AclPolicy("deploy", "dispatch-console-1"))
    text = (DEPLOY / "mosquitto" / "actimesh.conf").read_text()
    port, tls_port = free_port(), free_port()
    text = text.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
    text = text.replace("listener 8883", f"listener {tls_port} 127.0.0.1")
    text = text.replace("/etc/mosquitto/actimesh/", f"{etc}/")
    text = text.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    text = text.replace("/var/log/mosquitto/mosquitto.log", f"{tmp_path}/m.log")
    conf = tmp_path / "external.conf"
    # Run as whoever runs the test (root in CI) rather than the `mosquitto` account.
    conf.write_text(f"user {getpass.getuser()}\n{text}")
    proc = subprocess.Popen([str(find_mosquitto()), "-c", str(conf)], stderr=subprocess.PIPE)

    def listening() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    try:
        eventually_sync(listening, timeout=10, every=0.05)
        yield port, tls_port, etc / "ca.pem", creds.password
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
    assert "Opening ipv4 listen socket on port" in (tmp_path / "m.log").read_text()


def test_external_broker_config_is_secure_on_a_real_mosquitto(
    external_broker: tuple[int, int, Path, str],
) -> None:
    port, tls_port, ca, password = external_broker

    async def check() -> None:
        with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
            async with aiomqtt.Client("127.0.0.1", port, timeout=5):
                pass
        tls = TlsSettings(ca).context()
        # The Dynamic Security plugin binds the device to its own client id ...
        with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
            async with aiomqtt.Client(
                "127.0.0.1",
                tls_port,
                identifier="deploy-engine-1-ctl",
                username="bwc-1",
                password=password,
                tls_context=tls,
            ):
                pass
        async with aiomqtt.Client(
            "127.0.0.1",
            tls_port,
            identifier="deploy-bwc-1",
            username="bwc-1",
            password=password,
            tls_context=tls,
            timeout=5,
        ) as device:
            # ... and refuses subscriptions beyond its own topics when they are made.
            refused = await device.subscribe("#")
            assert [r.value for r in refused] == [0x80]  # type: ignore[union-attr]
            granted = await device.subscribe("am/v1/deploy/dev/bwc-1/cmd", qos=1)
            assert [r.value for r in granted] == [1]  # type: ignore[union-attr]

    asyncio.run(check())


def test_systemd_unit_runs_actimesh_against_the_system_broker() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "systemd" / "actimesh.service")
    assert unit["Service"]["ExecStart"].split()[1:3] == ["up", "--config"]
    assert "--broker mqtt://127.0.0.1:1883" in unit["Service"]["ExecStart"]
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    assert "mosquitto.service" in unit["Unit"]["Requires"]
