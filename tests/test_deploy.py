"""The shipped deployment files are accepted by the real programs they configure."""

from __future__ import annotations

import argparse
import asyncio
import configparser
import getpass
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import pytest
import yaml

from actimesh.broker.client import TlsSettings
from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import find_mosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig, TlsListener, render_config
from actimesh.broker.nats import NatsCluster, find_nats_server
from actimesh.broker.nats.hosts import DEFAULT_HOSTS, STORE_DIR, host_config
from actimesh.cli._main import _parser as cli_parser
from actimesh.runtime.config import load_settings
from actimesh.runtime.services import check_nats_urls
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


# ---------------------------------------------------------------------- the cluster

SYSTEMD = DEPLOY / "systemd"
CLUSTER_UNITS = (
    "nats-server.service",
    "actimesh-engine@.service",
    "actimesh-dispatch.service",
    "actimesh-evidence.service",
)


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign] # keys are case-sensitive
    assert unit.read(SYSTEMD / name), name
    return unit


def _actimesh_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` (after the program) as the real command line parses it: an unknown
    command or option fails here as it would on the host."""
    return cli_parser().parse_args(argv)


def test_the_cluster_configs_are_what_the_cluster_code_renders() -> None:
    for i in range(len(DEFAULT_HOSTS)):
        shipped = (DEPLOY / "nats" / f"nats-{i + 1}.conf").read_text()
        assert shipped == host_config(i), (
            f"regenerate: python -m actimesh.broker.nats.hosts {DEPLOY / 'nats'}"
        )
        routes = {f'"nats-route://{h}:6222"' for j, h in enumerate(DEFAULT_HOSTS) if j != i}
        assert {line.strip() for line in shipped.splitlines()} >= routes
        assert "stream_replicas: 3" in shipped


@pytest.mark.parametrize("index", [0, 1, 2])
def test_nats_server_accepts_each_host_config(index: int) -> None:
    conf = DEPLOY / "nats" / f"nats-{index + 1}.conf"
    done = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stderr + done.stdout


def test_the_host_configs_form_a_cluster_on_loopback(tmp_path: Path) -> None:
    """The rendered configuration, with loopback ports for host names, starts three
    nodes that route to each other and elect a JetStream leader (as NatsCluster waits)."""
    cluster = NatsCluster(tmp_path, size=3)
    for i, node in enumerate(cluster.nodes):
        text = host_config(i).replace("0.0.0.0:4222", f"127.0.0.1:{node.ports.client}")
        text = text.replace("0.0.0.0:8222", f"127.0.0.1:{node.ports.monitor}")
        text = text.replace("0.0.0.0:6222", f"127.0.0.1:{node.ports.cluster}")
        text = text.replace("0.0.0.0:1883", f"127.0.0.1:{node.ports.mqtt}")
        text = text.replace(f'"{STORE_DIR}"', f'"{node.data_dir / "jetstream"}"')
        text = re.sub(r'server_name: "[^"]+"', f'server_name: "{node.server_name}"', text)
        for j, peer in enumerate(cluster.nodes):
            text = text.replace(f"{DEFAULT_HOSTS[j]}:6222", f"127.0.0.1:{peer.ports.cluster}")
        assert "0.0.0.0" not in text  # every listener and route was placed
        assert "nats-route://nats-" not in text
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.config_path.write_text(text)  # in place of the one NatsCluster wrote
    with cluster:
        assert all(node.routes() >= 2 for node in cluster.nodes)


def test_cluster_units_run_real_commands_with_real_options() -> None:
    nats = _unit("nats-server.service")["Service"]
    assert nats["ExecStart"].split() == [
        "/opt/actimesh/.venv/bin/nats-server",
        "-c",
        "/etc/nats/nats.conf",
    ]
    assert nats["KillSignal"] == "SIGTERM"
    assert "/var/lib/nats" in nats["ReadWritePaths"]
    assert str(STORE_DIR).startswith(nats["ReadWritePaths"])

    engine = _unit("actimesh-engine@.service")["Service"]
    argv = engine["ExecStart"].replace("%i", "engine-1").split()
    assert argv[0] == "/opt/actimesh/.venv/bin/actimesh"
    args = _actimesh_args(argv[1:])
    assert args.command == "engine"
    assert args.engine_id == "engine-1"
    assert args.nats == [f"nats://{h}:4222" for h in DEFAULT_HOSTS]
    assert check_nats_urls(args.nats) == args.nats

    dispatch = _actimesh_args(
        _unit("actimesh-dispatch.service")["Service"]["ExecStart"].split()[1:]
    )
    assert dispatch.command == "dispatch"
    assert dispatch.mqtt_protocol == "3.1.1"
    assert dispatch.broker == f"mqtt://{DEFAULT_HOSTS[0]}:1883"

    evidence = _actimesh_args(
        _unit("actimesh-evidence.service")["Service"]["ExecStart"].split()[1:]
    )
    assert evidence.command == "evidence"
    for parsed in (args, dispatch, evidence):
        assert parsed.config == Path("/etc/actimesh/actimesh.toml")
    for name in CLUSTER_UNITS:
        unit = _unit(name)
        assert unit["Service"]["Restart"] == "always", name
        assert unit["Install"]["WantedBy"] == "multi-user.target", name


def test_the_cluster_settings_load_and_speak_3_1_1() -> None:
    settings = load_settings(DEPLOY / "cluster" / "actimesh.toml")
    assert settings.broker.mqtt_protocol == "3.1.1"
    assert settings.ledger_url is not None
    ledger = urlsplit(settings.ledger_url)
    assert ledger.username == "actimesh"
    assert ledger.password is None  # in ~/.pgpass, never in the settings


def test_compose_runs_the_cluster_from_the_shipped_files() -> None:
    compose = DEPLOY / "compose"
    doc = yaml.safe_load((compose / "compose.yaml").read_text())
    services = doc["services"]
    assert {"nats-1", "nats-2", "nats-3", "postgres", "engine-1", "engine-2"} <= set(services)
    assert {"dispatch", "evidence"} <= set(services)
    for i, host in enumerate(DEFAULT_HOSTS, start=1):
        node = services[f"nats-{i}"]
        assert node["networks"]["mesh"]["aliases"] == [host]
        conf, target, _ = node["volumes"][0].split(":")
        assert (compose / conf).resolve() == (DEPLOY / "nats" / f"nats-{i}.conf").resolve()
        assert target == "/etc/nats/nats.conf"
        assert node["entrypoint"][-2:] == ["-c", "/etc/nats/nats.conf"]
    ledger_host = urlsplit(load_settings(DEPLOY / "cluster" / "actimesh.toml").ledger_url or "")
    assert services["postgres"]["networks"]["mesh"]["aliases"] == [ledger_host.hostname]
    actimesh = [s for s in services.values() if "command" in s]
    assert len(actimesh) == 4
    for service in actimesh:
        settings_file, _, _ = service["volumes"][0].partition(":")
        assert (compose / settings_file).resolve() == (
            DEPLOY / "cluster" / "actimesh.toml"
        ).resolve()
        args = _actimesh_args(service["command"].split())
        assert args.config == Path("/etc/actimesh/actimesh.toml")
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
        if args.command == "engine":
            assert set(args.nats) == {f"nats://{h}:4222" for h in DEFAULT_HOSTS}
        if args.command == "dispatch":
            assert args.mqtt_protocol == "3.1.1"
    assert (
        compose / actimesh[0]["build"]["context"] / actimesh[0]["build"]["dockerfile"]
    ).is_file()
    for secret in doc["secrets"].values():
        assert Path(secret["file"]).parent == Path(".")  # the operator makes them beside it
