"""Attacks on the secured broker, against the real Mosquitto: each must fail.

Every "nothing arrives" check ends with a marker message that *is* allowed, sent on the
same connection after the attack: MQTT keeps one connection's messages in order, so once
the marker is in, anything the broker let through would have arrived before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from actimesh.broker.client import LinkSettings, MqttLink, Subscription
from actimesh.broker.dynsec import Access, AdminLogin, _Control, sync_access
from actimesh.broker.messages import DeviceKind
from actimesh.broker.topics import DeviceChannel, Topics, device_client_id
from actimesh.security import (
    SERVICE_DISPATCH,
    SERVICE_ENGINE,
    SERVICE_MONITOR,
    Credentials,
    generate_password,
)
from actimesh.security.provision import RegistryQuarantine
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
    #: Each subscription made, and whether the broker granted it (SUBACK below 0x80).
    granted: dict[str, bool] = field(default_factory=dict)

    async def subscribe(self, topic_filter: str) -> bool:
        reasons = await self.client.subscribe(topic_filter, qos=1)
        codes = [r if isinstance(r, int) else r.value for r in reasons]
        self.granted[topic_filter] = all(code < 0x80 for code in codes)
        return self.granted[topic_filter]

    def refused(self) -> list[str]:
        return [t for t, ok in self.granted.items() if not ok]

    async def wait_for(self, topic: str, payload: bytes = MARKER) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while (topic, payload) not in self.got:
                self.arrived.clear()
                await self.arrived.wait()

    def topics(self) -> list[str]:
        return [t for t, p in self.got if p != MARKER]


@contextlib.asynccontextmanager
async def _client(
    secure: SecureBroker,
    creds: Credentials | None,
    *subscriptions: str,
    client_id: str | None = None,
) -> AsyncIterator[Inbox]:
    if client_id is None and creds is not None:
        client_id = secure.client_id(creds.username)
    async with aiomqtt.Client(
        secure.host,
        secure.port,
        identifier=client_id,
        username=None if creds is None else creds.username,
        password=None if creds is None else creds.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=TIMEOUT_S,
    ) as client:
        inbox = Inbox(client)
        for sub in subscriptions:
            await inbox.subscribe(sub)

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


async def test_a_device_with_a_dot_in_its_id_connects_as_its_tilde_client_id(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    cam = secure_mosquitto.add_device("cam.7")
    client_id = device_client_id(agency, "cam.7")
    assert client_id == f"{agency.replace('.', '~')}-cam~7"  # what a NATS server accepts
    async with _client(secure_mosquitto, cam.mqtt, t.command("cam.7"), client_id=client_id) as dev:
        assert dev.refused() == []
    # The dynsec binding follows the same rule: the dotted form is someone else's.
    with pytest.raises(aiomqtt.MqttCodeError):
        async with _client(secure_mosquitto, cam.mqtt, client_id=f"{agency}-cam.7"):
            pass


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
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=secure_mosquitto.client_id("bwc-a"),
        protocol=paho.MQTTv5,
    )
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


async def test_device_may_subscribe_to_its_own_topics_only(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    """Checked when the SUBSCRIBE is made (Dynamic Security): wildcards, other devices'
    topics, ``$SYS`` and every share group are refused, the engines' above all."""
    t = Topics(agency)
    snoop = secure_mosquitto.add_device("bwc-a")
    secure_mosquitto.add_device("bwc-b")
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    forbidden = (
        t.all_devices(DeviceChannel.COMMAND),
        t.command("bwc-b"),
        t.confirm("bwc-b"),
        "#",
        "$SYS/#",
        f"{t.prefix}/#",
        t.all_activations,
        t.all_devices(DeviceChannel.EVENT),
        t.shared("engines", t.all_devices(DeviceChannel.EVENT)),
        t.shared("x", t.command("bwc-a")),
    )
    async with (
        _client(secure_mosquitto, snoop.mqtt, t.command("bwc-a"), *forbidden) as dev,
        _client(secure_mosquitto, engine) as eng,
    ):
        assert dev.refused() == list(forbidden)
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
    json_feed = f"{t.prefix}/json/activations/#"
    wanted = ("#", t.all_devices(DeviceChannel.TELEMETRY), t.all_activations, json_feed)
    async with (
        _client(secure_mosquitto, plain, *wanted) as reader,
        _client(secure_mosquitto, granted, *wanted) as tracker,
        _client(secure_mosquitto, cam.mqtt) as dev,
        _client(secure_mosquitto, engine) as eng,
    ):
        assert reader.refused() == ["#", t.all_devices(DeviceChannel.TELEMETRY)]
        assert tracker.refused() == ["#"]
        # Narrower filters within a grant are fine; the share groups are not.
        assert await reader.subscribe(t.activations("collision"))
        assert not await reader.subscribe(t.shared("engines", t.all_activations))
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


async def test_integrator_reads_alerts_and_operator_reads_dead_letters_too(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    """The roles as DISPATCH.md and SECURITY.md give them, enforced at subscribe time:
    an integrator gets alerts but is refused the dead letters; an operator gets both;
    a device is refused either."""
    t = Topics(agency)
    cam = secure_mosquitto.add_device("bwc-1")
    acme = secure_mosquitto.add_integrator("acme")
    ops = secure_mosquitto.add_operator("nightshift")
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    wanted = (t.all_alerts, t.all_deadletters, t.all_activations)
    async with (
        _client(secure_mosquitto, acme, *wanted) as integrator,
        _client(secure_mosquitto, ops, *wanted, t.all_devices(DeviceChannel.TELEMETRY)) as op,
        _client(secure_mosquitto, cam.mqtt, *wanted) as dev,
        _client(secure_mosquitto, engine) as eng,
    ):
        assert integrator.refused() == [t.all_deadletters]
        assert op.refused() == [t.all_devices(DeviceChannel.TELEMETRY)]
        assert dev.refused() == list(wanted)
        assert await op.subscribe(t.deadletter("bad_signature"))  # narrower: fine
        await eng.client.publish(t.alerts("no_ack"), b"alert", qos=1)
        await eng.client.publish(t.deadletter("bad_payload"), b"dead", qos=1)
        await eng.client.publish(t.activations("taser_draw"), MARKER, qos=1)
        await integrator.wait_for(t.activations("taser_draw"))
        await op.wait_for(t.activations("taser_draw"))
        assert await dev.subscribe(t.command("bwc-1"))
        await eng.client.publish(t.command("bwc-1"), MARKER, qos=1)
        await dev.wait_for(t.command("bwc-1"))
    assert integrator.got == [(t.alerts("no_ack"), b"alert"), (t.activations("taser_draw"), MARKER)]
    assert op.got[:2] == [(t.alerts("no_ack"), b"alert"), (t.deadletter("bad_payload"), b"dead")]
    assert dev.topics() == []


async def test_operator_is_bound_to_its_own_client_id(secure_mosquitto: SecureBroker) -> None:
    ops = secure_mosquitto.add_operator("ops")
    for stolen in ("int-ops", "bwc-1", "op-other"):
        with pytest.raises(aiomqtt.MqttCodeError):
            async with _client(secure_mosquitto, ops, client_id=stolen):
                pass
    async with _client(secure_mosquitto, ops, client_id="op-ops"):
        pass


async def test_integrator_is_bound_to_its_own_client_id(secure_mosquitto: SecureBroker) -> None:
    acme = secure_mosquitto.add_integrator("acme")
    for stolen in ("int-other", "bwc-1", f"{secure_mosquitto.policy.agency}-engine-1-ctl"):
        with pytest.raises(aiomqtt.MqttCodeError):
            async with _client(secure_mosquitto, acme, client_id=stolen):
                pass
    async with _client(secure_mosquitto, acme, client_id="int-acme"):
        pass


async def test_integrator_cannot_publish_events_or_commands(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    cam = secure_mosquitto.add_device("bwc-1")
    rogue = secure_mosquitto.add_integrator("rogue", telemetry=True)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    async with (
        _client(secure_mosquitto, engine, *_device_filters(t)) as eng,
        _client(secure_mosquitto, cam.mqtt, t.command("bwc-1")) as dev,
        _client(secure_mosquitto, rogue) as bad,
    ):
        # Its own "device" slot too: no account gets a device's rights by its name.
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


def _device_filters(t: Topics) -> tuple[str, ...]:
    """Every device topic the engine may read, one filter per channel."""
    return tuple(t.all_devices(DeviceChannel(c)) for c in ("telemetry", "event", "presence", "ack"))


async def test_service_accounts_have_no_device_slot(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    cam = secure_mosquitto.add_device("bwc-1")
    async with (
        _client(secure_mosquitto, engine, *_device_filters(t)) as eng,
        _client(secure_mosquitto, cam.mqtt) as dev,
    ):
        for name in (SERVICE_MONITOR, SERVICE_DISPATCH, SERVICE_ENGINE):
            async with _client(secure_mosquitto, _svc(secure_mosquitto, name)) as svc:
                for channel in ("event", "telemetry", "presence", "ack"):
                    await svc.client.publish(t.device(name, DeviceChannel(channel)), b"x", qos=1)
        await dev.client.publish(t.event("bwc-1"), MARKER, qos=1)
        await eng.wait_for(t.event("bwc-1"))
    assert eng.topics() == []


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
    reads = (
        t.all_activations,
        t.all_devices(DeviceChannel.ACK),
        t.all_alerts,
        f"{t.prefix}/deadletter/#",
    )
    async with (
        _client(
            secure_mosquitto, monitor, *reads, "#", t.all_devices(DeviceChannel.COMMAND)
        ) as mon,
        _client(secure_mosquitto, engine) as eng,
        _client(secure_mosquitto, cam.mqtt) as dev,
    ):
        assert mon.refused() == ["#", t.all_devices(DeviceChannel.COMMAND)]
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


# ---------------------------------------------------------------------- one stolen account


async def test_a_stolen_camera_cannot_join_the_engines_share_group(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    """With ``acl_file`` the broker granted this SUBSCRIBE, picked the thief as a group
    member and dropped the events it was picked for: 6 of 12 TASER draws were lost with
    one thief, 10 of 12 with five. Now the SUBSCRIBE itself is refused, so every event
    reaches an engine."""
    t = Topics(agency)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    cew = secure_mosquitto.add_device("cew-1", DeviceKind.CEW)
    thieves = [secure_mosquitto.add_device(f"bwc-{n}") for n in range(5)]
    reader = secure_mosquitto.add_integrator("reader")
    group = t.shared("engines", t.all_devices(DeviceChannel.EVENT))
    async with contextlib.AsyncExitStack() as stack:
        replica = await stack.enter_async_context(_client(secure_mosquitto, engine, group))
        joined = [
            await stack.enter_async_context(_client(secure_mosquitto, creds, group))
            for creds in (*(c.mqtt for c in thieves), reader)
        ]
        assert all(j.refused() == [group] for j in joined)
        dev = await stack.enter_async_context(_client(secure_mosquitto, cew.mqtt))
        for n in range(12):
            await dev.client.publish(t.event("cew-1"), f"draw-{n}".encode(), qos=1)
        await dev.client.publish(t.event("cew-1"), MARKER, qos=1)
        await replica.wait_for(t.event("cew-1"))
    assert len(replica.topics()) == 12


async def test_a_stolen_camera_cannot_take_over_the_engine_or_another_camera(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    """Client ids are bound to accounts: connecting as the engine's link, or as another
    camera, is refused, and neither loses its connection or its queued commands."""
    t = Topics(agency)
    thief = secure_mosquitto.add_device("bwc-thief")
    victim = secure_mosquitto.add_device("bwc-victim")
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    engine_id = f"{agency}-engine-1-ctl"
    async with _client(secure_mosquitto, engine, client_id=engine_id) as eng:
        for stolen in (engine_id, secure_mosquitto.client_id("bwc-victim"), "anything"):
            for _ in range(3):
                with pytest.raises(aiomqtt.MqttCodeError):
                    async with _client(secure_mosquitto, thief.mqtt, client_id=stolen):
                        pass
        assert not eng.lost.is_set()
        # The victim's persistent session holds a command while it is away ...
        victim_id = secure_mosquitto.client_id("bwc-victim")
        async with _resumed(secure_mosquitto, victim.mqtt) as first:
            await first.subscribe(t.command("bwc-victim"), qos=1)
        await eng.client.publish(t.command("bwc-victim"), b"start", qos=1)
        # ... which the thief cannot resume ...
        with pytest.raises(aiomqtt.MqttCodeError):
            async with _client(secure_mosquitto, thief.mqtt, client_id=victim_id):
                pass
        # ... so the victim still finds it there.
        async with _resumed(secure_mosquitto, victim.mqtt) as back:
            async with asyncio.timeout(TIMEOUT_S):
                async for message in back.messages:
                    assert message.payload == b"start"
                    break
        assert not eng.lost.is_set()


def _resumed(secure: SecureBroker, creds: Credentials) -> aiomqtt.Client:
    """A device's connection with its persistent session (kept 300 s), resumed."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 300
    return aiomqtt.Client(
        secure.host,
        secure.port,
        identifier=secure.client_id(creds.username),
        username=creds.username,
        password=creds.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
    )


async def test_a_disabled_device_is_disconnected_live_and_enabled_again(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    cam = secure_mosquitto.add_device("bwc-1")
    link = await _link(secure_mosquitto, cam.mqtt, agency)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run(), name="bwc-1")
        await link.wait_connected(TIMEOUT_S)
        with secure_mosquitto.registry() as reg:
            assert reg.disable("bwc-1", "quarantined: flooding")
        secure_mosquitto.apply()
        await eventually(lambda: not link.connected, TIMEOUT_S)
        await eventually(lambda: "Not authorized" in link.stats.last_error, TIMEOUT_S)
        with secure_mosquitto.registry() as reg:
            assert reg.get("bwc-1").disabled == "quarantined: flooding"
            assert reg.enable("bwc-1")
        secure_mosquitto.apply()
        await link.wait_connected(TIMEOUT_S)
        task.cancel()


async def test_quarantine_disables_the_account_live(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    """What ``actimesh up`` hands the engine: the registry marks the device, the broker
    drops it at once and refuses it until ``actimesh devices enable``."""
    cam = secure_mosquitto.add_device("bwc-1")
    quarantine = RegistryQuarantine(secure_mosquitto.data_dir, secure_mosquitto.broker)
    link = await _link(secure_mosquitto, cam.mqtt, agency)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run(), name="bwc-1")
        await link.wait_connected(TIMEOUT_S)
        assert await quarantine.quarantine("bwc-1", "quarantined: test")
        await eventually(lambda: not link.connected, TIMEOUT_S)
        assert not await quarantine.quarantine("bwc-1", "again")  # once is enough
        task.cancel()
    with secure_mosquitto.registry() as reg:
        assert reg.get("bwc-1").disabled == "quarantined: test"
    await _refused(secure_mosquitto, cam.mqtt)


async def test_a_camera_may_not_publish_events_when_no_rule_lets_cameras_raise_them(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    """A stolen camera's flood of TASER draws is dropped by the broker: the engine never
    has to read, let alone refuse, one of them."""
    t = Topics(agency)
    cam = secure_mosquitto.add_device("bwc-1")
    cew = secure_mosquitto.add_device("cew-1", DeviceKind.CEW)
    engine = _svc(secure_mosquitto, SERVICE_ENGINE)
    with secure_mosquitto.registry() as reg:
        policy = replace(secure_mosquitto.policy, event_kinds=frozenset({"cew", "gateway"}))
        reg.write_broker_files(secure_mosquitto.broker.config.data_dir, policy)
    secure_mosquitto.broker.reload()
    async with (
        _client(secure_mosquitto, engine, t.all_devices(DeviceChannel.EVENT)) as eng,
        _client(secure_mosquitto, cam.mqtt) as dev,
        _client(secure_mosquitto, cew.mqtt) as taser,
    ):
        for n in range(50):
            await dev.client.publish(t.event("bwc-1"), f"flood-{n}".encode(), qos=1)
        await dev.client.publish(t.telemetry("bwc-1"), b"fix", qos=1)  # still allowed
        await taser.client.publish(t.event("cew-1"), MARKER, qos=1)
        await eng.wait_for(t.event("cew-1"))
    assert eng.topics() == []


async def test_two_admins_applying_changes_at_once_read_only_their_own_answers(
    secure_mosquitto: SecureBroker,
) -> None:
    """The plugin answers every admin on one topic: a quarantine and an `actimesh
    devices` command syncing at the same moment must each read their own answers."""
    for n in range(20):
        secure_mosquitto.add_device(f"bwc-{n}")
    config = secure_mosquitto.broker.config
    login = AdminLogin.read(config.admin_path)
    desired = Access.from_json(config.access_path.read_text())
    host, port = secure_mosquitto.host, secure_mosquitto.port
    counts = await asyncio.gather(
        *(asyncio.to_thread(sync_access, host, port, login, desired) for _ in range(4))
    )
    assert counts == [0, 0, 0, 0]  # each saw the broker already in line, and said so


def test_an_admin_session_ignores_answers_meant_for_another(
    secure_mosquitto: SecureBroker,
) -> None:
    config = secure_mosquitto.broker.config
    login = AdminLogin.read(config.admin_path)
    control = _Control(secure_mosquitto.host, secure_mosquitto.port, login, 5.0)
    try:
        other = {"command": "listClients", "correlationData": "0000-0", "data": {}}
        mine = {"command": "listClients", "correlationData": f"{control._tag}-0", "data": {}}
        message = SimpleNamespace(payload=json.dumps({"responses": [other, mine]}).encode())
        control._on_message(None, None, message)
        assert control._responses == [mine]
    finally:
        control.close()
