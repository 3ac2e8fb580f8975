"""The engine on the in-process bus: the whole trigger path, with no broker.

The same engine that runs on Mosquitto, behind the transport seam; what these tests
see is what a device and an integrator would see on the wire.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from actimesh.broker.codec import decode, encode
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    Activation,
    Command,
    Confirmation,
    ConfirmStatus,
    DeadLetter,
    DeviceKind,
    DeviceState,
    EngineStatus,
    Event,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.topics import Topics
from actimesh.broker.transport import Transport
from actimesh.geofence import InclusionPolicy, destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings
from tests.waiting import eventually, quiet_for

TOPICS = Topics("am-memory")
LAT, LON = 51.0447, -114.0719  # Calgary


class Wire:
    """What the engine published, by topic."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload in self.messages if t == topic]


@asynccontextmanager
async def running(
    tmp_path: Path, *, ack_timeout_s: float = 3.0
) -> AsyncIterator[tuple[Engine, MemoryBus, Wire, CommandSigner]]:
    bus = MemoryBus()
    seam: Transport = bus  # the fake is a Transport, as MqttTransport is
    wire = Wire()
    bus.listen(wire)
    signer = CommandSigner.generate()
    async with SqliteLedger(tmp_path / "ledger.sqlite3") as ledger:
        engine = Engine(
            topics=TOPICS,
            transport=seam,
            ledger=ledger,
            rules=DEFAULT_RULES,
            policy=InclusionPolicy(),
            signer=signer,
            settings=EngineSettings(warmup_s=0.01, ack_timeout_s=ack_timeout_s),
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(engine.run(), name="engine-on-memory-bus")
            async with asyncio.timeout(10):
                await engine.warmed.wait()
            try:
                yield engine, bus, wire, signer
            finally:
                task.cancel()


async def announce(
    bus: MemoryBus, device_id: str, kind: DeviceKind, lat: float, lon: float
) -> None:
    now = time.time()
    presence = Presence(online=True, ts=now, device_kind=kind)
    await bus.deliver(TOPICS.presence(device_id), encode(presence))
    fix = Telemetry(ts=now, state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=3.0)
    await bus.deliver(TOPICS.telemetry(device_id), encode(fix))


async def test_a_taser_draw_commands_the_body_camera_in_range_and_not_the_one_beyond(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as (engine, bus, wire, signer):
        near_lat, near_lon = destination(LAT, LON, 90.0, 5.0)
        far_lat, far_lon = destination(LAT, LON, 90.0, 40.0)
        await announce(bus, "cew1", DeviceKind.CEW, LAT, LON)
        await announce(bus, "bwc-near", DeviceKind.BODY_CAM, near_lat, near_lon)
        await announce(bus, "bwc-far", DeviceKind.BODY_CAM, far_lat, far_lon)

        draw = Event(eid="e1", type="taser_draw", ts=time.time(), lat=LAT, lon=LON, acc=3.0)
        assert await bus.deliver(TOPICS.event("cew1"), encode(draw)) == 1
        aid = activation_id("cew1", "e1")

        (command,) = [decode(Command, p) for p in wire.on(TOPICS.command("bwc-near"))]
        assert command.aid == aid
        signer.verifier().verify(
            command, agency=TOPICS.agency, device_id="bwc-near", now=time.time()
        )
        assert wire.on(TOPICS.command("bwc-far")) == []

        # Durable first, then acknowledged, confirmed and published.
        await eventually(lambda: not bus.unacknowledged)
        assert await engine.ledger.activation(aid) is not None
        (confirmation,) = [decode(Confirmation, p) for p in wire.on(TOPICS.confirm("cew1"))]
        assert (confirmation.status, confirmation.aid) == (ConfirmStatus.ACTIVATED, aid)
        (record,) = [decode(Activation, p) for p in wire.on(TOPICS.activations("taser_draw"))]
        assert [c.id for c in record.cameras] == ["bwc-near"]
        assert bus.stray_acks == 0


async def test_the_engine_announces_itself_and_dead_letters_what_it_refuses(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as (engine, bus, wire, _signer):
        status = [decode(EngineStatus, p) for p in wire.on(TOPICS.engine_status("engine-1"))]
        assert [s.online for s in status] == [True]

        await bus.deliver(TOPICS.event("cew1"), b"\xc1 not msgpack")
        (letter,) = [decode(DeadLetter, p) for t, p in wire.messages if "/deadletter/" in t]
        assert letter.reason == "malformed"
        assert engine.stats.rejected["malformed"] == 1
        assert not bus.unacknowledged  # a refused message is acknowledged, never redelivered


async def test_a_final_answer_lost_after_received_is_asked_for_again(tmp_path: Path) -> None:
    # Seen in the fault drill's broker kill -9 on Mosquitto: a camera's ``recording``
    # answer, taken by a broker that was then killed before it saved the engine's
    # session, never reached the engine, and the camera, holding its PUBACK, never sent it
    # again. The engine asks again until it hears the final answer.
    async with running(tmp_path, ack_timeout_s=0.2) as (engine, bus, wire, _signer):
        await announce(bus, "cew1", DeviceKind.CEW, LAT, LON)
        await announce(bus, "bwc", DeviceKind.BODY_CAM, *destination(LAT, LON, 90.0, 5.0))
        draw = Event(eid="e1", type="taser_draw", ts=time.time(), lat=LAT, lon=LON, acc=3.0)
        await bus.deliver(TOPICS.event("cew1"), encode(draw))
        aid = activation_id("cew1", "e1")
        commands = TOPICS.command("bwc")
        assert len(wire.on(commands)) == 1
        received = Ack(aid=aid, status=AckStatus.RECEIVED, pre_cov=0.0, ts=time.time())
        await bus.deliver(TOPICS.ack("bwc"), encode(received))
        # Its ``recording`` answer is lost on the way: the same command comes again.
        await eventually(lambda: len(wire.on(commands)) >= 2, timeout=5)
        assert {decode(Command, p).aid for p in wire.on(commands)} == {aid}
        recording = Ack(aid=aid, status=AckStatus.RECORDING, pre_cov=30.0, ts=time.time())
        await bus.deliver(TOPICS.ack("bwc"), encode(recording))

        async def written() -> bool:
            return {a.status for a in await engine.ledger.acks(aid)} == {"received", "recording"}

        await eventually(written, timeout=5)
        assert engine.deliveries.get(aid, "bwc") is None
        sent = len(wire.on(commands))
        await quiet_for(0.2 * 4)  # finished: no command may follow
        assert len(wire.on(commands)) == sent
