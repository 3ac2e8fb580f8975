"""The lean NATS telemetry link against real nats-server clusters (and, for what a real
server never sends, a fake one): batches, queue groups, reconnection, TLS, refusals,
the bounded backlog."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from actimesh.broker.client import Subscription, TlsSettings
from actimesh.broker.ingest import Publish
from actimesh.broker.messages import DeviceKind
from actimesh.broker.nats import NatsCluster, NatsStream, NatsTransport
from actimesh.broker.nats.cluster import NatsTls
from actimesh.errors import BrokerError
from actimesh.security.certs import init_ca, issue_node
from tests.broker.nats_secured import ENGINE, TESTER, access_for, password_of
from tests.waiting import eventually

pytestmark = pytest.mark.integration

AGENCY = "ag"
TELEMETRY = f"am/v1/{AGENCY}/dev/+/telemetry"


def telemetry_subject(device: str) -> str:
    return f"am.v1.{AGENCY}.dev.{device.replace('.', '//')}.telemetry"


def transport(urls: Sequence[str], *, tls: TlsSettings | None = None) -> NatsTransport:
    return NatsTransport(urls, user=ENGINE, password=password_of(ENGINE), tls=tls, timeout_s=5)


async def publisher(url: str, *, tls: NatsTls | None = None) -> NatsClient:
    return await nats.connect(
        url,
        user=TESTER,
        password=password_of(TESTER),
        tls=None if tls is None else TlsSettings(ca_file=tls.ca).context(),
        allow_reconnect=False,
        connect_timeout=5,
    )


class Taker:
    """A stream handler that keeps what it gets, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[list[Publish]] = []

    async def __call__(self, batch: Sequence[Publish]) -> None:
        self.batches.append(list(batch))

    @property
    def got(self) -> list[Publish]:
        return [p for batch in self.batches for p in batch]


@contextlib.asynccontextmanager
async def running(*links: NatsStream) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(link.run(), name=link.name) for link in links]
        try:
            for link in links:
                await link.wait_connected(10)
            yield
        finally:
            for task in tasks:
                task.cancel()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    access = access_for(AGENCY, [("cam-1", DeviceKind.BODY_CAM)], tester=True)
    with NatsCluster(tmp_path, size=3, access=access) as running_cluster:
        yield running_cluster


async def test_telemetry_arrives_in_order_in_bounded_batches(cluster: NatsCluster) -> None:
    taker = Taker()
    link = NatsStream(
        transport([cluster.nodes[0].nats_url]),
        "t-batches",
        [Subscription(TELEMETRY, 0)],
        taker,
        max_queued=10_000,
        batch_size=50,
    )
    pub = await publisher(cluster.nodes[0].nats_url)
    try:
        async with running(link):
            for i in range(2_000):
                await pub.publish(telemetry_subject(f"d{i % 7}"), b"%d" % i)
            # Headers (an HMSG) and a device id with a dot (the listener's // rule).
            await pub.publish(telemetry_subject("cam.7"), b"last", headers={"Nmqtt-Pub": "0"})
            await pub.flush()
            await eventually(lambda: len(taker.got) == 2_001)
    finally:
        await pub.close()
    got = taker.got
    assert [int(p) for _, p in got[:-1]] == list(range(2_000))
    assert got[3][0] == f"am/v1/{AGENCY}/dev/d3/telemetry".encode()
    assert got[-1] == (f"am/v1/{AGENCY}/dev/cam.7/telemetry".encode(), b"last")
    assert max(len(b) for b in taker.batches) <= 50
    assert link.stats.batches == len(taker.batches) >= 2_001 // 50
    assert link.stats.received == 2_001
    assert link.stats.dropped_incoming == 0
    assert link.stats.protocol_errors == 0
    assert not link.connected


async def test_a_queue_group_shares_the_messages(cluster: NatsCluster) -> None:
    shared = [Subscription(f"$share/relay/{TELEMETRY}", 0)]
    takers = [Taker(), Taker()]
    links = [
        NatsStream(
            transport([cluster.nodes[i].nats_url]), f"t-q{i}", shared, takers[i], max_queued=1000
        )
        for i in range(2)
    ]
    assert links[0].queue_groups == {telemetry_subject("*"): "relay"}
    pub = await publisher(cluster.nodes[2].nats_url)
    try:
        async with running(*links):
            # Interest crosses the routes after each SUB: probe until both links have
            # had one, so the publisher's node knows both members of the group.
            probes = 0

            async def both_members_known() -> bool:
                nonlocal probes
                await pub.publish(telemetry_subject("probe"), b"probe")
                await pub.flush()
                probes += 1
                return all(t.got for t in takers)

            await eventually(both_members_known, every=0.05)
            for i in range(400):
                await pub.publish(telemetry_subject("d1"), b"%d" % i)
            await pub.flush()
            await eventually(lambda: sum(len(t.got) for t in takers) == 400 + probes)
    finally:
        await pub.close()
    shares = [[int(p) for _, p in t.got if p != b"probe"] for t in takers]
    assert sorted(shares[0] + shares[1]) == list(range(400))  # each once, none twice
    assert all(shares), [len(share) for share in shares]  # both had a share


async def test_it_reconnects_to_another_node_when_its_node_is_killed(
    cluster: NatsCluster,
) -> None:
    taker = Taker()
    urls = [node.nats_url for node in cluster.nodes]
    link = NatsStream(
        transport(urls), "t-reconnect", [Subscription(TELEMETRY, 0)], taker, max_queued=100
    )
    pub = await publisher(cluster.nodes[2].nats_url)
    try:
        async with running(link):
            assert link.stats.connects == 1
            cluster.kill(0)
            await eventually(lambda: link.stats.connects == 2 and link.connected)
            assert link.stats.disconnects == 1

            async def delivered() -> bool:  # subscribed again, on another node
                await pub.publish(telemetry_subject("d1"), b"after")
                await pub.flush()
                return any(p == b"after" for _, p in taker.got)

            await eventually(delivered, every=0.1)
    finally:
        await pub.close()


async def test_a_permission_violation_is_reported_and_the_rest_is_served(
    cluster: NatsCluster,
) -> None:
    taker = Taker()
    forbidden = f"am/v1/{AGENCY}/dev/cam-1/cmd"  # a device's commands: not the engine's
    link = NatsStream(
        transport([cluster.nodes[0].nats_url]),
        "t-denied",
        [Subscription(forbidden, 0), Subscription(TELEMETRY, 0)],
        taker,
        max_queued=100,
    )
    pub = await publisher(cluster.nodes[0].nats_url)
    try:
        async with running(link):
            await eventually(lambda: "Permissions Violation" in link.stats.last_error)
            assert "cam-1.cmd" in link.stats.last_error
            await pub.publish(telemetry_subject("d1"), b"allowed")
            await pub.flush()
            await eventually(lambda: taker.got)
            assert link.connected
    finally:
        await pub.close()
    assert taker.got == [(f"am/v1/{AGENCY}/dev/d1/telemetry".encode(), b"allowed")]


async def test_a_refused_login_says_why(cluster: NatsCluster) -> None:
    wrong = NatsTransport([cluster.nodes[0].nats_url], user=ENGINE, password="wrong", timeout_s=5)
    link = NatsStream(wrong, "t-login", [Subscription(TELEMETRY, 0)], Taker(), max_queued=1)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run())
        await eventually(lambda: "Authorization Violation" in link.stats.last_error)
        with pytest.raises(BrokerError, match="Authorization Violation"):
            await link.wait_connected(0.1)
        task.cancel()


async def test_a_full_backlog_drops_the_oldest_and_counts(cluster: NatsCluster) -> None:
    release = asyncio.Event()
    got: list[bytes] = []

    async def slow(batch: Sequence[Publish]) -> None:
        got.extend(p for _, p in batch)
        await release.wait()

    link = NatsStream(
        transport([cluster.nodes[0].nats_url]),
        "t-full",
        [Subscription(TELEMETRY, 0)],
        slow,
        max_queued=10,
    )
    pub = await publisher(cluster.nodes[0].nats_url)
    try:
        async with running(link):
            await pub.publish(telemetry_subject("d1"), b"first")
            await pub.flush()
            await eventually(lambda: got == [b"first"])  # the handler is now stuck
            for i in range(100):
                await pub.publish(telemetry_subject("d1"), b"%d" % i)
            await pub.flush()
            await eventually(lambda: link.stats.received == 101)
            assert link.backlog == 10
            assert link.stats.dropped_incoming == 90
            release.set()
            await eventually(lambda: len(got) == 11)
    finally:
        await pub.close()
    assert got[1:] == [b"%d" % i for i in range(90, 100)]  # the newest kept


# ---------------------------------------------------------------- TLS


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[NatsCluster, NatsTls]]:
    certs = tmp_path / "certs"
    init_ca(certs)
    node = issue_node(certs, "nats")
    tls = NatsTls(certs / "ca.pem", node.cert, node.key)
    access = access_for(AGENCY, [], tester=True)
    with NatsCluster(tmp_path / "nats", size=1, access=access, tls=tls) as running_cluster:
        yield running_cluster, tls


async def test_telemetry_arrives_over_tls_and_never_in_clear(
    tls_cluster: tuple[NatsCluster, NatsTls],
) -> None:
    cluster, tls = tls_cluster
    url = cluster.nodes[0].nats_url
    taker = Taker()
    link = NatsStream(
        transport([url], tls=TlsSettings(ca_file=tls.ca)),
        "t-tls",
        [Subscription(TELEMETRY, 0)],
        taker,
        max_queued=1000,
    )
    pub = await publisher(url, tls=tls)
    try:
        async with running(link):
            for i in range(300):
                await pub.publish(telemetry_subject("d1"), b"%d" % i)
            await pub.flush()
            await eventually(lambda: len(taker.got) == 300)
    finally:
        await pub.close()
    assert [int(p) for _, p in taker.got] == list(range(300))
    clear = NatsStream(
        transport([url]), "t-clear", [Subscription(TELEMETRY, 0)], taker, max_queued=1
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(clear.run())
        await eventually(lambda: "requires TLS" in clear.stats.last_error)
        assert not clear.connected
        task.cancel()


# ---------------------------------------------------------------- a fake server


@contextlib.asynccontextmanager
async def fake_server(after_pong: bytes) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A server that logs anyone in, answers the first PING, then sends ``after_pong``."""
    said: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"fake","max_payload":1024}\r\n')
        try:
            async with asyncio.timeout(10):
                while (line := await reader.readline()) and line != b"PING\r\n":
                    said.append(line)
                writer.write(b"PONG\r\n" + after_pong)
                await writer.drain()
                await reader.read()  # until the client goes
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], said
    finally:
        server.close()
        await server.wait_closed()


async def test_garbage_from_the_server_drops_the_connection_and_is_counted() -> None:
    taker = Taker()
    async with fake_server(b"MSG a.b 1 2\r\nxx\r\nMSG a.b 1 zz\r\n") as (port, said):
        link = NatsStream(
            NatsTransport([f"nats://127.0.0.1:{port}"], user="u", password="p", timeout_s=5),
            "t-garbage",
            [Subscription(f"$share/g/{TELEMETRY}", 0)],
            taker,
            max_queued=10,
        )
        async with running(link):
            await eventually(lambda: link.stats.protocol_errors >= 2)  # and again
            assert link.stats.connects >= 2
            assert "not a number" in link.stats.last_error
    options = json.loads(said[0].removeprefix(b"CONNECT "))
    assert (options["user"], options["pass"], options["headers"]) == ("u", "p", True)
    assert said[1] == f"SUB {telemetry_subject('*')} g 1\r\n".encode()
    assert taker.got[0] == (b"a/b", b"xx")  # what came before the garbage was kept
