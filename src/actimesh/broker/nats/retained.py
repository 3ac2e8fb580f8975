"""What an MQTT subscriber gets when it subscribes: the retained message of each matching
topic, read from the MQTT listener's retained store for a NATS link.

The listener keeps each retained message in a JetStream stream of its own
(``$MQTT_rmsgs``, subject ``$MQTT.rmsgs.<subject>``, the last one per subject). A
service on the NATS side whose consumer did not exist when a device published its
retained presence never sees that presence in the QoS 1 store (interest retention keeps
nothing for a consumer yet to come); reading the retained store once its consumer exists
closes that gap, as subscribing does for an MQTT client. One ephemeral consumer per read
(memory, one replica, no acks), pulled with ``no_wait`` until the store has no more; at
most ``limit`` messages are read.

The consumer is created with its name and filter in the API subject
(``CONSUMER.CREATE.$MQTT_rmsgs.<name>.<filter subject>``; the server refuses a body
whose filter differs), so that a service may be granted the reads of the topics it may
subscribe to and nothing else (:func:`~.auth.native_grants`). It is not deleted: it goes
by itself once idle for its ``inactive_threshold``, and a grant to delete
consumers of that stream would reach the listener's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from actimesh.broker.nats._protocol import JS_API, NS, STREAM_NOT_FOUND, js_api, status_of
from actimesh.broker.nats.subjects import (
    MQTT_RETAINED_PREFIX,
    MQTT_RETAINED_STREAM,
    subject_to_topic,
    topic_to_subject,
)
from actimesh.errors import BrokerError

__all__ = ["read_retained"]

log = logging.getLogger(__name__)

_BATCH = 256


async def read_retained(
    nc: NatsClient, topic_filter: str, *, timeout: float, limit: int = 200_000
) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` of each retained message matching ``topic_filter`` (an MQTT
    filter), oldest first; none when the listener has no retained store yet."""
    stream = MQTT_RETAINED_STREAM
    filter_subject = MQTT_RETAINED_PREFIX + topic_to_subject(topic_filter)
    name = f"actimesh-retained-{secrets.token_hex(8)}"
    config = {
        "name": name,
        "filter_subject": filter_subject,
        "deliver_policy": "last_per_subject",
        "ack_policy": "none",
        "mem_storage": True,
        "num_replicas": 1,
        "inactive_threshold": int(max(timeout, 5.0) * NS),
    }
    api = f"CONSUMER.CREATE.{stream}.{name}.{filter_subject}"
    answer = await js_api(nc, api, {"stream_name": stream, "config": config}, timeout)
    error = answer.get("error")
    if error and error.get("err_code") == STREAM_NOT_FOUND:
        return []
    if error:
        raise BrokerError(
            f"retained messages of {topic_filter} not read: {error.get('description')}"
        )
    want = min(int(answer.get("num_pending", 0)), limit)
    if answer.get("num_pending", 0) > limit:
        log.warning(
            "%s: %s retained messages, reading the first %d",
            topic_filter,
            answer["num_pending"],
            limit,
        )
    out: list[tuple[str, bytes]] = []
    ended = asyncio.Event()
    asked = 0

    async def take(msg: Msg) -> None:
        status = status_of(msg)
        if status is not None:
            if status != "100":
                ended.set()  # no more for now (404/408), or refused
            return
        out.append((subject_to_topic(msg.subject.removeprefix(MQTT_RETAINED_PREFIX)), msg.data))
        if len(out) >= asked:
            ended.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=take)
    try:
        while len(out) < want:
            asked = len(out) + min(_BATCH, want - len(out))
            ended.clear()
            body = json.dumps({"batch": asked - len(out), "no_wait": True}).encode()
            await nc.publish(f"{JS_API}CONSUMER.MSG.NEXT.{stream}.{name}", body, reply=inbox)
            before = len(out)
            try:
                async with asyncio.timeout(timeout):
                    await ended.wait()
            except TimeoutError as exc:
                raise BrokerError(f"retained messages of {topic_filter}: no answer") from exc
            if len(out) == before:
                break  # the store had fewer than it said (some replaced meanwhile)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return out
