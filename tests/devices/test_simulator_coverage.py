"""A radio dead spot on a real broker: the crew's devices go offline, and come back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt

from actimesh.broker.client import LinkSettings, MqttLink, Subscription, as_bytes
from actimesh.broker.codec import decode
from actimesh.broker.messages import OfflineReason, Presence
from actimesh.broker.topics import Topics
from actimesh.devices.simulator import FleetSimulator, SimSettings
from tests.waiting import eventually


async def test_a_dead_spot_takes_the_devices_offline_until_it_ends(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    topics = Topics(agency)
    sim = FleetSimulator(
        topics=topics,
        broker_host="127.0.0.1",
        broker_port=broker_port,
        data_dir=tmp_path,
        settings=SimSettings(units=1),
    )
    gateway = sim.units[0].gateway
    assert gateway is not None
    seen: list[Presence] = []

    async def on_presence(message: aiomqtt.Message) -> None:
        payload = as_bytes(message.payload)
        if payload:
            seen.append(decode(Presence, payload))

    watcher = MqttLink(
        LinkSettings(
            host="127.0.0.1",
            port=broker_port,
            client_id=f"{agency}-watcher",
            subscriptions=(Subscription(topics.presence(gateway.device_id), 1),),
        ),
        on_presence,
    )
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(watcher.run())]
        tasks += [tg.create_task(agent.run()) for agent in sim.agents]
        await sim.wait_connected(timeout=15)
        await watcher.wait_connected(timeout=15)
        await eventually(lambda: seen and seen[-1].online)
        await sim.outage(gateway, 1.0)
        await eventually(lambda: not gateway.link.connected)
        offline = await eventually(lambda: next((p for p in seen if not p.online), None))
        assert offline.reason is OfflineReason.CONNECTION_LOST
        # The dead spot ends: the device reconnects and says it is back.
        await eventually(lambda: gateway.link.connected and seen[-1].online, timeout=15)
        for task in tasks:
            task.cancel()
