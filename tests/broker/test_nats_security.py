"""The NATS cluster attacked as tests/broker/test_mosquitto_security.py and test_hostile.py
attack Mosquitto: logins, subscriptions and publications a device, an integrator or a
stranger may not make, live changes from the registry, and TLS."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import nats
import nats.errors
import paho.mqtt.client as mqtt
import pytest
from nats.aio.client import Client as NatsClient
from paho.mqtt.enums import CallbackAPIVersion

from actimesh.broker.client import TlsSettings
from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import free_port
from actimesh.broker.nats import NatsCluster
from actimesh.broker.nats.auth import NatsAccess, render_authorization
from actimesh.broker.nats.cluster import NatsTls, NodePorts, apply_access
from actimesh.broker.nats.subjects import MQTT_QOS1_PREFIX, MQTT_QOS_HEADER
from actimesh.errors import BrokerError
from actimesh.security.acl import AclPolicy
from actimesh.security.certs import init_ca, issue_node
from actimesh.security.nats_access import NATS_CLUSTER_DIR, registry_nats_access
from actimesh.security.provision import ClusterQuarantine, apply_to_broker
from actimesh.security.registry import Registry
from tests.broker.nats_secured import ENGINE, access_for, password_of
from tests.waiting import eventually_sync

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
AGENCY = "ag"
DEV = f"am/v1/{AGENCY}/dev"


@dataclass
class Mqtt:
    """A paho MQTT 3.1.1 client that records what the broker answers."""

    port: int
    client_id: str
    username: str | None
    password: str | None = field(repr=False)
    clean: bool = True
    tls: TlsSettings | None = None
    connack: str | None = None
    session_present: bool | None = None
    subacks: dict[int, list[str]] = field(default_factory=dict)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    disconnects: int = 0

    def __post_init__(self) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=self.clean,
            reconnect_on_failure=False,
        )
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls is not None:
            client.tls_set_context(self.tls.context())
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self.client = client
        self._lock = threading.Lock()

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        self.session_present = bool(flags.session_present)
        self.connack = str(reason)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        self.subacks[mid] = [str(r) for r in reasons]

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        self.disconnects += 1

    def connect(self) -> str:
        self.client.connect(HOST, self.port, keepalive=30)
        self.client.loop_start()
        eventually_sync(lambda: self.connack is not None or self.disconnects)
        return self.connack or "closed"

    def subscribe(self, topic: str) -> bool:
        """True when the broker grants it."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        eventually_sync(lambda: mid in self.subacks or self.disconnects)
        return "Granted" in "".join(self.subacks.get(mid, ["closed"]))

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(10)

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def device(cluster: NatsCluster, device_id: str, *, password: str | None = None, **kw: Any) -> Mqtt:
    return Mqtt(
        cluster.nodes[0].mqtt_port,
        f"{AGENCY}-{device_id}",
        device_id,
        password if password is not None else password_of(device_id),
        **kw,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    access = access_for(
        AGENCY,
        [
            ("cam-1", DeviceKind.BODY_CAM),
            ("cam-2", DeviceKind.BODY_CAM),
            ("cew-1", DeviceKind.CEW),
        ],
        integrators=["int-news"],
        event_kinds=frozenset({DeviceKind.CEW.value}),
    )
    with NatsCluster(tmp_path_factory.mktemp("nats"), size=1, access=access) as running:
        yield running


async def native(
    cluster: NatsCluster, user: str | None, password: str | None, errors: list[str] | None = None
) -> NatsClient:
    said = [] if errors is None else errors

    async def _expected(exc: Exception) -> None:
        said.append(str(exc).lower())  # refusals these tests provoke, asserted on

    nc = NatsClient()
    try:
        await nc.connect(
            cluster.nodes[0].nats_url,
            user=user,
            password=password,
            error_cb=_expected,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
        )
    except BaseException:
        await nc.close()  # a refused connect leaves its socket open otherwise
        raise
    return nc


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body: dict[str, Any] = json.loads(response.read())
    except OSError:
        return None
    return body


def log_has(cluster: NatsCluster, text: str) -> bool:
    return text in cluster.nodes[0].log_since_start()


def test_the_rendered_authorization_has_no_password_in_clear() -> None:
    access = access_for(AGENCY, [("cam-1", DeviceKind.BODY_CAM)])
    text = render_authorization(access)
    assert password_of("cam-1") not in text
    assert '"$2b$04$' in text
    assert 'allowed_connection_types: ["MQTT"]' in text
    assert 'allowed_connection_types: ["STANDARD"]' in text  # the engine only


def test_anonymous_and_wrong_logins_are_refused(cluster: NatsCluster) -> None:
    for username, password in (
        (None, None),
        ("cam-1", "wrong"),
        ("nobody", "x"),
        ("cam-1", password_of("cam-2")),
        # the engine's password is for the NATS port only
        (ENGINE, password_of(ENGINE)),
        ("svc-cluster", "x"),
    ):
        client = Mqtt(cluster.nodes[0].mqtt_port, "ag-cam-1", username, password)
        try:
            assert client.connect() != "Success", username
        finally:
            client.close()
    ok = device(cluster, "cam-1")
    try:
        assert ok.connect() == "Success"
    finally:
        ok.close()


async def test_no_device_and_no_stranger_gets_onto_the_nats_port(cluster: NatsCluster) -> None:
    for user, password in ((None, None), ("cam-1", password_of("cam-1")), (ENGINE, "wrong")):
        with pytest.raises((nats.errors.Error, OSError)):
            await native(cluster, user, password)
    nc = await native(cluster, ENGINE, password_of(ENGINE))
    await nc.close()


def test_a_device_may_subscribe_to_its_own_commands_and_nothing_else(
    cluster: NatsCluster,
) -> None:
    cam = device(cluster, "cam-1")
    try:
        assert cam.connect() == "Success"
        assert cam.subscribe(f"{DEV}/cam-1/cmd")
        assert cam.subscribe(f"{DEV}/cam-1/confirm")
        assert cam.subscribe(f"am/v1/{AGENCY}/engine/slowdown")  # the engine's, to read
        for forbidden in (
            "#",
            "+/#",
            "am/#",
            f"{DEV}/+/cmd",
            f"{DEV}/cam-2/cmd",
            f"{DEV}/cam-2/telemetry",
            f"{DEV}/cam-1/#",
            f"{DEV}/+/event",
            f"am/v1/{AGENCY}/activations/#",
            "$MQTT/#",
            "$MQTT/msgs/#",
            f"$MQTT/msgs/am/v1/{AGENCY}/dev/cam-2/cmd",
            "$MQTT/sess/#",
            "$MQTT/sub/#",
            "$MQTT/JSA/#",
            "$JS/#",
            "$JS/API/#",
            "$SYS/#",
            "_INBOX/#",
            f"$share/engines/{DEV}/+/event",
        ):
            assert not cam.subscribe(forbidden), forbidden
    finally:
        cam.close()


async def test_what_a_device_may_not_publish_never_arrives(cluster: NatsCluster) -> None:
    seen: list[tuple[str, bytes]] = []

    async def take(msg: Any) -> None:
        seen.append((msg.subject, msg.data))

    engine = await native(cluster, ENGINE, password_of(ENGINE))
    try:
        for channel in ("telemetry", "event", "presence", "ack"):
            await engine.subscribe(f"am.v1.{AGENCY}.dev.*.{channel}", cb=take)
        await engine.flush()
        cam, cew = device(cluster, "cam-1"), device(cluster, "cew-1")
        try:
            assert cam.connect() == "Success"
            assert cew.connect() == "Success"
            cam.publish(f"{DEV}/cam-2/telemetry", b"forged")  # another device's topic
            cam.publish(f"{DEV}/cam-2/ack", b"forged")
            cam.publish(f"{DEV}/cam-1/event", b"not-a-sender")  # a camera raises nothing
            cam.publish(f"{DEV}/cam-2/cmd", b"forged")
            cam.publish("$JS/API/STREAM/DELETE/$MQTT_msgs", b"")
            cam.publish(f"am/v1/{AGENCY}/activations/x", b"forged")
            cam.publish(f"am/v1/{AGENCY}/engine/slowdown", b"forged")
            cam.publish(f"{DEV}/cam-1/telemetry", b"sentinel")  # after them, on one link
            cew.publish(f"{DEV}/cew-1/event", b"taser")
            await asyncio.to_thread(
                eventually_sync, lambda: len(seen) == 2 and b"sentinel" in dict(seen).values()
            )
        finally:
            cam.close()
            cew.close()
    finally:
        await engine.close()
    assert sorted(seen) == [
        (f"am.v1.{AGENCY}.dev.cam-1.telemetry", b"sentinel"),
        (f"am.v1.{AGENCY}.dev.cew-1.event", b"taser"),
    ]
    assert log_has(cluster, f'Publish Violation - Subject "am.v1.{AGENCY}.dev.cam-2.telemetry"')
    assert log_has(cluster, 'Publish Violation - Subject "$JS.API.STREAM.DELETE.$MQTT_msgs"')
    assert log_has(cluster, f'Publish Violation - Subject "am.v1.{AGENCY}.engine.slowdown"')


async def test_the_engine_may_not_reach_beyond_its_grants(cluster: NatsCluster) -> None:
    said: list[str] = []
    engine = await native(cluster, ENGINE, password_of(ENGINE), said)
    try:
        for subject in ("$JS.API.STREAM.DELETE.$MQTT_msgs", "$MQTT.sess.x"):
            await engine.publish(subject, b"")
        await engine.subscribe(f"am.v1.{AGENCY}.dev.cam-1.cmd")  # a device's commands
        await engine.subscribe("$MQTT.msgs.>")
        await engine.flush()
        await asyncio.to_thread(eventually_sync, lambda: len(said) == 4)
        assert said == [
            'nats: permissions violation for publish to "$js.api.stream.delete.$mqtt_msgs"',
            'nats: permissions violation for publish to "$mqtt.sess.x"',
            f'nats: permissions violation for subscription to "am.v1.{AGENCY}.dev.cam-1.cmd"',
            'nats: permissions violation for subscription to "$mqtt.msgs.>"',
        ]
    finally:
        await engine.close()
    assert log_has(cluster, 'Publish Violation - Subject "$MQTT.sess.x"')


async def test_the_engine_reads_retained_messages_only_of_what_it_may_subscribe_to(
    cluster: NatsCluster,
) -> None:
    said: list[str] = []
    engine = await native(cluster, ENGINE, password_of(ENGINE), said)
    api = "$JS.API.CONSUMER"
    stream = "$MQTT_rmsgs"
    try:
        # What it is granted: the presence it subscribes to, filtered in the subject ...
        presence = f"$MQTT.rmsgs.am.v1.{AGENCY}.dev.*.presence"
        body = {"stream_name": stream, "config": {"name": "r1", "filter_subject": presence}}
        ok = await engine.request(
            f"{api}.CREATE.{stream}.r1.{presence}", json.dumps(body).encode(), timeout=5
        )
        assert "error" not in json.loads(ok.data), ok.data
        # ... and a body that asks for more under that subject is refused by the server.
        wide = {"stream_name": stream, "config": {"name": "r2", "filter_subject": "$MQTT.rmsgs.>"}}
        refused = await engine.request(
            f"{api}.CREATE.{stream}.r2.{presence}", json.dumps(wide).encode(), timeout=5
        )
        assert json.loads(refused.data)["error"]["err_code"] == 10131  # filter mismatch
        # Not granted: an unfiltered consumer, another filter, a delete, a listing.
        for subject in (
            f"{api}.CREATE.{stream}",
            f"{api}.CREATE.{stream}.r3.$MQTT.rmsgs.>",
            f"{api}.CREATE.{stream}.r4.$MQTT.rmsgs.am.v1.{AGENCY}.dev.cam-1.cmd",
            f"{api}.DELETE.{stream}.r1",
            f"{api}.LIST.{stream}",
        ):
            await engine.publish(subject, b"{}")
        await engine.flush()
        await asyncio.to_thread(eventually_sync, lambda: len(said) == 5)
        assert said == [
            f'nats: permissions violation for publish to "{s.lower()}"'
            for s in (
                f"{api}.CREATE.{stream}",
                f"{api}.CREATE.{stream}.r3.$MQTT.rmsgs.>",
                f"{api}.CREATE.{stream}.r4.$MQTT.rmsgs.am.v1.{AGENCY}.dev.cam-1.cmd",
                f"{api}.DELETE.{stream}.r1",
                f"{api}.LIST.{stream}",
            )
        ]
    finally:
        await engine.close()


def test_an_integrator_reads_activations_and_publishes_nothing(cluster: NatsCluster) -> None:
    news = Mqtt(cluster.nodes[0].mqtt_port, "int-news", "int-news", password_of("int-news"))
    try:
        assert news.connect() == "Success"
        assert news.subscribe(f"am/v1/{AGENCY}/activations/#")
        assert not news.subscribe(f"{DEV}/+/telemetry")  # not granted telemetry
        assert not news.subscribe(f"{DEV}/+/cmd")
        news.publish(f"am/v1/{AGENCY}/activations/a1", b"forged")
        news.publish(f"am/v1/{AGENCY}/engine/slowdown", b"forged")
        news.publish(f"{DEV}/cam-1/cmd", b"forged")
        eventually_sync(
            lambda: log_has(cluster, f'Publish Violation - Subject "am.v1.{AGENCY}.dev.cam-1.cmd"')
        )
        # Checked after the later one: the node logs one connection's violations in order.
        assert log_has(cluster, f'Publish Violation - Subject "am.v1.{AGENCY}.engine.slowdown"')
        assert news.received() == []
    finally:
        news.close()


async def _store_command(cluster: NatsCluster, device_id: str, payload: bytes) -> None:
    """What the engine's outbound does for a QoS 1 command: stored in ``$MQTT_msgs``."""
    engine = await native(cluster, ENGINE, password_of(ENGINE))
    try:
        subject = f"am.v1.{AGENCY}.dev.{device_id}.cmd"
        await engine.request(
            MQTT_QOS1_PREFIX + subject, payload, headers={MQTT_QOS_HEADER: "1"}, timeout=5
        )
    finally:
        await engine.close()


async def test_no_account_may_use_another_accounts_client_id(cluster: NatsCluster) -> None:
    # The auth callout binds each device and integrator to its client id, before the
    # MQTT listener looks up a session: a thief holding cam-1's password can neither
    # resume cam-2's session (taking its stored commands' delivery) nor erase it with
    # a clean session, nor pose as the engine or a dispatch console.
    owner = device(cluster, "cam-2", clean=False)
    assert owner.connect() == "Success"
    assert owner.subscribe(f"{DEV}/cam-2/cmd")
    owner.close()
    await _store_command(cluster, "cam-2", b"start-recording")
    port = cluster.nodes[0].mqtt_port
    attempts = [
        ("ag-cam-2", "cam-1", False),  # resume cam-2's session
        ("ag-cam-2", "cam-1", True),  # erase it
        ("ag-cam-2", "int-news", True),
        ("ag-cam-2", "dispatch", True),  # a service bound to no id takes none that is bound
        ("int-news", "cam-1", True),
        ("ag-engine-1-ctl", "cam-1", True),
        ("ag-dispatch-1-ctl", "cam-1", True),
        ("", "cam-1", True),  # the server names it at random: not cam-1's either
    ]
    for client_id, user, clean in attempts:
        password = password_of("svc-dispatch" if user == "dispatch" else user)
        login = "svc-dispatch" if user == "dispatch" else user
        thief = Mqtt(port, client_id, login, password, clean=clean)
        try:
            assert thief.connect() == "Not authorized", (client_id, user)
        finally:
            thief.close()
    assert log_has(cluster, "cam-1 may not use client id 'ag-cam-2'")
    assert log_has(cluster, "client id 'ag-cam-2' is another account's")
    owner = device(cluster, "cam-2", clean=False)
    try:
        assert owner.connect() == "Success"
        assert owner.session_present  # nothing erased it
        eventually_sync(lambda: owner.received() == [(f"{DEV}/cam-2/cmd", b"start-recording")])
    finally:
        owner.close()
    console = Mqtt(port, "ag-dispatch-1-ctl", "svc-dispatch", password_of("svc-dispatch"))
    try:
        assert console.connect() == "Success"  # the service's own ids stay its own
    finally:
        console.close()


# ---------------------------------------------------------------- live changes


@pytest.fixture
def registry_cluster(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], NatsCluster]]:
    """A data directory whose registry has two cameras, and its cluster in ``nats/``."""
    policy = AclPolicy(AGENCY, "dispatch-1")
    with Registry.open(tmp_path) as registry:
        registry.ensure_service_accounts(tmp_path / "secrets")
        passwords = {d: registry.add(d, DeviceKind.BODY_CAM).password for d in ("cam-1", "cam-2")}
        registry.write_broker_files(tmp_path / "broker", policy)
        access = registry_nats_access(registry, policy)
    with NatsCluster(tmp_path / NATS_CLUSTER_DIR, size=1, access=access) as running:
        yield tmp_path, passwords, running


def test_a_removed_device_is_cut_off_live_and_the_others_stay(
    registry_cluster: tuple[Path, dict[str, str], NatsCluster],
) -> None:
    data_dir, passwords, cluster = registry_cluster
    stays = device(cluster, "cam-1", password=passwords["cam-1"])
    goes = device(cluster, "cam-2", password=passwords["cam-2"])
    try:
        assert stays.connect() == "Success"
        assert goes.connect() == "Success"
        with Registry.open(data_dir) as registry:
            registry.remove("cam-2")
        # What `actimesh devices remove` runs after changing the registry.
        apply_to_broker(data_dir, AclPolicy(AGENCY, "dispatch-1"))
        eventually_sync(lambda: goes.disconnects == 1)
        assert stays.disconnects == 0
        assert stays.subscribe(f"{DEV}/cam-1/cmd")  # still up, still allowed
    finally:
        stays.close()
        goes.close()
    again = device(cluster, "cam-2", password=passwords["cam-2"])
    try:
        assert again.connect() != "Success"
    finally:
        again.close()


def test_a_rotated_password_takes_effect_live(
    registry_cluster: tuple[Path, dict[str, str], NatsCluster],
) -> None:
    data_dir, passwords, cluster = registry_cluster
    with Registry.open(data_dir) as registry:
        new = registry.rotate("cam-1").password
    apply_to_broker(data_dir, AclPolicy(AGENCY, "dispatch-1"))
    for password, answer in ((passwords["cam-1"], False), (new, True)):
        client = device(cluster, "cam-1", password=password)
        try:
            assert (client.connect() == "Success") is answer
        finally:
            client.close()


def test_applying_to_a_folder_without_a_cluster_says_so_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="no NATS cluster at") as info:
        apply_access(tmp_path, NatsAccess())
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- TLS


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[NatsCluster, NatsTls]]:
    certs = tmp_path / "certs"
    init_ca(certs)
    node = issue_node(certs, "nats")
    tls = NatsTls(certs / "ca.pem", node.cert, node.key)
    access = access_for(AGENCY, [("cam-1", DeviceKind.BODY_CAM)])
    with NatsCluster(tmp_path / "nats", size=2, access=access, tls=tls) as running:
        yield running, tls


def test_a_device_connects_over_tls_and_not_in_clear(
    tls_cluster: tuple[NatsCluster, NatsTls],
) -> None:
    cluster, tls = tls_cluster
    secure = device(cluster, "cam-1", tls=TlsSettings(ca_file=tls.ca))
    try:
        assert secure.connect() == "Success"
        assert secure.subscribe(f"{DEV}/cam-1/cmd")
    finally:
        secure.close()
    plain = device(cluster, "cam-1")
    try:
        assert plain.connect() != "Success"
    finally:
        plain.close()


@pytest.mark.logs_exception(
    ssl.SSLError,
    reason="nats-py's default error callback logs a TLS close that races the server's last "
    "write (APPLICATION_DATA_AFTER_CLOSE_NOTIFY); the engine's own link logs it as a warning",
)
async def test_the_engine_connects_over_tls(tls_cluster: tuple[NatsCluster, NatsTls]) -> None:
    cluster, tls = tls_cluster
    nc = await nats.connect(
        cluster.nodes[1].nats_url,
        user=ENGINE,
        password=password_of(ENGINE),
        tls=TlsSettings(ca_file=tls.ca).context(),
        allow_reconnect=False,
        connect_timeout=5,
    )
    await nc.close()


def test_a_node_without_a_certificate_gets_no_route(
    tls_cluster: tuple[NatsCluster, NatsTls], tmp_path: Path
) -> None:
    cluster, _ = tls_cluster
    target = cluster.nodes[0]
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    ports = NodePorts.free(HOST)
    (rogue_dir / "nats.conf").write_text(
        f'listen: "{HOST}:{ports.client}"\nhttp: "{HOST}:{ports.monitor}"\n'
        f'cluster {{\n  name: "actimesh"\n  listen: "{HOST}:{free_port(HOST)}"\n'
        f'  routes: ["nats-route://{HOST}:{target.ports.cluster}"]\n}}\n'
    )
    rogue = subprocess.Popen(
        [str(cluster.binary), "-c", str(rogue_dir / "nats.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        eventually_sync(lambda: "TLS route handshake error" in target.log_since_start())
        rogue_routes = _get_json(f"http://{HOST}:{ports.monitor}/routez")
        assert rogue_routes is not None
        assert rogue_routes["num_routes"] == 0
        peers = _get_json(f"{target.monitor_url}/routez")
        assert peers is not None
        routes = peers["routes"]
        assert isinstance(routes, list)
        assert {r["remote_name"] for r in routes} == {cluster.nodes[1].server_name}
    finally:
        rogue.terminate()
        rogue.wait(10)


async def test_a_quarantined_device_is_cut_off_on_every_node_until_enabled(
    registry_cluster: tuple[Path, dict[str, str], NatsCluster],
) -> None:
    """What the engine's quarantine does on a cluster (ClusterQuarantine): the registry
    marks the device, the reload has the callouts refuse it, it is disconnected while
    the others stay, and `actimesh devices enable` brings it back."""
    data_dir, passwords, cluster = registry_cluster
    policy = AclPolicy(AGENCY, "dispatch-1")
    flooder = device(cluster, "cam-2", password=passwords["cam-2"])
    stays = device(cluster, "cam-1", password=passwords["cam-1"])
    try:
        assert flooder.connect() == "Success"
        assert stays.connect() == "Success"
        quarantine = ClusterQuarantine(data_dir, policy)
        assert await quarantine.quarantine("cam-2", "quarantined: flooding")
        await asyncio.to_thread(eventually_sync, lambda: flooder.disconnects == 1)
        assert not await quarantine.quarantine("cam-2", "again")  # once is enough
        assert stays.disconnects == 0
        assert stays.subscribe(f"{DEV}/cam-1/cmd")
    finally:
        flooder.close()
        stays.close()
    again = device(cluster, "cam-2", password=passwords["cam-2"])
    try:
        assert again.connect() == "Not authorized"
    finally:
        again.close()
    with Registry.open(data_dir) as registry:
        assert registry.get("cam-2").disabled == "quarantined: flooding"
        assert registry.enable("cam-2")
    apply_to_broker(data_dir, policy)  # what `actimesh devices enable` runs after it
    back = device(cluster, "cam-2", password=passwords["cam-2"])
    try:
        assert back.connect() == "Success"
    finally:
        back.close()


def test_no_device_or_integrator_reaches_the_engines_event_consumer(cluster: NatsCluster) -> None:
    """The cluster has no ``$share``: the engines pull trigger events from a durable
    JetStream consumer. A device or an integrator cannot join it by any road an MQTT
    login has: the share group and ``$MQTT.`` filters are refused at SUBSCRIBE, and
    the JetStream API calls that create, read or acknowledge a consumer are publish
    violations (and their replies would need ``_INBOX.>``, refused too)."""
    stream = "$MQTT_msgs"
    calls = (
        f"$JS/API/CONSUMER/CREATE/{stream}/intruder",
        f"$JS/API/CONSUMER/DURABLE/CREATE/{stream}/engines",
        f"$JS/API/CONSUMER/MSG/NEXT/{stream}/engines",
        f"$JS/API/CONSUMER/INFO/{stream}/engines",
        f"$JS/ACK/{stream}/engines/1/1/1/0/0",
    )
    for client_id, user in (("ag-cam-1", "cam-1"), ("int-news", "int-news")):
        thief = Mqtt(cluster.nodes[0].mqtt_port, client_id, user, password_of(user))
        try:
            assert thief.connect() == "Success"
            for group in (f"$share/engines/{DEV}/+/event", f"$share/x/{DEV}/+/event"):
                assert not thief.subscribe(group), group
            assert not thief.subscribe(f"$MQTT/msgs/{DEV}/+/event")
            assert not thief.subscribe("_INBOX/#")
            for topic in calls:
                thief.publish(topic, b'{"batch":1}')
            for topic in calls:
                violation = f'Publish Violation - Subject "{topic.replace("/", ".")}"'
                eventually_sync(partial(log_has, cluster, violation))
            assert thief.received() == []
        finally:
            thief.close()
