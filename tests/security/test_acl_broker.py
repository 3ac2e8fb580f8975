"""Attacks on the secured broker, against the real Mosquitto: each must fail.

Every "nothing arrives" check ends with a marker message that *is* allowed, sent on the
same connection after the attack: MQTT keeps one connection's messages in order, so once
the marker is in, anything the broker let through would have arrived before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from actimesh.broker.client import LinkSettings, MqttLink, Subscription
from actimesh.broker.mosquitto import ManagedMosquitto, MosquittoConfig, free_port
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.security import (
    SERVICE_DISPATCH,
    SERVICE_ENGINE,
    SERVICE_MONITOR,
    AccountRole,
    AclAccount,
    AclPolicy,
    Credentials,
    generate_password,
    hash_password,
    password_line,
    render_acl,
)
from tests.conftest import DISPATCH_DEVICE, SecureBroker
from tests.waiting import eventually

TIMEOUT_S = 5.0
MARKER = b"marker"


@dataclass
class Inbox:
    """Messages one client received, by topic."""

    client: aiomqtt.Client
    got: list[tuple[str, bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the broker dropped the connection.
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, topic: str, payload: bytes = MARKER) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while (topic, payload) not in self.got:
                self.arrived.clear()
                await self.arrived.wait()

    def topics(self) -> list[str]:
        return [t for t, p in self.got if p != MARKER]


@contextlib.asynccontextmanager
async def _client(
    secure: SecureBroker, creds: Credentials | None, *subscriptions: str
) -> AsyncIterator[Inbox]:
    async with aiomqtt.Client(
        secure.host,
        secure.port,
        username=None if creds is None else creds.username,
        password=None if creds is None else creds.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=TIMEOUT_S,
    ) as client:
        inbox = Inbox(client)
        for sub in subscriptions:
            await client.subscribe(sub, qos=1)

        async def collect() -> None:
            try:
                async for message in client.messages:
                    payload = message.payload
                    assert isinstance(payload, bytes)
                    inbox.got.append((message.topic.value, payload))
                    inbox.arrived.set()
            except aiomqtt.MqttError:
                inbox.lost.set()

        task = asyncio.create_task(collect(), name="inbox")
        try:
            yield inbox
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _refused(secure: SecureBroker, creds: Credentials | None) -> None:
    with pytest.raises(aiomqtt.MqttCodeError) as info:
        async with _client(secure, creds):
            pass
    assert "Not authorized" in str(info.value) or "135" in str(info.value)


def _svc(secure: SecureBroker, name: str) -> Credentials:
    return secure.services[name]


# ---------------------------------------------------------------------- logging in


async def test_anonymous_client_is_refused(secure_mosquitto: SecureBroker) -> None:
    await _refused(secure_mosquitto, None)


async def test_wrong_password_and_unknown_user_are_refused(secure_mosquitto: SecureBroker) -> None:
    cam = secure_mosquitto.add_device("bwc-1")
    await _refused(secure_mosquitto, Credentials("bwc-1", generate_password()))
    await _refused(secure_mosquitto, Credentials("bwc-2", cam.password))
    async with _client(secure_mosquitto, cam.mqtt):
        pass


# ---------------------------------------------------------------------- devices


async def test_device_uses_its_own_topics(secure_mosquitto: SecureBroker, agency: str) -> None:
    t = Topics(agency)
    cam = secure_mosquitto.add_device("bwc-1")
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    channels = ("telemetry", "event", "presence", "ack")
    async with (
        _client(
            secure_mosquitto, engine, *(t.all_devices(DeviceChannel(c)) for c in channels)
        ) as eng,
        _client(secure_mosquitto, cam.mqtt, t.command("bwc-1"), t.confirm("bwc-1")) as dev,
    ):
        for channel in channels:
            topic = t.device("bwc-1", DeviceChannel(channel))
            await dev.client.publish(topic, MARKER, qos=1)
            await eng.wait_for(topic)
        for topic in (t.command("bwc-1"), t.confirm("bwc-1")):
            await eng.client.publish(topic, MARKER, qos=1)
            await dev.wait_for(topic)


async def test_device_cannot_publish_as_another_device(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    attacker = secure_mosquitto.add_device("bwc-a")
    secure_mosquitto.add_device("bwc-b")
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    watched = [t.all_devices(DeviceChannel(c)) for c in ("telemetry", "event", "presence", "ack")]
    async with (
        _client(secure_mosquitto, engine, *watched, f"{t.prefix}/#") as eng,
        _client(secure_mosquitto, attacker.mqtt) as dev,
    ):
        for channel in ("telemetry", "event", "presence", "ack"):
            for qos in (0, 1):
                await dev.client.publish(t.device("bwc-b", DeviceChannel(channel)), b"x", qos=qos)
        # Nor anything the engine alone may send.
        for topic in (
            t.command("bwc-b"),
            t.activations("taser_draw"),
            t.alerts("no_ack"),
            t.engine_status("engine-1"),
            t.deadletter("bad"),
        ):
            await dev.client.publish(topic, b"x", qos=1)
        await dev.client.publish(t.event("bwc-a"), MARKER, qos=1)
        await eng.wait_for(t.event("bwc-a"))
    assert eng.topics() == []


def test_denied_qos1_publish_is_answered_not_authorised(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    """Mosquitto 2.0.11 over MQTT 5: a refused QoS 1 PUBLISH gets PUBACK 0x87, a refused
    QoS 0 one is dropped silently, and the connection stays up either way. (aiomqtt does
    not surface PUBACK reason codes, so this uses paho directly.)"""
    t = Topics(agency)
    cam = secure_mosquitto.add_device("bwc-a")
    acks: dict[int, int] = {}
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pub-test", protocol=paho.MQTTv5)
    client.username_pw_set(cam.username, cam.password)

    def on_publish(_c: object, _u: object, mid: int, reason: object, _p: object) -> None:
        acks[mid] = int(reason.value)  # type: ignore[attr-defined]
        if len(acks) == 3:  # paho reports the QoS 0 publish too, as sent
            done.set()

    client.on_publish = on_publish
    client.connect(secure_mosquitto.host, secure_mosquitto.port)
    client.loop_start()
    try:
        denied = client.publish(t.event("bwc-b"), b"x", qos=1).mid
        client.publish(t.event("bwc-b"), b"x", qos=0)
        allowed = client.publish(t.event("bwc-a"), b"x", qos=1).mid
        assert done.wait(TIMEOUT_S)
        assert acks[denied] == 0x87
        assert acks[allowed] < 0x80  # 0x10: accepted, nobody subscribed
        assert client.is_connected()
    finally:
        client.disconnect()
        client.loop_stop()


async def test_device_cannot_read_another_devices_commands(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    snoop = secure_mosquitto.add_device("bwc-a")
    secure_mosquitto.add_device("bwc-b")
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    # Subscribing is allowed (Mosquitto checks on delivery): the wildcards are accepted
    # and still deliver nothing that is not the device's own.
    subs = (t.all_devices(DeviceChannel.COMMAND), t.command("bwc-b"), t.confirm("bwc-b"), "#")
    async with (
        _client(secure_mosquitto, snoop.mqtt, *subs) as dev,
        _client(secure_mosquitto, engine) as eng,
    ):
        await eng.client.publish(t.command("bwc-b"), b"secret", qos=1)
        await eng.client.publish(t.confirm("bwc-b"), b"secret", qos=1)
        await eng.client.publish(t.activations("taser_draw"), b"secret", qos=1)
        await eng.client.publish(t.command("bwc-a"), MARKER, qos=1)
        await dev.wait_for(t.command("bwc-a"))
    assert dev.topics() == []


# ---------------------------------------------------------------------- integrators


async def test_integrator_reads_activations_and_telemetry_only_when_granted(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    cam = secure_mosquitto.add_device("bwc-1")
    plain = secure_mosquitto.add_integrator("plain")
    granted = secure_mosquitto.add_integrator("tracker", telemetry=True)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    async with (
        _client(secure_mosquitto, plain, "#") as reader,
        _client(secure_mosquitto, granted, "#") as tracker,
        _client(secure_mosquitto, cam.mqtt) as dev,
        _client(secure_mosquitto, engine) as eng,
    ):
        await dev.client.publish(t.telemetry("bwc-1"), b"fix", qos=1)
        await dev.client.publish(t.presence("bwc-1"), b"on", qos=1)
        await eng.client.publish(t.command("bwc-1"), b"cmd", qos=1)
        await eng.client.publish(t.alerts("no_ack"), b"alert", qos=1)
        await eng.client.publish(t.activations_json("taser_draw"), b"{}", qos=1)
        await eng.client.publish(t.activations("taser_draw"), MARKER, qos=1)
        await reader.wait_for(t.activations("taser_draw"))
        await tracker.wait_for(t.activations("taser_draw"))
    assert reader.topics() == [t.activations_json("taser_draw")]
    assert tracker.topics() == [t.telemetry("bwc-1"), t.activations_json("taser_draw")]


async def test_integrator_cannot_publish_events_or_commands(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    cam = secure_mosquitto.add_device("bwc-1")
    rogue = secure_mosquitto.add_integrator("rogue", telemetry=True)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    async with (
        _client(secure_mosquitto, engine, f"{t.prefix}/dev/#") as eng,
        _client(secure_mosquitto, cam.mqtt, t.command("bwc-1")) as dev,
        _client(secure_mosquitto, rogue) as bad,
    ):
        # Its own "device" slot too: the device patterns apply to every account.
        for device in ("bwc-1", "int-rogue", DISPATCH_DEVICE):
            for channel in ("event", "telemetry", "presence", "ack"):
                await bad.client.publish(t.device(device, DeviceChannel(channel)), b"x", qos=1)
        await bad.client.publish(t.command("bwc-1"), b"x", qos=1)
        await bad.client.publish(t.activations("taser_draw"), b"x", qos=1)
        await eng.client.publish(t.command("bwc-1"), MARKER, qos=1)
        await dev.client.publish(t.event("bwc-1"), MARKER, qos=1)
        await dev.wait_for(t.command("bwc-1"))
        await eng.wait_for(t.event("bwc-1"))
    assert dev.topics() == []
    assert eng.topics() == []


# ---------------------------------------------------------------------- service accounts


async def test_service_accounts_gain_nothing_from_the_device_patterns(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    cam = secure_mosquitto.add_device("bwc-1")
    async with (
        _client(secure_mosquitto, engine, f"{t.prefix}/dev/#") as eng,
        _client(secure_mosquitto, cam.mqtt) as dev,
    ):
        for name in (SERVICE_MONITOR, SERVICE_DISPATCH, SERVICE_ENGINE):
            async with _client(secure_mosquitto, _svc(secure_mosquitto, name)) as svc:
                for channel in ("event", "telemetry", "presence", "ack"):
                    await svc.client.publish(t.device(name, DeviceChannel(channel)), b"x", qos=1)
        await dev.client.publish(t.event("bwc-1"), MARKER, qos=1)
        await eng.wait_for(t.event("bwc-1"))
    assert eng.topics() == []


async def test_without_the_deny_line_a_pattern_would_give_an_integrator_a_device_slot(
    tmp_path: Path, agency: str
) -> None:
    """Why every non-device account denies itself its slot: Mosquitto 2.0 applies
    `pattern` lines to every account, `user` blocks or not."""
    t = Topics(agency)
    policy = AclPolicy(agency, DISPATCH_DEVICE)
    acl = render_acl(
        policy,
        [AclAccount("int-x", AccountRole.INTEGRATOR), AclAccount("svc-engine", AccountRole.ENGINE)],
    )
    unsafe = "\n".join(line for line in acl.splitlines() if "deny" not in line) + "\n"
    passwords = {"int-x": generate_password(), "svc-engine": generate_password()}
    (tmp_path / "passwd").write_text(
        "".join(password_line(u, hash_password(p)) + "\n" for u, p in passwords.items())
    )
    (tmp_path / "acl").write_text(unsafe)
    config = MosquittoConfig(data_dir=tmp_path, port=free_port())
    async with ManagedMosquitto(config) as broker:
        secure = SecureBroker(broker, tmp_path, policy, {})
        engine = Credentials("svc-engine", passwords["svc-engine"])
        async with (
            _client(secure, engine, t.all_devices(DeviceChannel.EVENT)) as eng,
            _client(secure, Credentials("int-x", passwords["int-x"])) as integrator,
        ):
            await integrator.client.publish(t.event("int-x"), MARKER, qos=1)
            await eng.wait_for(t.event("int-x"))


async def test_dispatch_raises_zones_only_as_its_console_device(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    dispatch = _svc(secure_mosquitto, SERVICE_DISPATCH)
    secure_mosquitto.add_device("bwc-1")
    async with (
        _client(secure_mosquitto, engine, t.all_devices(DeviceChannel.EVENT)) as eng,
        _client(secure_mosquitto, dispatch, t.confirm(DISPATCH_DEVICE)) as disp,
    ):
        await disp.client.publish(t.event("bwc-1"), b"x", qos=1)
        await disp.client.publish(t.command("bwc-1"), b"x", qos=1)
        await disp.client.publish(t.event(DISPATCH_DEVICE), MARKER, qos=1)
        await eng.wait_for(t.event(DISPATCH_DEVICE))
        await eng.client.publish(t.confirm(DISPATCH_DEVICE), MARKER, qos=1)
        await disp.wait_for(t.confirm(DISPATCH_DEVICE))
    assert eng.topics() == []


async def test_engine_replicas_share_events_through_the_plain_topic_acl(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    cam = secure_mosquitto.add_device("bwc-1")
    shared = t.shared("engines", t.all_devices(DeviceChannel.EVENT))
    async with (
        _client(secure_mosquitto, engine, shared) as replica,
        _client(secure_mosquitto, cam.mqtt) as dev,
    ):
        await dev.client.publish(t.event("bwc-1"), MARKER, qos=1)
        await replica.wait_for(t.event("bwc-1"))


async def test_monitor_reads_what_it_reports_and_nothing_else(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    monitor = _svc(secure_mosquitto, SERVICE_MONITOR)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    cam = secure_mosquitto.add_device("bwc-1")
    async with (
        _client(secure_mosquitto, monitor, "#") as mon,
        _client(secure_mosquitto, engine) as eng,
        _client(secure_mosquitto, cam.mqtt) as dev,
    ):
        await dev.client.publish(t.telemetry("bwc-1"), b"fix", qos=1)
        await dev.client.publish(t.ack("bwc-1"), b"ack", qos=1)
        await eng.client.publish(t.command("bwc-1"), b"cmd", qos=1)
        await eng.client.publish(t.alerts("no_ack"), b"alert", qos=1)
        await eng.client.publish(t.deadletter("bad"), b"dl", qos=1)
        await eng.client.publish(t.activations("taser_draw"), MARKER, qos=1)
        await mon.wait_for(t.activations("taser_draw"))
    assert mon.topics() == [t.ack("bwc-1"), t.alerts("no_ack"), t.deadletter("bad")]


# ---------------------------------------------------------------------- live changes


async def _link(secure: SecureBroker, creds: Credentials, agency: str) -> MqttLink:
    return MqttLink(
        LinkSettings(
            host=secure.host,
            port=secure.port,
            client_id=f"{agency}-{creds.username}",
            username=creds.username,
            password=creds.password,
            subscriptions=(Subscription(Topics(agency).command(creds.username), 1),),
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
        )
    )


async def test_removed_device_is_disconnected_live_and_cannot_return(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    cam = secure_mosquitto.add_device("bwc-1")
    pid = secure_mosquitto.broker.pid
    link = await _link(secure_mosquitto, cam.mqtt, agency)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run(), name="bwc-1")
        await link.wait_connected(TIMEOUT_S)
        with secure_mosquitto.registry() as reg:
            reg.remove("bwc-1")
        secure_mosquitto.apply()
        await eventually(lambda: not link.connected, TIMEOUT_S)  # the device is dropped
        # It keeps trying (backoff) and is refused every time.
        refusals = link.stats.connects
        # A reconnect is refused.
        await eventually(lambda: "Not authorized" in link.stats.last_error, TIMEOUT_S)
        assert not link.connected
        assert link.stats.connects == refusals
        task.cancel()
    assert secure_mosquitto.broker.pid == pid
    assert "Reloading config." in secure_mosquitto.broker.log_tail(50)
    await _refused(secure_mosquitto, cam.mqtt)


async def test_rotated_password_old_refused_new_accepted(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    old = secure_mosquitto.add_device("bwc-1")
    link = await _link(secure_mosquitto, old.mqtt, agency)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run(), name="bwc-1")
        await link.wait_connected(TIMEOUT_S)
        with secure_mosquitto.registry() as reg:
            new = reg.rotate("bwc-1")
        secure_mosquitto.apply()
        # The session that logged in with the old password is dropped, too.
        await eventually(lambda: not link.connected, TIMEOUT_S)
        task.cancel()
    await _refused(secure_mosquitto, old.mqtt)
    async with _client(secure_mosquitto, new.mqtt):
        pass


async def test_removed_integrator_is_disconnected_live(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    cam = secure_mosquitto.add_device("bwc-1")
    creds = secure_mosquitto.add_integrator("tracker", telemetry=True)
    async with (
        _client(secure_mosquitto, creds, t.all_devices(DeviceChannel.TELEMETRY)) as tracker,
        _client(secure_mosquitto, cam.mqtt) as dev,
    ):
        await dev.client.publish(t.telemetry("bwc-1"), MARKER, qos=1)
        await tracker.wait_for(t.telemetry("bwc-1"))
        with secure_mosquitto.registry() as reg:
            reg.remove_integrator("tracker")
        secure_mosquitto.apply()
        async with asyncio.timeout(TIMEOUT_S):
            await tracker.lost.wait()
    await _refused(secure_mosquitto, creds)
