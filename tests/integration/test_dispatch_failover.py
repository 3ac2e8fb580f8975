"""The dispatch on a three-node NATS cluster, handed every node's MQTT listener as
``cluster up`` hands them: the node its feed reads from is killed outright (SIGKILL).
An activation the engine publishes after that reaches the dispatch's live map through
another node; one the engine wrote in the ledger but the bus never carried is caught up
from the ledger when the feed reconnects; health names the node it reads from now."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import websockets

from actimesh.broker.codec import encode
from actimesh.broker.failover import Listener
from actimesh.broker.messages import (
    Activation,
)
from actimesh.broker.nats import NatsCluster, NatsTransport
from actimesh.broker.topics import Topics
from actimesh.broker.transport import MqttTransport, Outbound
from actimesh.dispatch.accounts import Role
from actimesh.errors import BrokerError
from actimesh.ledger import SqliteLedger
from tests.broker.nats_secured import DISPATCH, ENGINE, access_for, password_of
from tests.dispatch.conftest import (
    FAST,
    Dispatch,
    api,
    bearer,
    in_the_ledger_only,
    taser_record,
)
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(150)]

AGENCY = "failover"
TOPICS = Topics(AGENCY)
HOST = "127.0.0.1"


async def _publish_as_the_engine(out: Outbound, record: Activation) -> None:
    """Publish ``record`` as the engine does (QoS 1, stored where the MQTT listener keeps
    its QoS 1 messages), again until the cluster accepts it (BrokerError, just after a
    node's loss)."""
    async with asyncio.timeout(60):
        while True:
            try:
                await out.publish(TOPICS.activations(record.type), encode(record), qos=1)
            except BrokerError:
                await asyncio.sleep(0.2)
            else:
                return


async def _shown_after_publishing(out: Outbound, service: Dispatch, record: Activation) -> None:
    """Publish ``record`` once, as the engine would, and wait until the dispatch shows
    it. Just after a node's loss the store may have no leader yet and answer "no
    responders": the link stores it again until a leader answers (docs/SCALING.md), so
    one publish is enough."""
    await _publish_as_the_engine(out, record)
    assert await service.wait_for_activation(record.aid, 60) is not None


async def test_a_killed_node_does_not_blind_the_dispatch(tmp_path: Path) -> None:
    access = access_for(AGENCY, [], dispatch_device="dispatch-console-1")
    ledger = tmp_path / "ledger.sqlite3"
    async with NatsCluster(tmp_path / "nats", size=3, access=access) as cluster:
        ports = [node.mqtt_port for node in cluster.nodes]
        async with SqliteLedger(ledger):
            pass  # the engine's ledger, which the dispatch reads and audits into
        service = Dispatch(
            topics=TOPICS,
            transport=MqttTransport(
                HOST,
                ports[0],
                username=DISPATCH,
                password=password_of(DISPATCH),
                protocol="3.1.1",
                fallbacks=[Listener(HOST, port) for port in ports[1:]],
            ),
            # The ledger is read for the map only when the feed reconnects, here:
            # the periodic catch-up would not come round within the test.
            settings=replace(FAST, webhook_reconcile_s=3600.0),
            data_dir=tmp_path / "dispatch",
            ledger_location=ledger,
            max_fix_age_s=10.0,
        )
        engine = NatsTransport(cluster.nats_urls, user=ENGINE, password=password_of(ENGINE))
        out = engine.outbound("failover-engine-1-out")
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(service.run(), name="dispatch"),
                tg.create_task(out.run(), name="engine-out"),
            ]
            try:
                async with asyncio.timeout(30):
                    await service.ready.wait()
                await out.wait_connected(30)
                issued = await service.accounts.create_token(
                    "test-admin", Role.ADMIN, created_by="tests"
                )
                service.tokens["admin"] = issued.secret

                before = taser_record("before")
                await _publish_as_the_engine(out, before)
                assert await service.wait_for_activation(before.aid, 30) is not None
                # Decided a while ago, in the ledger, lost on the bus.
                lost = taser_record("lost", time.time() - 10.0)
                await in_the_ledger_only(ledger, lost, AGENCY)
                assert lost.aid not in service.state.activations
                reading = service.feed.listener
                victim = [str(Listener(HOST, port)) for port in ports].index(reading)
                connects = service.feed.ctl.stats.connects

                cluster.kill(victim)
                after = taser_record("after")
                await _shown_after_publishing(out, service, after)
                shown = service.state.activations[after.aid].to_json()
                assert [c["id"] for c in shown["cameras"]] == ["bwc-1"]
                await eventually(lambda: service.feed.connected, timeout=30)
                assert service.feed.listener != reading
                assert service.feed.ctl.stats.connects > connects
                await eventually(lambda: lost.aid in service.state.activations, timeout=10)
                assert service.state.stats.activations_caught_up == 1

                # What a dispatcher's map gets on opening: all three.
                async with websockets.connect(
                    service.ws_url, open_timeout=10, additional_headers=bearer(service)
                ) as ws:
                    async with asyncio.timeout(10):
                        snapshot = json.loads(await ws.recv())
                assert snapshot["type"] == "snapshot"
                shown_aids = {a["aid"] for a in snapshot["activations"]}
                assert {before.aid, lost.aid, after.aid} <= shown_aids
                async with api(service) as client:
                    health = (await client.get("/api/v1/health")).json()
                assert health["mqtt_connected"] is True
                assert health["mqtt_listener"] == service.feed.listener
                assert health["mqtt_listener"] != reading
            finally:
                for task in tasks:
                    task.cancel()
