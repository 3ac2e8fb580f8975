"""The NATS transport's pure parts: the MQTT topic <-> NATS subject rule of the server's
MQTT listener, JetStream names, and the one adapter that reaches into nats-py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.request import urlopen

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker.client import Subscription
from actimesh.broker.intake import Delivery
from actimesh.broker.messages import DeviceKind
from actimesh.broker.nats import (
    NatsCluster,
    NatsTransport,
    NodeHost,
    NodePorts,
    subject_to_topic,
    topic_to_subject,
)
from actimesh.broker.nats.cluster import DEFAULT_PING_S, render_node_config
from actimesh.broker.nats.subjects import jetstream_name
from actimesh.broker.topics import IDENTIFIER_PATTERN, DeviceChannel, Topics
from actimesh.broker.transport import Inbound, Outbound
from tests.broker.nats_secured import ENGINE, TESTER, access_for, engine_transport, password_of
from tests.waiting import eventually


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("am/v1/ag/dev/cam1/cmd", "am.v1.ag.dev.cam1.cmd"),
        ("am/v1/ag.west/dev/cam.7/cmd", "am.v1.ag//west.dev.cam//7.cmd"),
        ("am/v1/ag/dev/+/event", "am.v1.ag.dev.*.event"),
        ("am/v1/ag/activations/#", "am.v1.ag.activations.>"),
        ("/lead", "/.lead"),
        ("a//b", "a./.b"),
        ("trail/", "trail./"),
        ("a..b/c", "a////b.c"),
    ],
)
def test_a_topic_maps_to_the_subject_the_mqtt_listener_uses(topic: str, subject: str) -> None:
    assert topic_to_subject(topic) == subject
    if "+" not in topic and "#" not in topic:
        assert subject_to_topic(subject) == topic


def test_whitespace_has_no_subject() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        topic_to_subject("am/v1/ag/dev/cam 1/cmd")


@given(
    st.lists(st.from_regex(IDENTIFIER_PATTERN, fullmatch=True), min_size=2, max_size=2),
    st.sampled_from(list(DeviceChannel)),
)
def test_every_device_topic_maps_there_and_back(ids: list[str], channel: DeviceChannel) -> None:
    agency, device = ids
    topic = Topics(agency).device(device, channel)
    subject = topic_to_subject(topic)
    assert " " not in subject
    assert subject.count(".") == topic.count("/")  # one level, one token
    assert subject_to_topic(subject) == topic


def test_jetstream_names_are_valid_and_distinct() -> None:
    a = jetstream_name("am", "am.v1.ag.dev.*.event")
    b = jetstream_name("am", "am.v1.ag_dev.*.event")
    assert a != b
    for name in (a, b):
        assert not set(name) & set(".*>/\\ ")


def test_the_node_config_names_the_other_nodes_and_the_replicas(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path, size=3)
    text = render_node_config(
        "n1", cluster.nodes[0].ports, tmp_path, [n.ports for n in cluster.nodes[1:]]
    )
    for node in cluster.nodes[1:]:
        assert node.ports.route_url in text
    assert "stream_replicas: 3" in text
    assert f"127.0.0.1:{cluster.nodes[0].mqtt_port}" in text
    assert f'ping_interval: "{DEFAULT_PING_S}s"' in text  # partitions noticed in 20 to 30 s


def test_a_node_on_a_host_of_its_own_is_routed_there_and_started_there(tmp_path: Path) -> None:
    elsewhere = NodeHost("10.213.0.2", ("ip", "netns", "exec", "amcut-x"))
    cluster = NatsCluster(
        tmp_path, size=3, host="127.0.0.1", hosts=[None, elsewhere], ping_interval_s=5
    )
    placed = cluster.nodes[1]
    assert placed.ports == NodePorts("10.213.0.2", 4222, 6222, 1883, 8222)
    assert placed.argv_prefix == elsewhere.argv
    assert [n.argv_prefix for n in (cluster.nodes[0], cluster.nodes[2])] == [(), ()]
    assert cluster.nodes[2].ports.host == "127.0.0.1"
    for node in (cluster.nodes[0], cluster.nodes[2]):
        text = node.config_path.read_text()
        assert "@10.213.0.2:6222" in text
        assert 'ping_interval: "5s"' in text
        assert "ping_max: 2" in text
    assert 'listen: "10.213.0.2:4222"' in placed.config_path.read_text()


@pytest.mark.integration
async def test_publish_nowait_writes_in_this_turn_and_is_confirmed(tmp_path: Path) -> None:
    # The adapter into nats-py's buffer: after flush() the bytes are on the socket
    # before the loop turns, and the server's answer comes back as the confirmation.
    async with NatsCluster(tmp_path, size=1, access=access_for("ag", [], tester=True)) as cluster:
        transport = engine_transport(cluster)
        seen: list[str] = []
        listener = engine_transport(cluster, user=TESTER).stream(
            "t-listen", [], lambda b: _collect(seen, b), max_queued=10
        )
        listener.subjects.append(topic_to_subject("am/v1/ag/dev/cam.1/cmd"))
        out = transport.outbound("t-out")
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(out.run()), tg.create_task(listener.run())]
            await out.wait_connected(10)
            await listener.wait_connected(10)
            inflight = out.publish_nowait("am/v1/ag/dev/cam.1/cmd", b"x", qos=0)
            out.flush()
            await inflight.confirmed()
            await eventually(lambda: seen == ["am/v1/ag/dev/cam.1/cmd"])
            # QoS 1: stored for MQTT QoS 1 subscriptions (none here), and confirmed.
            inflight = out.publish_nowait("am/v1/ag/dev/cam.1/cmd", b"y")
            out.flush()
            await inflight.confirmed()
            for task in tasks:
                task.cancel()


async def _collect(seen: list[str], batch: object) -> None:
    assert isinstance(batch, list)
    seen.extend(topic.decode() for topic, _ in batch)


@pytest.mark.integration
async def test_an_event_one_replica_took_and_never_acknowledged_goes_to_another(
    tmp_path: Path,
) -> None:
    access = access_for("ag", [("cew.1", DeviceKind.CEW)], tester=True)
    async with NatsCluster(tmp_path, size=1, access=access) as cluster:
        transport = engine_transport(cluster, ack_wait_s=1.0)
        events = [Subscription("$share/engines/am/v1/ag/dev/+/event")]
        held: list[Delivery] = []
        taken: list[bytes] = []

        async def hold(batch: Sequence[Delivery]) -> None:
            held.extend(batch)  # and dies before acknowledging

        async def take(batch: Sequence[Delivery]) -> None:
            for delivery in batch:
                taken.append(delivery.payload)
                assert delivery.ack()

        def refuse_floods(topic: bytes, payload: bytes) -> str | None:
            return None if payload == b"flood" else topic.decode()

        first = transport.control("ag-e1-ctl", events, hold, admit=refuse_floods)
        second = transport.control("ag-e2-ctl", events, take, admit=refuse_floods)
        out = engine_transport(cluster, user=TESTER).outbound("ag-device")
        async with asyncio.TaskGroup() as tg:
            sending = tg.create_task(out.run())
            dying = tg.create_task(first.run())
            await out.wait_connected(10)
            await first.wait_connected(10)
            for payload in (b"flood", b"draw"):
                await out.publish("am/v1/ag/dev/cew.1/event", payload)
            await eventually(lambda: [d.payload for d in held] == [b"draw"])
            assert held[0].topic == "am/v1/ag/dev/cew.1/event"
            assert first.stats.refused == 1  # acknowledged at once: never seen again
            dying.cancel()

            living = tg.create_task(second.run())
            await eventually(lambda: taken == [b"draw"], timeout=15)
            for task in (sending, living):
                task.cancel()


@pytest.mark.integration
async def test_every_link_of_an_engine_starts_on_the_first_node_it_is_given(
    tmp_path: Path,
) -> None:
    """Its trigger, command and telemetry links on one node: a cut that silences its
    telemetry takes its triggers too (to the other engine), not only the one."""
    access = access_for("ag", [("cew.1", DeviceKind.CEW)], tester=True)
    async with NatsCluster(tmp_path, size=3, access=access) as cluster:
        urls = [cluster.nodes[i].nats_url for i in (1, 0, 2)]
        transport = NatsTransport(urls, user=ENGINE, password=password_of(ENGINE))
        events = [Subscription("$share/engines/am/v1/ag/dev/+/event")]

        async def ignore(_batch: Sequence[object]) -> None:
            return None

        links: list[Inbound | Outbound] = [
            transport.control("t-ctl", events, ignore, admit=lambda t, _p: t.decode()),
            transport.outbound("t-cmd"),
            transport.stream(
                "t-tm", [Subscription("am/v1/ag/dev/+/telemetry")], ignore, max_queued=10
            ),
        ]
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(link.run(), name=link.name) for link in links]
            for link in links:
                await link.wait_connected(10)
            names = [
                await asyncio.to_thread(_connection_names, node.monitor_url)
                for node in cluster.nodes
            ]
            for task in tasks:
                task.cancel()
    assert {"t-ctl", "t-cmd", "t-tm"} <= names[1]
    assert not {"t-ctl", "t-cmd", "t-tm"} & (names[0] | names[2])


def _connection_names(monitor: str) -> set[str]:
    with urlopen(f"{monitor}/connz", timeout=5) as answer:
        connz = json.load(answer)
    return {c.get("name", "") for c in connz.get("connections", [])}
