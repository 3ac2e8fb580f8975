"""Attacks on the engine's slow-down, on the real secured Mosquitto, as an attacker who
holds one legitimate device or integrator account: neither may publish on the
slow-down topic, and a forged slow-down from an account that can publish there is
refused by the devices and counted.

Every "nothing arrives" check ends with a marker that *is* allowed, on the same
connection as the attack (test_acl_broker.py says why that proves it)."""

from __future__ import annotations

import asyncio
import time

import pytest

from actimesh.broker.codec import encode
from actimesh.broker.messages import DeviceKind
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent
from actimesh.security import SERVICE_ENGINE
from actimesh.security.signing import CommandSigner
from tests.conftest import SecureBroker
from tests.security.test_acl_broker import MARKER, _client
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def _slow(signer: CommandSigner, agency: str, seq: int) -> bytes:
    now = time.time()
    return encode(signer.slowdown(agency=agency, seq=seq, ts=now, exp=now + 120, hb=60.0))


async def test_no_device_or_integrator_may_publish_a_slow_down(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    t = Topics(agency)
    cam = secure_mosquitto.add_device("bwc-1")
    stolen = secure_mosquitto.add_device("bwc-2")
    rogue = secure_mosquitto.add_integrator("rogue", telemetry=True)
    engine = secure_mosquitto.services[SERVICE_ENGINE]
    # Even a correctly signed one: the broker must not carry it from these accounts.
    genuine = _slow(CommandSigner.generate(), agency, 1)
    async with (
        _client(secure_mosquitto, cam.mqtt, t.slowdown()) as dev,
        _client(secure_mosquitto, stolen.mqtt) as bad_device,
        _client(secure_mosquitto, rogue) as bad_integrator,
        _client(secure_mosquitto, engine) as eng,
    ):
        assert dev.refused() == []  # every device may read it
        for attacker in (bad_device, bad_integrator):
            await attacker.client.publish(t.slowdown(), genuine, qos=1, retain=True)
            await attacker.client.publish(t.slowdown(), genuine, qos=0)
        await eng.client.publish(t.slowdown(), MARKER, qos=1)
        await dev.wait_for(t.slowdown())
    assert dev.topics() == []
    # Nor was anything retained for a device connecting later: the engine's marker is
    # the only message it finds, retained now on purpose.
    async with _client(secure_mosquitto, engine) as eng:
        await eng.client.publish(t.slowdown(), MARKER, qos=1, retain=True)
    async with _client(secure_mosquitto, cam.mqtt, t.slowdown()) as late:
        await late.wait_for(t.slowdown())
    assert late.topics() == []


async def test_a_forged_slow_down_is_refused_by_the_devices(
    secure_mosquitto: SecureBroker, agency: str
) -> None:
    """An attacker who somehow holds an account that may publish there (a leaked engine
    password, a wrong ACL) still cannot slow the fleet without the engine's key."""
    t = Topics(agency)
    creds = secure_mosquitto.add_device("cew-1", DeviceKind.CEW)
    engine_key = CommandSigner.generate()
    agent = DeviceAgent(
        topics=t,
        device_id="cew-1",
        kind=DeviceKind.CEW,
        broker_host=secure_mosquitto.host,
        broker_port=secure_mosquitto.port,
        position=lambda: None,
        verifier=engine_key.verifier(),
        username=creds.mqtt.username,
        password=creds.mqtt.password,
    )
    leaked = secure_mosquitto.services[SERVICE_ENGINE]
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(agent.run(), name="cew-1")
        await agent.link.wait_connected(timeout=5.0)
        async with _client(secure_mosquitto, leaked) as attacker:
            await attacker.client.publish(t.slowdown(), _slow(CommandSigner.generate(), agency, 9))
            await attacker.client.publish(t.slowdown(), _slow(engine_key, "other", 10))
            await eventually(lambda: agent.slowdown.refused["bad_signature"] == 2, timeout=5.0)
            assert agent.slowdown.heartbeat_s(time.time()) is None
            # The engine's own, through the same account, is accepted: the path works.
            await attacker.client.publish(t.slowdown(), _slow(engine_key, agency, 11))
            await eventually(lambda: agent.slowdown.accepted == 1, timeout=5.0)
            assert agent.slowdown.heartbeat_s(time.time()) == 60.0
        task.cancel()
