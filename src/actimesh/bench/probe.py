"""The camera-side probe: fires triggers, and times the commands the scene cameras receive.

One process, two paho connections driven by one event loop (:mod:`.pahoio`): ``tx`` is the
trigger device (it publishes events, QoS 1) and ``rx`` is every camera of every scene (it
is subscribed to each scene camera's command topic, QoS 1, and acknowledges commands
as a camera does: ``received``, then ``recording``).

Interleaved with the triggers, and identical in shape, it sends the *physical limit*
request: the same number of bytes from the same connection to an echo client
(:mod:`.echo`) that answers with one reply per scene camera, each the size of a command,
to the same ``rx`` connection, which acknowledges them the same way. So both paths have
two broker hops, the same payload sizes, the same fan-out and the same acknowledgement
traffic; the only difference is actimesh's engine in the middle.

Latency is ``time.perf_counter()`` at the ``rx`` callback minus ``time.perf_counter()``
just before the ``tx`` publish: one process, one monotonic clock, no cross-process
clock comparison at all.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from actimesh.bench.pahoio import PahoClient
from actimesh.bench.workload import Fleet, Scene
from actimesh.broker.codec import encode
from actimesh.broker.messages import Ack, AckStatus, ActivationReason, Command, Event
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.security.registry import Credentials

__all__ = ["ECHO_HEADER", "Probe", "ProbeResult", "command_size"]

#: An echo request and its replies start with ``(sequence number, reply size)``.
ECHO_HEADER = struct.Struct(">QQ")
_DRAIN_S = 3.0
_PRE_ROLL_S = 30.0


def command_size(scene: Scene, eid: str, event_type: str) -> int:
    """Bytes of a proximity command the engine would send for this trigger (with a
    signature's 64 bytes in place of the signature)."""
    now = time.time()
    cmd = Command(
        aid="act-" + "0" * 24,
        eid=eid,
        src=scene.gateway,
        type=event_type,
        ets=now,
        pre=_PRE_ROLL_S,
        reason=ActivationReason.PROXIMITY,
        dist=2.0,
        ts=now,
        exp=now + 300.0,
        sig=bytes(64),
    )
    return len(encode(cmd))


@dataclass(slots=True)
class ProbeResult:
    """Latencies in milliseconds, one per camera per trigger (or echo request)."""

    trigger_ms: list[float] = field(default_factory=list)
    echo_ms: list[float] = field(default_factory=list)
    triggers: int = 0
    echoes: int = 0
    expected_per_trigger: int = 0
    commands_missing: int = 0
    echo_missing: int = 0
    event_bytes: list[int] = field(default_factory=list)
    command_bytes: list[int] = field(default_factory=list)
    late_sends: int = 0
    #: ``--trace``: request id -> publish time, and -> the cameras' receipt times.
    sent: dict[str, float] = field(default_factory=dict)
    received: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "trigger_ms": self.trigger_ms,
            "echo_ms": self.echo_ms,
            "triggers": self.triggers,
            "echoes": self.echoes,
            "expected_per_trigger": self.expected_per_trigger,
            "commands_missing": self.commands_missing,
            "echo_missing": self.echo_missing,
            "event_bytes": sum(self.event_bytes) / max(1, len(self.event_bytes)),
            "command_bytes": sum(self.command_bytes) / max(1, len(self.command_bytes)),
            "late_sends": self.late_sends,
        }


class Probe:
    """Triggers and echo requests out, commands and echo replies in."""

    def __init__(
        self,
        fleet: Fleet,
        engine: Topics,
        echo: Topics,
        host: str,
        port: int,
        *,
        acks: bool,
        login: Credentials | None = None,
        trace: bool = False,
        rx_port: int | None = None,
        version: int = 5,
    ) -> None:
        """``rx_port``: the cameras on another port (another node of a cluster) than the
        trigger device; ``version`` 4 for MQTT 3.1.1."""
        self.fleet = fleet
        self.engine = engine
        self.echo = echo
        self.acks = acks
        self.tx = PahoClient("bench-probe-tx", host, port, login=login, version=version)
        self.rx = PahoClient(
            "bench-probe-rx",
            host,
            port if rx_port is None else rx_port,
            self._on_message,
            login=login,
            version=version,
        )
        self._trigger_sent: dict[str, float] = {}
        self._echo_sent: dict[int, float] = {}
        self._seen: set[tuple[str, str]] = set()
        self._result = ProbeResult()
        self._engine_cmd = {engine.command(c): c for s in fleet.scenes for c in s.cameras}
        self._echo_cmd = {echo.command(c): c for s in fleet.scenes for c in s.cameras}
        self._ack_pad = b""
        self.trace = trace
        #: ``--trace``: request id (event id, or ``#`` and the echo number) -> receipts.
        self._received: dict[str, list[float]] = {}

    async def connect(self) -> None:
        await self.tx.connect()
        await self.rx.connect()
        if self.rx.version == 5:
            await self.rx.subscribe([*self._engine_cmd, *self._echo_cmd], qos=1)
        else:
            # On a NATS node's MQTT listener each QoS 1 subscription is a JetStream
            # consumer whose max_ack_pending (1,024) counts against the session's 65,535
            # packet ids: the 64th subscription of a session is refused. A camera has one;
            # the probe, playing every scene camera, takes each agency's command topics
            # with one filter (only scene cameras are ever commanded: others are ignored).
            await self.rx.subscribe(
                [
                    self.engine.all_devices(DeviceChannel.COMMAND),
                    self.echo.all_devices(DeviceChannel.COMMAND),
                ],
                qos=1,
                timeout=30.0,
            )

    def close(self) -> None:
        self.tx.close()
        self.rx.close()

    # ------------------------------------------------------------------ receiving
    def _on_message(self, topic: str, payload: bytes) -> None:
        now = time.perf_counter()
        r = self._result
        camera = self._engine_cmd.get(topic)
        if camera is not None:
            cmd = msgpack.unpackb(payload)
            eid = cmd["eid"]
            sent = self._trigger_sent.get(eid)
            if sent is None or (eid, camera) in self._seen:
                return  # a retry or a command from before this run
            self._seen.add((eid, camera))
            r.trigger_ms.append((now - sent) * 1000.0)
            if self.trace:
                self._received.setdefault(eid, []).append(now)
            r.command_bytes.append(len(payload))
            if self.acks:
                self._acknowledge(self.engine.ack(camera), cmd["aid"])
            return
        camera = self._echo_cmd.get(topic)
        if camera is not None:
            seq = ECHO_HEADER.unpack_from(payload)[0]
            sent = self._echo_sent.get(seq)
            if sent is None or (f"#{seq}", camera) in self._seen:
                return
            self._seen.add((f"#{seq}", camera))
            r.echo_ms.append((now - sent) * 1000.0)
            if self.trace:
                self._received.setdefault(f"#{seq}", []).append(now)
            if self.acks:
                self._acknowledge(self.echo.ack(camera), "act-" + "0" * 24)

    def _acknowledge(self, topic: str, aid: str) -> None:
        # A camera answers "received" at once and "recording" once committed.
        ts = time.time()
        for status in (AckStatus.RECEIVED, AckStatus.RECORDING):
            rec = "rec-0001" if status is AckStatus.RECORDING else None
            ack = Ack(aid=aid, status=status, pre_cov=_PRE_ROLL_S, rec=rec, ts=ts)
            self.rx.client.publish(topic, encode(ack), qos=1)
        # Inside paho's callback the publishes are queued; the reader flushes them.

    # ------------------------------------------------------------------ sending
    def _trigger(self, k: int) -> tuple[str, int, int]:
        scenes = self.fleet.scenes
        scene = scenes[k % len(scenes)]
        eid = f"ev-{k:08d}"
        taser = (k // len(scenes)) % 2 == 0
        if taser:  # the CEW has no GPS: the engine borrows the paired body camera's fix
            event = Event(eid=eid, type="taser_draw", ts=time.time())
            source = scene.cew
        else:  # the cruiser's gateway knows where it is
            event = Event(
                eid=eid,
                type="emergency_lights",
                ts=time.time(),
                lat=scene.lat,
                lon=scene.lon,
                acc=3.0,
            )
            source = scene.gateway
        payload = encode(event)
        self._trigger_sent[eid] = time.perf_counter()
        self.tx.publish(self.engine.event(source), payload, qos=1)
        self._result.event_bytes.append(len(payload))
        return source, len(payload), command_size(scene, eid, event.type)

    def _echo_request(self, k: int, source: str, size: int, reply_size: int) -> None:
        head = ECHO_HEADER.pack(k, reply_size)
        payload = head + b"\0" * max(0, size - len(head))
        self._echo_sent[k] = time.perf_counter()
        self.tx.publish(self.echo.event(source), payload, qos=1)

    async def run(self, rate: float, duration_s: float) -> ProbeResult:
        """``rate`` triggers and ``rate`` echo requests per second, interleaved."""
        r = self._result = ProbeResult(expected_per_trigger=len(self.fleet.scenes[0].cameras))
        self._seen.clear()
        total = max(1, int(rate * duration_s))
        period = 1.0 / rate
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(total):
            delay = start + k * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -period:
                r.late_sends += 1
            source, size, reply_size = self._trigger(k)
            r.triggers += 1
            delay = start + (k + 0.5) * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._echo_request(k, source, size, reply_size)
            r.echoes += 1
        expected = r.triggers * r.expected_per_trigger
        deadline = loop.time() + _DRAIN_S
        while loop.time() < deadline and (  # noqa: ASYNC110 - counters fed by paho callbacks
            len(r.trigger_ms) < expected or len(r.echo_ms) < r.echoes * r.expected_per_trigger
        ):
            await asyncio.sleep(0.05)
        r.commands_missing = expected - len(r.trigger_ms)
        r.echo_missing = r.echoes * r.expected_per_trigger - len(r.echo_ms)
        if self.trace:
            r.sent = {**self._trigger_sent, **{f"#{k}": t for k, t in self._echo_sent.items()}}
            r.received, self._received = self._received, {}
        return r
