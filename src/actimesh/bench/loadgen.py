"""The load generator: presence and telemetry of the whole fleet, in its own process.

It plays every device of :mod:`.workload` at once over one MQTT connection, which the
broker treats the same as many (topics name the device). On the secured benchmark
broker it logs in as the load generator's account (``svc-loadgen``), whose ACL lets it
write every device's topics: a documented exception that only the benchmark's and the
fault drill's throw-away registries hold (security/acl.py). Telemetry is QoS 0, as
devices send it.

Two publishers, chosen with ``--publisher``:

* ``raw`` (default): packets are built by :mod:`actimesh.broker.wire` with a per-device
  pre-encoded header and written in batches. It costs about 1 µs of CPU per message,
  so on a 2-core machine the load generator does not steal the cores the broker and
  the engine are measured on (the devices of a real fleet are not on the engine's
  machine either).
* ``paho``: one paho ``publish()`` per message, about 7 µs of CPU each. Kept to show
  what the client library itself costs (docs/PERFORMANCE.md).

On a NATS cluster (``actimesh bench --cluster``) the raw publisher speaks MQTT 3.1.1 to a
node's MQTT listener (``version=4``), and presence goes at QoS 1, as devices send it: the
engine reads presence from the listener's QoS 1 store, where a QoS 0 message never is.
The telemetry frames are then exactly what a device's MQTT client sends.

With motion-scaled telemetry (``actimesh bench --telemetry motion``, :mod:`.motion`) the
stream keeps the same round-robin of GPS epochs, but each device's reports are decided
ahead by :meth:`LoadGenerator.prepare_motion` (the device's own reporting rule) and only
the due ones are sent, with ``hb``, ``db`` and ``spd``.

A 1 Hz stream that stalls (this process starved of CPU) skips the epochs it fell behind
by more than ``_MAX_BURST_S``, as a device that missed them sends only its latest; the
skipped messages are counted (``stream_skipped``), never as sent. A motion-scaled stream
catches up instead (``stream_lag_s`` says by how much it was late).

Every loop is bounded: a stream stops after its duration, a flood after its count.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Any, Protocol

from actimesh.bench.motion import MotionFleet, MotionSchedule
from actimesh.bench.pahoio import PahoClient
from actimesh.bench.workload import (
    TELEMETRY_HEAD,
    Fleet,
    Movers,
    motion_payload,
    telemetry_payload,
)
from actimesh.broker import wire
from actimesh.broker.codec import encode
from actimesh.broker.messages import DeviceKind, Presence
from actimesh.broker.topics import Topics
from actimesh.errors import BrokerError
from actimesh.security.registry import Credentials

__all__ = ["LoadGenerator", "PahoPublisher", "RawPublisher"]

log = logging.getLogger(__name__)

_TICK_S = 0.005
#: Never try to catch up more than this much of a stalled stream at once.
_MAX_BURST_S = 0.1
_FLOOD_CHUNK = 64 * 1024
#: Messages per prepared chunk of :meth:`LoadGenerator.stream_prepared`.
_CHUNK = 512
#: A telemetry payload's timestamp, with the bytes before it: unique in a frame.
_TS_PREFIX = TELEMETRY_HEAD
_TS = struct.Struct(">d")


class Publisher(Protocol):
    async def send(self, packets: list[bytes], topics: list[str], payloads: list[bytes]) -> None:
        """Publish; ``packets`` are the raw MQTT frames of the same messages."""

    async def close(self) -> None: ...


class RawPublisher:
    """QoS 0 publishes as pre-built MQTT frames over one asyncio stream (MQTT 5, or 3.1.1
    with ``version=4``); :meth:`send_confirmed` for QoS 1 frames."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        login: Credentials | None = None,
        *,
        version: int = 5,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.login = login
        self.version = version
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Keepalive 0: the bench connection lives for minutes and never idles long.
            writer.write(
                wire.connect_packet(
                    self.client_id,
                    keepalive_s=0,
                    username=None if self.login is None else self.login.username,
                    password=None if self.login is None else self.login.password,
                    version=self.version,
                )
            )
            head = await reader.readexactly(2)
            body = await reader.readexactly(head[1])
        if head[0] >> 4 != wire.CONNACK or wire.connack_reason(body) != 0:
            writer.close()
            raise BrokerError(f"{self.client_id}: connection refused by the broker")
        self._reader, self._writer = reader, writer

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            raise BrokerError(f"{self.client_id}: not connected")
        self._writer.write(data)
        async with asyncio.timeout(30):
            await self._writer.drain()

    async def send(
        self,
        packets: list[bytes],
        topics: list[str],  # noqa: ARG002 - one interface for both publishers
        payloads: list[bytes],  # noqa: ARG002
    ) -> None:
        await self.write(b"".join(packets))

    async def send_confirmed(self, packets: list[bytes], timeout_s: float = 60.0) -> None:
        """Write QoS 1 frames and wait for a PUBACK for each (MQTT 3.1.1 only: there a
        PUBACK is always 4 bytes; nothing else arrives on this connection)."""
        if self._reader is None or self.version != 4:
            raise BrokerError(f"{self.client_id}: confirmed sends need MQTT 3.1.1")
        await self.write(b"".join(packets))
        async with asyncio.timeout(timeout_s):
            acks = await self._reader.readexactly(4 * len(packets))
        if any(acks[i] >> 4 != wire.PUBACK for i in range(0, len(acks), 4)):
            raise BrokerError(f"{self.client_id}: expected only PUBACKs")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.write(wire.DISCONNECT_PACKET)
            self._writer.close()
            try:
                async with asyncio.timeout(2):
                    await self._writer.wait_closed()
            except (OSError, TimeoutError):
                pass
            self._writer = None


class PahoPublisher:
    """QoS 0 publishes through paho, one ``publish()`` per message."""

    def __init__(
        self, host: str, port: int, client_id: str, login: Credentials | None = None
    ) -> None:
        self._client = PahoClient(client_id, host, port, login=login)

    async def connect(self, timeout: float = 5.0) -> None:
        await self._client.connect(timeout)

    async def send(
        self,
        packets: list[bytes],  # noqa: ARG002 - one interface for both publishers
        topics: list[str],
        payloads: list[bytes],
    ) -> None:
        publish = self._client.publish
        for topic, payload in zip(topics, payloads, strict=True):
            publish(topic, payload, qos=0)
        async with asyncio.timeout(30):
            while self._client.backlog:  # noqa: ASYNC110 - paho has no "drained" event
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        self._client.close()


class LoadGenerator:
    """Presence and telemetry for every device of a :class:`Fleet`."""

    def __init__(
        self,
        fleet: Fleet,
        seed: int,
        publisher: Publisher,
        agencies: list[str],
        *,
        version: int = 5,
    ) -> None:
        self.fleet = fleet
        self.seed = seed
        self.version = version
        self.movers = Movers(fleet, seed, time.time())
        self.publisher = publisher
        self.topics = {a: Topics(a) for a in agencies}
        self._frames: dict[str, list[bytes]] = {}
        self._names: dict[str, list[str]] = {}
        self._cursor = 0
        self.sent = 0
        self.stream_sent = 0
        #: Messages a stalled 1 Hz stream skipped (a stalled device sends only its
        #: latest fix): never written, and not in ``stream_sent``.
        self.stream_skipped = 0
        self.stream_lag_s = 0.0
        self.streaming = False
        self._batt = 87.0
        self._schedule: MotionSchedule | None = None

    def _frame_heads(self, agency: str) -> tuple[list[bytes], list[str]]:
        """Per-device MQTT frame headers (payloads have a fixed size) and topic names."""
        if agency not in self._frames:
            t = self.topics[agency]
            size = len(telemetry_payload(1.0, 0.0, 0.0, 0.0, 0.0))
            names = [t.telemetry(d) for d in self.fleet.ids]
            heads = [
                wire.publish_packet(name, b"\0" * size, version=self.version)[:-size]
                for name in names
            ]
            self._frames[agency], self._names[agency] = heads, names
        return self._frames[agency], self._names[agency]

    def _next(
        self, agency: str, count: int, ts: float
    ) -> tuple[list[bytes], list[str], list[bytes]]:
        heads, names = self._frame_heads(agency)
        n = len(self.fleet)
        step = self.movers.step
        packets: list[bytes] = []
        topics: list[str] = []
        payloads: list[bytes] = []
        i = self._cursor
        for _ in range(count):
            lat, lon, acc = step(i, ts)
            payload = telemetry_payload(ts, lat, lon, acc, self._batt)
            packets.append(heads[i] + payload)
            topics.append(names[i])
            payloads.append(payload)
            i = i + 1 if i + 1 < n else 0
        self._cursor = i
        return packets, topics, payloads

    def prepare_motion(self, rate: float, duration_s: float) -> dict[str, Any]:
        """Decide a motion-scaled stream's reports ahead (:mod:`.motion`); the next
        :meth:`stream` sends them. Its figures: reports, epochs, mixture, reasons."""
        motion = MotionFleet(self.fleet, self.seed, 0.0)
        self._schedule = motion.schedule(rate, duration_s)
        return {
            "reports": len(self._schedule),
            "epochs": self._schedule.epochs,
            "heartbeat_s": motion.heartbeat_s,
            "mixture": motion.shares(),
            "reasons": motion.reasons(),
        }

    def _due_motion(
        self, sched: MotionSchedule, agency: str, cursor: int, until: int, ts: float
    ) -> tuple[int, list[bytes], list[str], list[bytes]]:
        """The scheduled reports from ``cursor`` on whose epoch is before ``until``."""
        heads, names = self._motion_heads(agency)
        hb, batt = sched.heartbeat_s, self._batt
        packets: list[bytes] = []
        topics: list[str] = []
        payloads: list[bytes] = []
        end = len(sched)
        epoch, device = sched.epoch, sched.device
        lat, lon, acc, db, spd = sched.lat, sched.lon, sched.acc, sched.db, sched.spd
        j = cursor
        while j < end and epoch[j] < until:
            i = device[j]
            payload = motion_payload(ts, lat[j], lon[j], acc[j], batt, hb=hb, db=db[j], spd=spd[j])
            packets.append(heads[i] + payload)
            topics.append(names[i])
            payloads.append(payload)
            j += 1
        return j, packets, topics, payloads

    def _motion_heads(self, agency: str) -> tuple[list[bytes], list[str]]:
        key = f"motion:{agency}"
        if key not in self._frames:
            t = self.topics[agency]
            size = len(motion_payload(1.0, 0.0, 0.0, 0.0, 0.0, hb=1.0, db=0.0, spd=0.0))
            names = [t.telemetry(d) for d in self.fleet.ids]
            heads = [
                wire.publish_packet(name, b"\0" * size, version=self.version)[:-size]
                for name in names
            ]
            self._frames[key], self._names[key] = heads, names
        return self._frames[key], self._names[key]

    # ------------------------------------------------------------------ presence
    async def presence(self, agency: str, start: int, count: int) -> int:
        """Announce devices ``[start, start + count)``; with ``start == 0`` also the
        scenes' CEWs and gateways with their pairings."""
        t = self.topics[agency]
        now = time.time()
        frames: list[bytes] = []
        topics: list[str] = []
        payloads: list[bytes] = []

        confirmed = isinstance(self.publisher, RawPublisher) and self.version == 4

        def add(device: str, msg: Presence) -> None:
            payload = encode(msg)
            topic = t.presence(device)
            packet_id = len(frames) % 0xFFFF + 1 if confirmed else None
            frames.append(
                wire.publish_packet(topic, payload, packet_id=packet_id, version=self.version)
            )
            topics.append(topic)
            payloads.append(payload)

        end = min(len(self.fleet), start + count)
        for i in range(start, end):
            add(
                self.fleet.ids[i],
                Presence(online=True, ts=now, device_kind=self.fleet.kinds[i], pre_roll=30.0),
            )
        if start == 0:
            for scene in self.fleet.scenes:
                add(
                    scene.cew,
                    Presence(
                        online=True, ts=now, device_kind=DeviceKind.CEW, paired=(scene.cameras[0],)
                    ),
                )
                add(
                    scene.gateway,
                    Presence(
                        online=True,
                        ts=now,
                        device_kind=DeviceKind.GATEWAY,
                        paired=(scene.cameras[-1],),
                    ),
                )
        if confirmed:
            assert isinstance(self.publisher, RawPublisher)
            await self.publisher.send_confirmed(frames)
        else:
            await self.publisher.send(frames, topics, payloads)
        return len(frames)

    # ------------------------------------------------------------------ telemetry
    async def stream(self, agency: str, rate: float, duration_s: float) -> None:
        """Round-robin GPS epochs at ``rate`` a second for ``duration_s``, then stop: a
        message each (1 Hz), or the due reports of :meth:`prepare_motion`'s schedule."""
        sched, self._schedule = self._schedule, None
        if sched is not None and sched.rate != rate:
            raise ValueError(f"the motion schedule is for {sched.rate:g} epochs/s, not {rate:g}")
        # Every device's frame header before the clock starts: built on the first tick,
        # 100,000 of them stall it past _MAX_BURST_S and skip that many epochs.
        if sched is None:
            self._frame_heads(agency)
        else:
            self._motion_heads(agency)
        self.streaming = True
        self.stream_sent = self.stream_skipped = 0
        epochs = cursor = 0
        start = time.monotonic()
        try:
            while (elapsed := time.monotonic() - start) < duration_s:
                due = int(rate * elapsed) - epochs
                cap = max(1, int(rate * _MAX_BURST_S))
                if due > cap:
                    self.stream_lag_s = max(self.stream_lag_s, (due - cap) / rate)
                    if sched is None:  # a stalled device sends only its latest fix
                        epochs += due - cap
                        self.stream_skipped += due - cap
                    # A motion-scaled report is sent late, never skipped: its device
                    # decided to send it, and a standing one skipped would say nothing
                    # until its next heartbeat, a gap no device leaves.
                    due = cap
                if due > 0:
                    epochs += due
                    if sched is None:
                        packets, topics, payloads = self._next(agency, due, time.time())
                    else:
                        cursor, packets, topics, payloads = self._due_motion(
                            sched, agency, cursor, epochs, time.time()
                        )
                    if packets:
                        await self.publisher.send(packets, topics, payloads)
                    self.stream_sent += len(packets)
                    self.sent += len(packets)
                await asyncio.sleep(_TICK_S)
        finally:
            self.streaming = False

    async def stream_prepared(self, agency: str, rate: float, duration_s: float) -> None:
        """As :meth:`stream`, from one round of the fleet's frames built ahead, their
        timestamps brought up to date per chunk: ``bench --overload`` must offer twice
        what the broker delivers, which is more than building every message allows
        (about 4 µs each: positions advanced, payload packed). Positions stay where the
        round left them; what is measured is the load, not the motion."""
        if not isinstance(self.publisher, RawPublisher):
            await self.stream(agency, rate, duration_s)
            return
        stamp = time.time()
        packets, _, _ = self._next(agency, len(self.fleet), stamp)
        old = _TS_PREFIX + _TS.pack(stamp)
        chunks = [
            (b"".join(packets[k : k + _CHUNK]), len(packets[k : k + _CHUNK]))
            for k in range(0, len(packets), _CHUNK)
        ]
        self.streaming = True
        self.stream_sent = self.stream_skipped = 0
        start = time.monotonic()
        turn = 0
        try:
            while (elapsed := time.monotonic() - start) < duration_s:
                due = int(rate * elapsed) - self.stream_sent - self.stream_skipped
                cap = max(1, int(rate * _MAX_BURST_S))
                if due > cap:
                    self.stream_lag_s = max(self.stream_lag_s, (due - cap) / rate)
                    self.stream_skipped += due - cap
                    due = cap
                new = _TS_PREFIX + _TS.pack(time.time())
                out: list[bytes] = []
                while due > 0:
                    chunk, count = chunks[turn]
                    turn = (turn + 1) % len(chunks)
                    out.append(chunk.replace(old, new))
                    due -= count
                    self.stream_sent += count
                    self.sent += count
                if out:
                    await self.publisher.write(b"".join(out))
                await asyncio.sleep(_TICK_S)
        finally:
            self.streaming = False

    def prepare_flood(self, agency: str, count: int) -> list[bytes]:
        """``count`` telemetry frames, built ahead so the flood measures only sending."""
        ts = time.time()
        packets, _, _ = self._next(agency, count, ts)
        return [b"".join(packets[start : start + 512]) for start in range(0, count, 512)]

    async def flood(
        self, chunks: list[bytes], count: int, agency: str, rate: float | None
    ) -> dict[str, Any]:
        """Send the prepared frames flat out, or paced at ``rate`` msg/s."""
        start = time.perf_counter()
        if isinstance(self.publisher, RawPublisher):
            per_chunk = 512
            for k, chunk in enumerate(chunks):
                if rate is not None:
                    target = start + k * per_chunk / rate
                    delay = target - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self.publisher.write(chunk)
        else:
            batch = 512
            for k in range(0, count, batch):
                if rate is not None:
                    delay = start + k / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                packets, topics, payloads = self._next(agency, min(batch, count - k), time.time())
                await self.publisher.send(packets, topics, payloads)
        seconds = time.perf_counter() - start
        self.sent += count
        return {"sent": count, "seconds": seconds}
