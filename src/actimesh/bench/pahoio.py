"""paho-mqtt driven by the asyncio event loop, with nothing in between.

The probe and the echo client measure latency, so their MQTT clients must add as little
as possible of their own: paho's packet handling runs directly in the loop's reader
callback (``on_message`` sees the message in the same call that read it), and a publish
outside a callback goes straight to the socket. There is no thread and no queue, unlike
``loop_start()`` (a thread hand-off per message) or aiomqtt (a future and a queue per
message). ``TCP_NODELAY`` is set on the socket (FIELD-NOTES §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from actimesh.errors import BrokerError
from actimesh.security.registry import Credentials

__all__ = ["OnMessage", "PahoClient", "expiry_properties"]

OnMessage = Callable[[str, bytes], None]


def expiry_properties(seconds: int) -> Properties:
    """PUBLISH properties with a message expiry, as the engine puts on commands."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = seconds
    return props


class PahoClient:
    """One paho MQTT 5 client (3.1.1 with ``version=4``: a NATS node's MQTT listener) on
    the running loop. ``await connect()``, then use."""

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        on_message: OnMessage | None = None,
        *,
        login: Credentials | None = None,
        version: int = 5,
    ) -> None:
        self.host = host
        self.port = port
        self.version = version
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311,
        )
        if login is not None:
            self.client.username_pw_set(login.username, login.password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        if on_message is not None:
            handler = on_message
            self.client.on_message = lambda _c, _u, msg: handler(msg.topic, bytes(msg.payload))
        self._loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[int] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self._sock: socket.socket | None = None
        self._writing = False
        self.lost: asyncio.Future[None] = self._loop.create_future()

    # ------------------------------------------------------------------ paho callbacks
    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not self._connack.done():
            self._connack.set_result(int(reason.value))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _props: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            if any(int(r.value) >= 0x80 for r in reasons):
                fut.set_exception(BrokerError(f"subscription refused: {reasons}"))
            else:
                fut.set_result(None)

    # ------------------------------------------------------------------ loop plumbing
    def _readable(self) -> None:
        rc = self.client.loop_read()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self._gone(f"read failed ({mqtt.error_string(rc)})")
            return
        self.flush()

    def _writable(self) -> None:
        rc = self.client.loop_write()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self._gone(f"write failed ({mqtt.error_string(rc)})")
        elif not self.client.want_write():
            self._stop_writing()

    def flush(self) -> None:
        """Write what paho queued (publishes made inside a callback wait for this)."""
        if self.client.want_write():
            rc = self.client.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._gone(f"write failed ({mqtt.error_string(rc)})")
                return
            if self.client.want_write() and not self._writing and self._sock is not None:
                self._writing = True
                self._loop.add_writer(self._sock, self._writable)

    def _stop_writing(self) -> None:
        if self._writing and self._sock is not None:
            self._loop.remove_writer(self._sock)
        self._writing = False

    def _gone(self, why: str) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock)
            self._stop_writing()
            self._sock = None
        if not self.lost.done():
            self.lost.set_exception(BrokerError(f"{self.client._client_id!r}: {why}"))
        waiting: list[asyncio.Future[Any]] = [self._connack, *self._subacks.values()]
        for fut in waiting:
            if not fut.done():
                fut.cancel()

    @property
    def backlog(self) -> bool:
        """True while paho holds bytes the socket has not taken yet."""
        return bool(self.client.want_write())

    # ------------------------------------------------------------------ public
    async def connect(self, timeout: float = 5.0) -> None:
        """Connect (TCP_NODELAY) and wait for the CONNACK."""
        self.client.connect_timeout = timeout
        try:
            self.client.connect(self.host, self.port, keepalive=60)
        except OSError as exc:
            raise BrokerError(f"cannot reach {self.host}:{self.port}: {exc}") from exc
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._loop.add_reader(sock, self._readable)
        self.flush()
        async with asyncio.timeout(timeout):
            reason = await self._connack
        if reason != 0:
            raise BrokerError(f"the broker refused the connection (reason {reason})")

    async def subscribe(self, topics: Sequence[str], qos: int = 1, timeout: float = 5.0) -> None:
        """Subscribe to every topic (in chunks) and wait for the SUBACKs."""
        for start in range(0, len(topics), 100):
            chunk = [(t, qos) for t in topics[start : start + 100]]
            rc, mid = self.client.subscribe(chunk)
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                raise BrokerError(f"subscribe failed ({mqtt.error_string(rc)})")
            fut = self._loop.create_future()
            self._subacks[mid] = fut
            self.flush()
            async with asyncio.timeout(timeout):
                await fut

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, properties: Properties | None = None
    ) -> None:
        """Publish now (written to the socket unless it is full; then on writability)."""
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish to {topic} failed ({mqtt.error_string(info.rc)})")
        self.flush()

    async def keepalive(self) -> None:
        """paho's housekeeping (pings, retries) once a second, until cancelled."""
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                self.client.loop_misc()
                self.flush()

    def close(self) -> None:
        """Disconnect cleanly and close the socket."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                self.client.disconnect()
                self.flush()
            self._gone("closed")
            sock.close()
        if self.lost.done() and not self.lost.cancelled():
            self.lost.exception()  # retrieved: a closed client is not an error
