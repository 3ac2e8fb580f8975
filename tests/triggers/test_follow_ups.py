"""A camera whose fix is stale when its trigger is judged is held, and commanded in a
follow-up activation once a fix after the event puts it within the radius."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    Activation,
    Command,
    DeviceKind,
    DeviceState,
    Event,
    Telemetry,
)
from actimesh.errors import ConfigError
from actimesh.geofence import InclusionMode, InclusionPolicy, destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings
from tests.triggers.test_late_events import online
from tests.triggers.test_motion_telemetry import FT, LAT, LON, TOPICS
from tests.waiting import eventually

#: How long before a prompt trigger each held camera's telemetry stopped.
GAP_S = 15.0


@asynccontextmanager
async def running(
    tmp_path: Path,
    policy: InclusionPolicy,
    *,
    clock: Callable[[], float] = time.time,
    **settings: object,
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
            settings=EngineSettings(warmup_s=0.01, **settings),  # type: ignore[arg-type]
            clock=clock,
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(engine.run(), name="engine-follow-ups")
            async with asyncio.timeout(10):
                await engine.warmed.wait()
            try:
                yield engine, bus, wire
            finally:
                task.cancel()


async def fix(bus: MemoryBus, device_id: str, ts: float, dist: float, bearing: float) -> None:
    lat, lon = destination(LAT, LON, bearing, dist)
    telemetry = Telemetry(
        ts=ts, state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=0.0, hb=1.0, db=2.0, spd=0.0
    )
    await bus.deliver(TOPICS.telemetry(device_id), encode(telemetry))


def records(wire: list[tuple[str, bytes]]) -> list[Activation]:
    topic = TOPICS.activations("taser_draw")
    return [decode(Activation, p) for t, p in wire if t == topic]


def commands(wire: list[tuple[str, bytes]], device_id: str) -> list[Command]:
    topic = TOPICS.command(device_id)
    return [decode(Command, p) for t, p in wire if t == topic]


async def trigger(bus: MemoryBus, cew: str, officer: str, eid: str, now: float) -> None:
    """A prompt trigger from a CEW whose officer's camera has a fresh fix at the centre."""
    await online(bus, cew, DeviceKind.CEW, now, paired=(officer,))
    await online(bus, officer, DeviceKind.BODY_CAM, now)
    await fix(bus, officer, now, 0.0, 0.0)
    await bus.deliver(TOPICS.event(cew), encode(Event(eid=eid, type="taser_draw", ts=now)))


@pytest.mark.parametrize("mode", [InclusionMode.INCLUSIVE, InclusionMode.CENTRE])
async def test_a_camera_stale_at_the_trigger_is_commanded_once_its_next_fix_is_within(
    tmp_path: Path, mode: InclusionMode
) -> None:
    async with running(tmp_path, InclusionPolicy(mode=mode), follow_up_s=5.0) as (
        engine,
        bus,
        wire,
    ):
        now = time.time()
        # Still across the gap: where they were before it, they are after it.
        held = {"in-a": (29.9 * FT, 29.9 * FT), "in-b": (3.0, 3.0), "out": (30.1 * FT, 30.1 * FT)}
        held["walked-off"] = (3.0, 30.0)  # its next fix is 30 m away
        held["silent"] = (3.0, -1.0)  # its telemetry never resumes
        for n, (device_id, (before, _after)) in enumerate(held.items()):
            await online(bus, device_id, DeviceKind.BODY_CAM, now)
            await fix(bus, device_id, now - GAP_S, before, 60.0 * n)
        await trigger(bus, "cew1", "officer", "e1", now)
        (first,) = await eventually(lambda: records(wire))
        assert sorted(c.id for c in first.cameras) == ["officer"]
        assert {c.id for c in first.left_out if c.reason.value == "stale"} == set(held)
        assert engine.stats.follow_up_held == len(held)
        for n, (device_id, (_before, after)) in enumerate(held.items()):
            if after >= 0.0:
                await fix(bus, device_id, now + 1.0, after, 60.0 * n)
        await eventually(lambda: engine.stats.follow_up_expired)
        (follow_up,) = [r for r in records(wire) if r.follows is not None]
        stats = engine.stats
        counts = (stats.follow_up_commanded, stats.follow_up_too_far, stats.follow_up_expired)
        assert counts == (2, 2, 1)
        assert stats.follow_up_activations == 1
        assert len(engine.follow_ups) == 0
        # The follow-up names the first and commands only the two within, at once.
        assert follow_up.follows == first.aid
        assert follow_up.aid != first.aid
        assert follow_up.eid == first.eid
        assert follow_up.ets == first.ets
        assert sorted(c.id for c in follow_up.cameras) == ["in-a", "in-b"]
        assert [c.reason.value for c in follow_up.cameras] == ["proximity", "proximity"]
        for device_id in ("in-a", "in-b"):
            sent = commands(wire, device_id)  # the delivery tracker may have re-sent it
            assert sent
            assert {(c.aid, c.eid, c.ets, c.pre) for c in sent} == {
                (follow_up.aid, "e1", now, first.pre)
            }
        for device_id in ("out", "walked-off", "silent"):
            assert commands(wire, device_id) == []
        # A camera's answer to the follow-up is accepted: it references the follow-up.
        answer = Ack(aid=follow_up.aid, status=AckStatus.RECEIVED, pre_cov=30.0, ts=now + 2.0)
        await bus.deliver(TOPICS.ack("in-a"), encode(answer))
        await eventually(lambda: engine.stats.acks)
        found = await eventually(lambda: engine.ledger.acks(follow_up.aid))
        assert [a.device_id for a in found] == ["in-a"]
        assert engine.stats.acks_not_commanded == 0
    async with SqliteLedger(tmp_path / "ledger.sqlite3") as ledger:
        first_row = await ledger.activation(first.aid)
        follow_row = await ledger.activation(follow_up.aid)
    assert first_row is not None
    assert follow_row is not None
    assert {d.device_id: d.reason for d in first_row[1] if not d.commanded} == dict.fromkeys(
        held, "stale"
    )
    rows = {d.device_id: d for d in follow_row[1]}
    assert sorted(rows) == ["in-a", "in-b"]
    assert {d.reason for d in rows.values()} == {"proximity_between"}
    assert rows["in-a"].distance_m == pytest.approx(29.9 * FT, abs=1e-3)
    assert follow_row[0].rule["follows"] == first.aid
    assert follow_row[0].rule["eid"] == "e1"


async def test_a_camera_whose_device_went_silent_is_held_longer_than_one_heard_without_gps(
    tmp_path: Path,
) -> None:
    """A device cut off with its node is not heard at all until its keepalive notices and
    it reconnects: its camera is held ``follow_up_silent_s``. One heard without a position
    (GPS lost, link fine) is held ``follow_up_s`` only."""
    ahead = [0.0]  # how far the engine's clock runs ahead of the wall clock

    def clock() -> float:
        return time.time() + ahead[0]

    hold = {"follow_up_s": 2.0, "follow_up_silent_s": 30.0}
    async with running(tmp_path, InclusionPolicy(), clock=clock, **hold) as (engine, bus, wire):
        now = time.time()
        for n, device_id in enumerate(("cut-off", "no-gps")):
            await online(bus, device_id, DeviceKind.BODY_CAM, now)
            await fix(bus, device_id, now, 3.0, 90.0 * n)
        ahead[0] = GAP_S
        # Heard since, without a position.
        no_fix = Telemetry(ts=now + GAP_S, state=DeviceState.BUFFERING)
        await bus.deliver(TOPICS.telemetry("no-gps"), encode(no_fix))
        await trigger(bus, "cew1", "officer", "e1", now + GAP_S)
        (first,) = await eventually(lambda: records(wire))
        assert {c.id for c in first.left_out if c.reason.value == "stale"} == {"cut-off", "no-gps"}
        assert (engine.stats.follow_up_held, engine.stats.follow_up_silent) == (2, 1)
        # Past follow_up_s, well inside follow_up_silent_s: only the heard one is let go.
        ahead[0] = GAP_S + 5.0
        await eventually(lambda: engine.stats.follow_up_expired == 1)
        assert len(engine.follow_ups) == 1
        for n, device_id in enumerate(("cut-off", "no-gps")):
            await fix(bus, device_id, now + GAP_S + 5.0, 3.0, 90.0 * n)
        (follow_up,) = await eventually(lambda: [r for r in records(wire) if r.follows])
        assert [c.id for c in follow_up.cameras] == ["cut-off"]
        assert commands(wire, "no-gps") == []
        assert len(engine.follow_ups) == 0


def test_a_silent_devices_hold_is_no_shorter_than_the_ordinary_one() -> None:
    with pytest.raises(ConfigError, match="follow_up_silent_s"):
        EngineSettings(follow_up_s=20.0, follow_up_silent_s=19.9)
    assert EngineSettings(follow_up_s=20.0, follow_up_silent_s=20.0).follow_up_silent_s == 20.0


async def test_held_cameras_are_bounded_per_activation_and_overall(tmp_path: Path) -> None:
    bounds = {"follow_up_per_activation": 2, "follow_up_max": 3}
    async with running(tmp_path, InclusionPolicy(), clock=time.time, **bounds) as (
        engine,
        bus,
        wire,
    ):
        now = time.time()
        for n in range(3):
            device_id = f"near-{n}"
            await online(bus, device_id, DeviceKind.BODY_CAM, now)
            await fix(bus, device_id, now - GAP_S, 3.0, 120.0 * n)
        await trigger(bus, "cew1", "officer1", "e1", now)
        await eventually(lambda: len(records(wire)) == 1)
        assert (engine.stats.follow_up_held, engine.stats.follow_up_refused) == (2, 1)
        await trigger(bus, "cew2", "officer2", "e2", now + 0.5)
        await eventually(lambda: len(records(wire)) == 2)
        assert (engine.stats.follow_up_held, engine.stats.follow_up_refused) == (3, 3)
        assert len(engine.follow_ups) == 3
