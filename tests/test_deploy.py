"""The shipped deployment files are accepted by the real programs they configure."""

from __future__ import annotations

import argparse
import asyncio
import configparser
import contextlib
import getpass
import json
import re
import shutil
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import nats
import nats.errors
import pytest
import yaml
from nats.aio.client import Client as NatsClient

from actimesh.broker.client import TlsSettings
from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import find_mosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig, TlsListener, render_config
from actimesh.broker.nats import NatsCluster, find_nats_server
from actimesh.broker.nats.auth import render_authorization
from actimesh.broker.nats.cluster import AUTHORIZATION_NAME, NatsTls
from actimesh.broker.nats.hosts import (
    DEFAULT_HOSTS,
    ROUTES_NAME,
    STORE_DIR,
    TLS_DIR,
    host_config,
)
from actimesh.cli._main import _parser as cli_parser
from actimesh.cli._main import main as cli_main
from actimesh.runtime.config import load_settings
from actimesh.runtime.services import check_nats_urls
from actimesh.security import AclPolicy, Registry, describe, init_ca, issue_server
from actimesh.security.acl import SERVICE_DISPATCH, SERVICE_ENGINE
from actimesh.security.nats_access import registry_nats_access
from actimesh.security.registry import read_secret
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
        lines = [line.strip() for line in shipped.splitlines()]
        # Users and the route login come from files actimesh renders; none is in here.
        assert f"include {AUTHORIZATION_NAME}" in lines
        assert f"include {ROUTES_NAME}" in lines
        assert "password" not in shipped
        assert 'http: "127.0.0.1:8222"' in lines  # monitoring has no login: loopback
        assert "stream_replicas: 3" in shipped
        # TLS on the client port, the MQTT listener and the routes, the routes mutual.
        assert lines.count(f'cert_file: "{TLS_DIR}/node.pem"') == 3
        assert lines.count(f'ca_file: "{TLS_DIR}/ca.pem"') == 3
        assert lines.count("verify: true") == 1
        cluster_block = shipped[shipped.index("cluster {") : shipped.index("mqtt {")]
        assert "verify: true" in cluster_block
        assert 'listen: "0.0.0.0:8883"' in lines


@pytest.fixture
def host_certs(tmp_path: Path) -> Path:
    """What the documented commands issue: a CA (`certs init`) and a certificate per host
    naming it (`certs node nats-<n> --host <its name>`). Their folder."""
    ca_dir = tmp_path / "tls-ca"
    assert cli_main(["certs", "init", "--data-dir", str(ca_dir)]) == 0
    for i, host in enumerate(DEFAULT_HOSTS, start=1):
        argv = ["certs", "node", f"nats-{i}", "--host", host, "--data-dir", str(ca_dir)]
        assert cli_main(argv) == 0
    return ca_dir / "certs"


def test_certs_node_names_its_host_and_serves_both_ends_of_a_route(host_certs: Path) -> None:
    from cryptography import x509  # noqa: PLC0415 - only this test reads the extension
    from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: PLC0415

    for i, host in enumerate(DEFAULT_HOSTS, start=1):
        pem = host_certs / "nodes" / f"nats-{i}.pem"
        info = describe(pem)
        assert host in info.names
        assert info.issuer == describe(host_certs / "ca.pem").subject
        usages = x509.load_pem_x509_certificate(pem.read_bytes()).extensions
        eku = usages.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        assert (host_certs / "nodes" / f"nats-{i}.key").stat().st_mode & 0o077 == 0


def _with_certs(text: str, certs: Path, index: int) -> str:
    """A host's file reading host ``index``'s certificate and the CA from ``certs``
    (what `actimesh certs` wrote) in place of /etc/actimesh/tls/."""
    text = text.replace(f'"{TLS_DIR}/ca.pem"', f'"{certs / "ca.pem"}"')
    text = text.replace(f'"{TLS_DIR}/node.pem"', f'"{certs / "nodes" / f"nats-{index + 1}.pem"}"')
    text = text.replace(f'"{TLS_DIR}/node.key"', f'"{certs / "nodes" / f"nats-{index + 1}.key"}"')
    assert f'"{TLS_DIR}' not in text  # every path it reads; the header still names it
    return text


@pytest.fixture
def cluster_auth(tmp_path: Path) -> tuple[Path, Path, str]:
    """What `actimesh cluster auth` writes for a registry with one camera: the data
    directory, the folder of the two files, and the camera's password."""
    data = tmp_path / "data"
    with Registry.open(data) as registry:
        camera = registry.add("bwc-1", DeviceKind.BODY_CAM).password
    out = tmp_path / "auth"
    assert (
        cli_main(
            ["cluster", "auth", "--agency", "deploy", "--data-dir", str(data), "--out", str(out)]
        )
        == 0
    )
    return data, out, camera


def test_cluster_auth_renders_the_registry_and_a_route_login(
    cluster_auth: tuple[Path, Path, str],
) -> None:
    data, out, _ = cluster_auth
    with Registry.open(data) as registry:
        policy = registry.policy()  # what `cluster auth` rendered with, and remembered
        assert policy is not None
        assert policy.agency == "deploy"
        access = registry_nats_access(registry, policy)
    assert (out / AUTHORIZATION_NAME).read_text() == render_authorization(access)
    assert {u.name for u in access.users} >= {"bwc-1", SERVICE_ENGINE, SERVICE_DISPATCH}
    routes = (out / ROUTES_NAME).read_text()
    route_password = read_secret(data, "nats-route")
    assert {f'"nats-route://route:{route_password}@{h}:6222"' for h in DEFAULT_HOSTS} <= {
        line.strip() for line in routes.splitlines()
    }
    for written in (out / AUTHORIZATION_NAME, out / ROUTES_NAME):
        assert written.stat().st_mode & 0o077 == 0, written
    # Run again (after a registry change): the service passwords and the route login
    # stay what the hosts already have.
    engine = read_secret(data, SERVICE_ENGINE)
    assert cli_main(["cluster", "auth", "--data-dir", str(data), "--out", str(out)]) == 0
    assert read_secret(data, SERVICE_ENGINE) == engine
    assert (out / ROUTES_NAME).read_text() == routes


@pytest.mark.parametrize("index", [0, 1, 2])
def test_nats_server_accepts_each_host_config(
    index: int, cluster_auth: tuple[Path, Path, str], host_certs: Path, tmp_path: Path
) -> None:
    _, out, _ = cluster_auth
    etc = tmp_path / "etc-nats"  # /etc/nats on the host: the config and what it includes
    etc.mkdir()
    shipped = (DEPLOY / "nats" / f"nats-{index + 1}.conf").read_text()
    (etc / "nats.conf").write_text(_with_certs(shipped, host_certs, index))
    for name in (AUTHORIZATION_NAME, ROUTES_NAME):
        shutil.copy(out / name, etc / name)
    done = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(etc / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stderr + done.stdout


def _on_loopback(text: str, cluster: NatsCluster) -> str:
    """A host's file with every host name and port replaced by a loopback node's."""
    for j, peer in enumerate(cluster.nodes):
        text = text.replace(f"{DEFAULT_HOSTS[j]}:6222", f"127.0.0.1:{peer.ports.cluster}")
    return text


@pytest.mark.logs_exception(
    ssl.SSLError,
    reason="refused TLS logins are closed while the server still writes its refusal: "
    "nats-py logs that close-notify race",
)
def test_the_host_configs_form_a_tls_cluster_that_admits_only_the_registry(
    cluster_auth: tuple[Path, Path, str], host_certs: Path, tmp_path: Path
) -> None:
    """The rendered configuration, with loopback ports for host names, the files
    `cluster auth` wrote and the certificates `certs node` issued, starts three nodes
    that route to each other over mutual TLS with the route login and elect a JetStream
    leader; nobody gets on anonymously or without TLS, the registry's accounts do over
    TLS, checking the nodes' certificates against the CA."""
    data, out, camera = cluster_auth
    with Registry.open(data) as registry:
        access = registry_nats_access(registry, AclPolicy("deploy", "dispatch-console-1"))
    ca = host_certs / "ca.pem"
    # Its authorization.conf: `cluster auth`'s users and the login NatsCluster starts with;
    # its tls: how the cluster's own first MQTT login and the auth callouts reach the nodes.
    first = NatsTls(ca, host_certs / "nodes" / "nats-1.pem", host_certs / "nodes" / "nats-1.key")
    cluster = NatsCluster(tmp_path / "nats", size=3, access=access, tls=first)
    routes = (out / ROUTES_NAME).read_text()
    for i, node in enumerate(cluster.nodes):
        text = host_config(i).replace("0.0.0.0:4222", f"127.0.0.1:{node.ports.client}")
        text = text.replace("127.0.0.1:8222", f"127.0.0.1:{node.ports.monitor}")
        text = text.replace("0.0.0.0:6222", f"127.0.0.1:{node.ports.cluster}")
        text = text.replace("0.0.0.0:8883", f"127.0.0.1:{node.ports.mqtt}")
        text = text.replace(f'"{STORE_DIR}"', f'"{node.data_dir / "jetstream"}"')
        text = re.sub(r'server_name: "[^"]+"', f'server_name: "{node.server_name}"', text)
        assert "0.0.0.0" not in text  # every listener was placed
        node.config_path.write_text(_with_certs(text, host_certs, i))  # not NatsCluster's
        (node.data_dir / ROUTES_NAME).write_text(_on_loopback(routes, cluster))
    assert "actimesh.internal" not in _on_loopback(routes, cluster)
    with cluster:
        assert all(node.routes() >= 2 for node in cluster.nodes)
        for node in cluster.nodes:
            with urllib.request.urlopen(f"{node.monitor_url}/varz", timeout=5) as varz:
                varz_info = json.loads(varz.read())
            # Routes up (above) on a cluster listener that requires TLS and the peer's
            # certificate: they are mutual TLS. The client port requires TLS too.
            assert varz_info["cluster"]["tls_required"] is True, varz_info["cluster"]
            assert varz_info["cluster"]["tls_verify"] is True, varz_info["cluster"]
            assert varz_info["tls_required"] is True
        port = cluster.nodes[1].mqtt_port
        node = cluster.nodes[2]
        node_url = node.nats_url
        engine = read_secret(data, SERVICE_ENGINE)
        tls = TlsSettings(ca).context()

        async def check() -> None:
            said: list[str] = []

            async def refused(exc: Exception) -> None:
                said.append(str(exc))  # asserted on below, not logged

            anonymous = NatsClient()
            try:
                with pytest.raises(nats.errors.Error):
                    await anonymous.connect(
                        node_url.replace("nats://", "tls://"),
                        tls=tls,
                        allow_reconnect=False,
                        error_cb=refused,
                    )
            finally:
                await anonymous.close()  # a refused connect leaves its socket open
            assert any("authorization violation" in s.lower() for s in said), said
            # The right password in clear: the node says TLS is required and, given a
            # plain CONNECT instead of a TLS handshake, closes without a PONG.
            reader, writer = await asyncio.open_connection("127.0.0.1", node.ports.client)
            try:
                async with asyncio.timeout(10):
                    info = json.loads((await reader.readline()).removeprefix(b"INFO "))
                    assert info["tls_required"] is True, info
                    login = {"user": SERVICE_ENGINE, "pass": engine, "verbose": False}
                    writer.write(f"CONNECT {json.dumps(login)}\r\nPING\r\n".encode())
                    await writer.drain()
                    answer = await reader.read()  # until the node closes
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            assert b"PONG" not in answer, answer
            nc = await nats.connect(
                node_url.replace("nats://", "tls://"),
                user=SERVICE_ENGINE,
                password=engine,
                tls=tls,
                allow_reconnect=False,
            )
            assert nc.is_connected
            await nc.close()
            for user, password, context in (
                (None, None, tls),
                ("bwc-1", "not-its-password", tls),
                ("bwc-1", camera, None),  # its own password, in clear: refused
            ):
                with pytest.raises(aiomqtt.MqttError):
                    async with aiomqtt.Client(
                        "127.0.0.1",
                        port,
                        identifier="deploy-bwc-1",
                        username=user,
                        password=password,
                        protocol=aiomqtt.ProtocolVersion.V311,
                        tls_context=context,
                        timeout=5,
                    ):
                        pass
            async with aiomqtt.Client(
                "127.0.0.1",
                port,
                identifier="deploy-bwc-1",
                username="bwc-1",
                password=camera,
                protocol=aiomqtt.ProtocolVersion.V311,
                tls_context=tls,
                timeout=5,
            ):
                pass

        asyncio.run(check())


def _logs_in_from_a_credential(
    service: configparser.SectionProxy, args: argparse.Namespace, account: str
) -> None:
    """The unit logs in as ``account`` with the password systemd hands it from the file
    `actimesh cluster auth` filled (LoadCredential), never in the command line."""
    name, _, source = service["LoadCredential"].partition(":")
    assert name == f"{account}.password"
    assert source == f"/etc/actimesh/secrets/{account}.password"
    assert args.username == account
    assert args.password_file == Path("/run/credentials/e") / name


def test_cluster_units_run_real_commands_with_real_options() -> None:
    nats = _unit("nats-server.service")["Service"]
    assert nats["ExecStart"].split() == [
        "/opt/actimesh/.venv/bin/nats-server",
        "-c",
        "/etc/nats/nats.conf",
    ]
    assert nats["KillSignal"] == "SIGTERM"
    assert nats["WorkingDirectory"] == "/var/lib/nats"  # where its pid file goes
    assert "/var/lib/nats" in nats["ReadWritePaths"]
    assert str(STORE_DIR).startswith(nats["ReadWritePaths"])

    engine = _unit("actimesh-engine@.service")["Service"]
    argv = engine["ExecStart"].replace("%i", "engine-1").replace("%d", "/run/credentials/e").split()
    assert argv[0] == "/opt/actimesh/.venv/bin/actimesh"
    args = _actimesh_args(argv[1:])
    assert args.command == "engine"
    assert args.engine_id == "engine-1"
    assert args.nats == [f"tls://{h}:4222" for h in DEFAULT_HOSTS]
    assert check_nats_urls(args.nats) == args.nats
    _logs_in_from_a_credential(engine, args, SERVICE_ENGINE)

    dispatch_unit = _unit("actimesh-dispatch.service")["Service"]
    dispatch = _actimesh_args(
        dispatch_unit["ExecStart"].replace("%d", "/run/credentials/e").split()[1:]
    )
    _logs_in_from_a_credential(dispatch_unit, dispatch, SERVICE_DISPATCH)
    assert dispatch.command == "dispatch"
    assert dispatch.mqtt_protocol == "3.1.1"
    # Every node's listener: the dispatch moves to the next when its node is lost.
    assert dispatch.broker == [f"mqtts://{h}:8883" for h in DEFAULT_HOSTS]

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
    # The nodes speak TLS only: the services check them against the CA every host has.
    assert settings.broker.ca_file == TLS_DIR / "ca.pem"


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
        # What `actimesh cluster auth --out nats-auth` wrote, beside the config.
        # ... and the CA and its own certificate, where the config reads them.
        included = {v.split(":")[1]: v.split(":")[0] for v in node["volumes"][1:6]}
        assert included == {
            f"/etc/nats/{AUTHORIZATION_NAME}": f"./nats-auth/{AUTHORIZATION_NAME}",
            f"/etc/nats/{ROUTES_NAME}": f"./nats-auth/{ROUTES_NAME}",
            f"{TLS_DIR}/ca.pem": "./tls/certs/ca.pem",
            f"{TLS_DIR}/node.pem": f"./tls/certs/nodes/nats-{i}.pem",
            f"{TLS_DIR}/node.key": f"./tls/certs/nodes/nats-{i}.key",
        }
        assert node["ports"] == [f"{8882 + i}:8883"]
    ledger_host = urlsplit(load_settings(DEPLOY / "cluster" / "actimesh.toml").ledger_url or "")
    assert services["postgres"]["networks"]["mesh"]["aliases"] == [ledger_host.hostname]
    actimesh = [s for s in services.values() if "command" in s]
    assert len(actimesh) == 4
    for service in actimesh:
        settings_file, _, _ = service["volumes"][0].partition(":")
        assert (compose / settings_file).resolve() == (
            DEPLOY / "cluster" / "actimesh.toml"
        ).resolve()
        assert f"./tls/certs/ca.pem:{TLS_DIR}/ca.pem:ro" in service["volumes"]
        args = _actimesh_args(service["command"].split())
        assert args.config == Path("/etc/actimesh/actimesh.toml")
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
        if args.command == "engine":
            assert set(args.nats) == {f"tls://{h}:4222" for h in DEFAULT_HOSTS}
        if args.command == "dispatch":
            assert args.mqtt_protocol == "3.1.1"
            assert args.broker == [f"mqtts://{h}:8883" for h in DEFAULT_HOSTS]
        if args.command in ("engine", "dispatch"):
            account = SERVICE_ENGINE if args.command == "engine" else SERVICE_DISPATCH
            assert args.username == account
            assert args.password_file == Path("/run/secrets") / account
            assert account in {s["source"] for s in service["secrets"]}
            assert doc["secrets"][account]["file"] == f"./state/secrets/{account}.password"
    assert (
        compose / actimesh[0]["build"]["context"] / actimesh[0]["build"]["dockerfile"]
    ).is_file()
    for secret in doc["secrets"].values():
        # The operator makes them beside it (`cluster auth` in ./state), and git ignores them.
        assert Path(secret["file"]).parts[0] in ("pg_password", "pgpass", "state")
    ignored = (compose / ".gitignore").read_text().split()
    assert {"pg_password", "pgpass", "state/", "nats-auth/", "tls/"} <= set(ignored)
