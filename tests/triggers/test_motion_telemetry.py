"""Motion-scaled telemetry through the engine: from the wire (hb, db, spd) to who records
and why the others were left out, 29.9 ft against 30.1 ft, moving and still, motion-scaled
and 1 Hz, in both inclusion policies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import (
    Activation,
    DeviceKind,
    DeviceState,
    Event,
    Presence,
    Telemetry,
)
from actimesh.broker.topics import Topics
from actimesh.geofence import InclusionMode, InclusionPolicy, MotionPromise, destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings
from tests.waiting import eventually

TOPICS = Topics("am-motion")
LAT, LON = 51.0447, -114.0719
FT = 0.3048
INSIDE, OUTSIDE = 29.9 * FT, 30.1 * FT
DB = 30 * FT / 4


@dataclass(frozen=True)
class Camera:
    """One body camera: where it is, how old its last report is, how it reports."""

    dist: float
    age: float = 0.0
    #: None: a 1 Hz device (no hb/db); else its speed at the fix.
    speed: float | None = None
    motion: bool = True


#: The cameras of the scene, and who records in each policy (the rest: why not).
CAMERAS = {
    # Still, the last fix re-asserted by a heartbeat 12 s ago: fresh, exact.
    "still-in": Camera(INSIDE, age=12.0, speed=0.0),
    "still-out": Camera(OUTSIDE, age=12.0, speed=0.0),
    # Walking, its fix 2 s old: may be 2.29 m (its dead-band) closer.
    "walking-out": Camera(OUTSIDE, age=2.0, speed=1.4),
    # Moving, its fix taken as the event happened: exact.
    "driving-in": Camera(INSIDE, age=0.0, speed=14.0),
    "driving-out": Camera(OUTSIDE, age=0.0, speed=14.0),
    # Its heartbeat overdue (10 s + 3 s grace): stale.
    "silent-in": Camera(INSIDE, age=14.0, speed=0.0),
    # 1 Hz devices: exact; 12 s old is stale for them.
    "hz-in": Camera(INSIDE, motion=False),
    "hz-out": Camera(OUTSIDE, motion=False),
    "hz-old-in": Camera(INSIDE, age=12.0, motion=False),
}
EXPECTED = {
    InclusionMode.INCLUSIVE: {
        "commanded": ["driving-in", "hz-in", "still-in", "walking-out"],
        "left_out": {
            "driving-out": "too_far",
            "hz-old-in": "stale",
            "hz-out": "too_far",
            "silent-in": "stale",
            "still-out": "too_far",
        },
    },
    InclusionMode.CENTRE: {
        "commanded": ["driving-in", "hz-in", "still-in"],
        "left_out": {
            "driving-out": "too_far",
            "hz-old-in": "stale",
            "hz-out": "too_far",
            "silent-in": "stale",
            "still-out": "too_far",
            "walking-out": "too_far",
        },
    },
}


@asynccontextmanager
async def running(
    tmp_path: Path, policy: InclusionPolicy, settings: EngineSettings | None = None
) -> AsyncIterator[tuple[Engine, MemoryBus, list[tuple[str, bytes]]]]:
    bus = MemoryBus()
    wire: list[tuple[str, bytes]] = []
    bus.listen(lambda topic, payload: wire.append((topic, payload)))
    async with SqliteLedger(tmp_path / "ledger.sqlite3") as ledger:
        engine = Engine(
            topics=TOPICS,
            transport=bus,
            ledger=ledger,
            rules=DEFAULT_RULES,
            policy=policy,
            signer=CommandSigner.generate(),
            settings=EngineSettings(warmup_s=0.01) if settings is None else settings,
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(engine.run(), name="engine-motion")
            async with asyncio.timeout(10):
                await engine.warmed.wait()
            try:
                yield engine, bus, wire
            finally:
                task.cancel()


async def drawn(bus: MemoryBus, wire: Sequence[tuple[str, bytes]], draw: Event) -> Activation:
    """CEW ``cew1`` raises ``draw``: the one activation record the engine publishes."""
    await bus.deliver(TOPICS.event("cew1"), encode(draw))
    records = TOPICS.activations(draw.type)

    def published() -> list[bytes]:
        return [payload for topic, payload in wire if topic == records]

    await eventually(published)
    (record,) = [decode(Activation, p) for p in published()]
    return record


async def place(bus: MemoryBus, device_id: str, camera: Camera, n: int, now: float) -> None:
    presence = Presence(online=True, ts=now, device_kind=DeviceKind.BODY_CAM)
    await bus.deliver(TOPICS.presence(device_id), encode(presence))
    lat, lon = destination(LAT, LON, 40.0 * n, camera.dist)
    fix = Telemetry(
        ts=now - camera.age,
        state=DeviceState.BUFFERING,
        lat=lat,
        lon=lon,
        acc=0.0,
        hb=10.0 if camera.motion else None,
        db=DB if camera.motion else None,
        spd=camera.speed,
    )
    await bus.deliver(TOPICS.telemetry(device_id), encode(fix))


@pytest.mark.parametrize("mode", [InclusionMode.INCLUSIVE, InclusionMode.CENTRE])
async def test_the_boundary_holds_for_motion_scaled_and_1_hz_cameras(
    tmp_path: Path, mode: InclusionMode
) -> None:
    async with running(tmp_path, InclusionPolicy(mode=mode)) as (_engine, bus, wire):
        now = time.time()
        presence = Presence(online=True, ts=now, device_kind=DeviceKind.CEW)
        await bus.deliver(TOPICS.presence("cew1"), encode(presence))
        for n, (device_id, camera) in enumerate(CAMERAS.items()):
            await place(bus, device_id, camera, n, now)
        draw = Event(eid="e1", type="taser_draw", ts=now, lat=LAT, lon=LON, acc=0.0)
        record = await drawn(bus, wire, draw)
    assert sorted(c.id for c in record.cameras) == EXPECTED[mode]["commanded"]
    assert {c.id: c.reason.value for c in record.left_out} == EXPECTED[mode]["left_out"]
    margins = {c.id: c.margin for c in record.left_out}
    if mode is InclusionMode.CENTRE:
        assert set(margins.values()) == {0.0}
    else:
        # Judged exactly (no drift) unless moving with an aged fix; a stale fix still
        # shows the margin it would have had.
        assert margins["still-out"] == 0.0
        assert margins["driving-out"] == 0.0
        assert margins["silent-in"] == 0.0
        assert margins["hz-out"] == 0.0
    ages = {c.id: c.age for c in record.left_out}
    assert ages["silent-in"] == pytest.approx(14.0, abs=0.01)
    assert ages["hz-old-in"] == pytest.approx(12.0, abs=0.01)


async def test_the_reporting_mode_goes_with_the_fix_it_came_with(tmp_path: Path) -> None:
    """A newer 1 Hz fix clears the promise; a late motion-scaled fix changes nothing."""
    async with running(tmp_path, InclusionPolicy()) as (engine, bus, _wire):
        now = time.time()
        topic = TOPICS.telemetry("bwc1")

        async def send(age: float, *, motion: bool) -> None:
            fix = Telemetry(
                ts=now - age,
                state=DeviceState.BUFFERING,
                lat=LAT,
                lon=LON,
                hb=10.0 if motion else None,
                db=DB if motion else None,
                spd=0.5 if motion else None,
            )
            await bus.deliver(topic, encode(fix))

        def mode() -> MotionPromise | None:
            info = engine.fleet.get("bwc1")
            assert info is not None
            return info.motion

        await send(5.0, motion=True)
        assert mode() == (10.0, DB, 0.5)
        await send(4.0, motion=False)
        assert mode() is None
        await send(6.0, motion=True)  # older than the indexed fix: ignored, mode and all
        assert mode() is None


@pytest.mark.parametrize(("motion", "positioned"), [(True, True), (False, False)])
async def test_an_event_without_a_fix_borrows_a_heartbeat_confirmed_one(
    tmp_path: Path, *, motion: bool, positioned: bool
) -> None:
    """A CEW has no GPS: it takes its officer's camera's fix, 12 s old, which is fresh
    from a motion-scaled camera (heartbeat 10 s) and stale from a 1 Hz one."""
    async with running(tmp_path, InclusionPolicy()) as (_engine, bus, wire):
        now = time.time()
        cew = Presence(online=True, ts=now, device_kind=DeviceKind.CEW, paired=("bwc1",))
        await bus.deliver(TOPICS.presence("cew1"), encode(cew))
        await place(bus, "bwc1", Camera(3.0, age=12.0, speed=0.0, motion=motion), 0, now)
        record = await drawn(bus, wire, Event(eid="e1", type="taser_draw", ts=now))
    assert (record.lat is not None) is positioned
    if positioned:
        assert record.lat == pytest.approx(destination(LAT, LON, 0.0, 3.0)[0])
