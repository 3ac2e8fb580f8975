"""The resilient client's guards that are not visible through the broker."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import pytest

from actimesh.broker.client import (
    LinkSettings,
    MqttLink,
    Subscription,
    as_bytes,
    resume_cancellation,
)


async def test_swallowed_cancellation_is_raised_again() -> None:
    """Python 3.11's wait_for can eat a cancel; the link must not carry on regardless."""
    resumed = asyncio.Event()

    async def library_call_that_swallows() -> None:
        # What asyncio.wait_for does on 3.11 when the inner future wins the race:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        resumed.set()
        resume_cancellation()
        await asyncio.sleep(10)  # not reached

    task = asyncio.create_task(library_call_that_swallows())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert resumed.is_set()


async def test_no_cancellation_means_no_raise() -> None:
    resume_cancellation()


async def _receive_once(
    port: int, topic: str, client_id: str, *, ack: bool, timeout: float = 2.0
) -> list[bytes]:
    """Connect a manual-ack link with a persistent session, collect what arrives."""
    got: list[bytes] = []
    done = asyncio.Event()
    link: MqttLink

    async def handler(message: aiomqtt.Message) -> None:
        got.append(as_bytes(message.payload))
        if ack:
            assert link.ack(message, link.current_client)
        done.set()

    link = MqttLink(
        LinkSettings(
            host="127.0.0.1",
            port=port,
            client_id=client_id,
            session_expiry_s=60,
            manual_ack=True,
            subscriptions=(Subscription(topic, 1),),
        ),
        handler,
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(link.run())
        await link.wait_connected()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await done.wait()
        await asyncio.sleep(0.1)
        task.cancel()
    return got


async def test_unacknowledged_message_is_redelivered_until_acknowledged(
    broker_port: int, agency: str
) -> None:
    topic = f"{agency}/manual"
    client_id = f"{agency}-manual"
    assert await _receive_once(broker_port, topic, client_id, ack=False, timeout=0.3) == []
    async with aiomqtt.Client("127.0.0.1", broker_port) as publisher:
        await publisher.publish(topic, b"trigger", qos=1)
    # Received, not acknowledged (as if the engine died before its ledger write) ...
    assert await _receive_once(broker_port, topic, client_id, ack=False) == [b"trigger"]
    # ... so the broker delivers it again; this time it is acknowledged ...
    assert await _receive_once(broker_port, topic, client_id, ack=True) == [b"trigger"]
    # ... and never again.
    assert await _receive_once(broker_port, topic, client_id, ack=True, timeout=0.5) == []


async def test_ack_on_a_dead_connection_is_refused(broker_port: int, agency: str) -> None:
    link = MqttLink(LinkSettings(host="127.0.0.1", port=broker_port, client_id=agency))
    message = aiomqtt.Message(f"{agency}/x", b"", qos=1, retain=False, mid=1, properties=None)
    assert not link.ack(message, None)
