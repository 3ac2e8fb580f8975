"""The echo client: the broker's two-hop limit, measured beside the engine.

It stands where the engine stands, with the least possible work in between: a paho
client on the event loop (:mod:`.pahoio`) subscribed to the echo agency's event topics.
For each request from a scene's trigger device it publishes one reply per scene camera
to that camera's command topic, QoS 1 with a message expiry like a command (none on
MQTT 3.1.1, where the engine's commands carry none either), each reply
the size the request names (the size of the command the engine would send). The probe
times request to reply exactly as it times trigger to command.
"""

from __future__ import annotations

import time

from actimesh.bench.pahoio import PahoClient, expiry_properties
from actimesh.bench.probe import ECHO_HEADER
from actimesh.bench.workload import Fleet
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.security.registry import Credentials

__all__ = ["EchoClient"]

_EXPIRY_S = 300


class EchoClient:
    """Answers every echo request with one command-sized reply per scene camera."""

    def __init__(
        self,
        fleet: Fleet,
        topics: Topics,
        host: str,
        port: int,
        login: Credentials | None = None,
        *,
        trace: bool = False,
        version: int = 5,
    ) -> None:
        self.topics = topics
        self.client = PahoClient(
            "bench-echo", host, port, self._on_message, login=login, version=version
        )
        self._replies: dict[str, list[str]] = {}
        for scene in fleet.scenes:
            replies = [topics.command(c) for c in scene.cameras]
            self._replies[topics.event(scene.cew)] = replies
            self._replies[topics.event(scene.gateway)] = replies
        # MQTT 3.1.1 has no message expiry (commands carry theirs in the signed payload).
        self._props = expiry_properties(_EXPIRY_S) if version == 5 else None
        self.requests = 0
        self.acks = 0
        self.trace = trace
        #: ``--trace``: request number -> (callback start, replies written).
        self.stamps: dict[int, tuple[float, float]] = {}

    async def connect(self) -> None:
        await self.client.connect()
        await self.client.subscribe(
            [
                self.topics.all_devices(DeviceChannel.EVENT),
                self.topics.all_devices(DeviceChannel.ACK),
            ],
            qos=1,
        )

    def _on_message(self, topic: str, payload: bytes) -> None:
        replies = self._replies.get(topic)
        if replies is None:
            self.acks += 1  # the probe's acknowledgements: received and dropped, as load
            return
        began = time.perf_counter()
        self.requests += 1
        seq, size = ECHO_HEADER.unpack_from(payload)
        body = ECHO_HEADER.pack(seq, size)
        reply = body + b"\0" * max(0, size - len(body))
        publish = self.client.client.publish
        for topic_out in replies:
            publish(topic_out, reply, qos=1, properties=self._props)
        # Inside paho's callback the publishes are queued; the reader flushes them, at
        # once after this returns: the trace's "written" is taken here, a write early.
        if self.trace:
            self.stamps[seq] = (began, time.perf_counter())

    def close(self) -> None:
        self.client.close()
