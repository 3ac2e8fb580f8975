"""The plain subscriber of a NATS cluster: what the cluster alone delivers on core NATS.

The cluster's counterpart of :class:`~actimesh.bench.plain.PlainSubscriber` (whose
window, ``arm`` and ``collect``, and reading pattern it keeps): one native NATS
connection, one subscription to the plain agency's telemetry subjects, and per message
only what finding its end needs (the ``MSG``/``HMSG`` line's last field). No nats-py:
its callback per message would measure the client library, not the cluster. Telemetry
that a device publishes at QoS 0 on a node's MQTT listener is a core NATS message on
the topic's subject (:func:`~actimesh.broker.nats.subjects.topic_to_subject`), which is
what the engines' telemetry links subscribe to as well.
"""

from __future__ import annotations

import asyncio
import json
from typing import Self

from actimesh.bench.plain import PlainSubscriber
from actimesh.errors import BrokerError
from actimesh.security.registry import Credentials

__all__ = ["NatsPlainSubscriber"]

_MAX_LINE = 4096


class NatsPlainSubscriber(PlainSubscriber):
    """Counts messages on one NATS subject filter; ``arm`` and ``collect`` a window."""

    def __init__(self) -> None:
        super().__init__()
        self.error: str | None = None

    @classmethod
    async def connect_nats(
        cls,
        host: str,
        port: int,
        subject: str,
        *,
        timeout: float = 5.0,
        login: Credentials | None = None,
    ) -> Self:
        async with asyncio.timeout(timeout):
            transport, proto = await cls._open(host, port)
            options: dict[str, object] = {
                "verbose": False,
                "pedantic": False,
                "name": "bench-plain",
                "lang": "python",
                "version": "0",
                "protocol": 1,
                "headers": True,
                "no_responders": True,
            }
            if login is not None:
                options |= {"user": login.username, "pass": login.password}
            transport.write(
                b"CONNECT " + json.dumps(options).encode() + b"\r\n"
                b"SUB " + subject.encode() + b" 1\r\nPING\r\n"
            )
            # The first PONG answers our PING: connected and subscribed at the server.
            await proto.suback
        if proto.error is not None:
            raise BrokerError(f"the cluster refused the plain subscriber: {proto.error}")
        return proto

    def _control(self, line: bytes) -> None:
        """A protocol line other than a message: INFO, PING, PONG, +OK, -ERR."""
        if line == b"PING" and self.transport is not None:
            self.transport.write(b"PONG\r\n")
        elif line == b"PONG" and not self.suback.done():
            self.suback.set_result(())
        elif line.startswith(b"-ERR"):
            self.error = line.decode(errors="replace")
            if not self.suback.done():
                self.suback.set_result((0x80,))

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self._coalesce()
        transport = self.transport
        buf, pos, end = self._buf, self._start, self._end
        counted = 0
        while True:
            eol = buf.find(b"\r\n", pos, end)
            if eol < 0:
                if end - pos > _MAX_LINE and transport is not None:
                    transport.close()  # no line is this long: not the protocol we speak
                break
            head = bytes(buf[pos : pos + 4])
            if head in (b"MSG ", b"HMSG"):
                size = int(buf[buf.rfind(b" ", pos, eol) + 1 : eol])
                after = eol + 2 + size + 2
                if after > end:
                    break  # the payload is not all here yet
                counted += 1
                pos = after
                continue
            self._control(bytes(buf[pos:eol]))
            pos = eol + 2
        self._start = pos
        self._counted(counted)
