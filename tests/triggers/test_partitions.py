"""Engines that own geographic partitions, on the in-process bus.

Two engines, each serving one of two partitions, with the relay between them: a camera
9 m from a trigger on the other side of a partition boundary is commanded, in each of
the eight compass directions, in a city, across the 180th meridian and over the North
Pole; each trigger is planned by one engine only; and each engine indexes only its
partition's telemetry plus the halo.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import (
    Command,
    DeadLetter,
    DeviceKind,
    DeviceState,
    Event,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.topics import Topics
from actimesh.errors import ConfigError
from actimesh.geofence import Cell, PartitionMap, destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings
from tests.engines import running
from tests.partitions import (
    CALGARY,
    HALO_M,
    POLICY,
    RULES,
    cells,
    near_a_boundary,
    two_engines,
)
from tests.waiting import eventually

TOPICS = Topics("am-part")
COMPASS = {"n": 0.0, "ne": 45.0, "e": 90.0, "se": 135.0, "s": 180.0, "sw": 225.0, "w": 270.0}
COMPASS["nw"] = 315.0
#: 4 m west of the 180th meridian, in Fiji: the east-side cameras are at longitude -179.99...
ANTIMERIDIAN = (-16.8, 179.99996)
#: 5.6 m from the North Pole: the northern cameras are on the far side of it.
NORTH_POLE = (89.99995, 12.0)


class Mesh:
    """Two partitioned engines on one bus, and the relayed telemetry carried between
    them (the bus hands what a service publishes to listeners only)."""

    def __init__(self, bus: MemoryBus, engines: list[Engine]) -> None:
        self.bus = bus
        self.engines = engines
        self.published: list[tuple[str, bytes]] = []
        self._relayed: list[tuple[str, bytes]] = []
        bus.listen(self._heard)

    def _heard(self, topic: str, payload: bytes) -> None:
        if topic.startswith(f"{TOPICS.prefix}/engine/part/"):
            self._relayed.append((topic, payload))
        else:
            self.published.append((topic, payload))

    async def pump(self) -> None:
        while self._relayed:
            topic, payload = self._relayed.pop(0)
            await self.bus.deliver(topic, payload)

    async def announce(self, device_id: str, kind: DeviceKind, at: tuple[float, float]) -> None:
        now = time.time()
        await self.bus.deliver(
            TOPICS.presence(device_id), encode(Presence(online=True, ts=now, device_kind=kind))
        )
        fix = Telemetry(ts=now, state=DeviceState.BUFFERING, lat=at[0], lon=at[1], acc=2.0)
        await self.bus.deliver(TOPICS.telemetry(device_id), encode(fix))
        await self.pump()

    def commands(self, device_id: str) -> list[Command]:
        topic = TOPICS.command(device_id)
        return [decode(Command, p) for t, p in self.published if t == topic]


@asynccontextmanager
async def mesh(tmp_path: Path, cells: Callable[[], PartitionMap]) -> AsyncIterator[Mesh]:
    bus = MemoryBus()
    async with AsyncExitStack() as stack:
        engines = await two_engines(stack, TOPICS, lambda: bus, tmp_path, partitions=cells)
        the_mesh = Mesh(bus, engines)
        async with running(engines, warm_within=10):
            yield the_mesh


def only_the_trigger_cell(trigger: tuple[float, float]) -> Callable[[], PartitionMap]:
    """4 m cells, the trigger's alone in partition 0: every camera 9 m away, whatever
    its direction, is in another cell (9 m moves some ECEF axis by >= 5.2 m) and so in
    partition 1, on the far side of a boundary."""
    probe = PartitionMap(2, cell_m=4.0)
    home: Cell = probe.cell_of(*trigger)
    return lambda: PartitionMap(
        2, cell_m=4.0, halo_m=HALO_M, assign=lambda cell: 0 if cell == home else 1
    )


async def draw_and_check(the_mesh: Mesh, trigger: tuple[float, float], owner: int) -> None:
    """A TASER draw at ``trigger``, cameras 9 m away in the eight directions: all are
    commanded once, by the owner's engine; the other engine leaves the event alone."""
    cells = the_mesh.engines[0].partitioning
    assert cells is not None
    assert cells.cells.owner(*trigger) == owner
    await the_mesh.announce("cew1", DeviceKind.CEW, trigger)
    across = 0
    for name, bearing in COMPASS.items():
        at = destination(*trigger, bearing, 9.0)
        across += cells.cells.owner(*at) != owner
        await the_mesh.announce(f"bwc-{name}", DeviceKind.BODY_CAM, at)
    assert across > 0, "no camera across the boundary: the test proves nothing"

    draw = Event(eid="e1", type="taser_draw", ts=time.time(), lat=trigger[0], lon=trigger[1])
    # One delivery per partition's share of events: both engines see it.
    assert await the_mesh.bus.deliver(TOPICS.event("cew1"), encode(draw)) == 2
    aid = activation_id("cew1", "e1")
    for name in COMPASS:
        assert [c.aid for c in the_mesh.commands(f"bwc-{name}")] == [aid], name
    planner, bystander = the_mesh.engines[owner], the_mesh.engines[1 - owner]
    assert (planner.stats.events, planner.stats.events_elsewhere) == (1, 0)
    assert (bystander.stats.events, bystander.stats.events_elsewhere) == (0, 1)
    await eventually(lambda: not the_mesh.bus.unacknowledged)
    assert await planner.ledger.activation(aid) is not None
    assert await bystander.ledger.activation(aid) is None


@pytest.mark.parametrize(
    "trigger", [CALGARY, ANTIMERIDIAN, NORTH_POLE], ids=["city", "180th-meridian", "north-pole"]
)
async def test_cameras_across_the_boundary_in_every_direction_are_commanded(
    tmp_path: Path, trigger: tuple[float, float]
) -> None:
    async with mesh(tmp_path, only_the_trigger_cell(trigger)) as the_mesh:
        await draw_and_check(the_mesh, trigger, owner=0)
        # Across the 180th meridian the eastern cameras report longitudes near -180.
        if trigger is ANTIMERIDIAN:
            assert destination(*trigger, 90.0, 9.0)[1] < -179.9


async def test_a_boundary_drawn_by_rendezvous_hashing(tmp_path: Path) -> None:
    """The default 2 km cells and hash: a trigger 3 m from where the owner changes."""
    here, owner = near_a_boundary()
    async with mesh(tmp_path, cells) as the_mesh:
        await draw_and_check(the_mesh, here, owner=owner)


async def test_each_engine_indexes_only_its_partition_and_the_halo(tmp_path: Path) -> None:
    async with mesh(tmp_path, lambda: PartitionMap(2, halo_m=HALO_M)) as the_mesh:
        cells = PartitionMap(2, halo_m=HALO_M)
        spots = [destination(*CALGARY, b, d) for b in range(0, 360, 15) for d in (500, 3000, 9000)]
        for i, spot in enumerate(spots):
            await the_mesh.announce(f"bwc-{i}", DeviceKind.BODY_CAM, spot)
        e0, e1 = the_mesh.engines
        expected = [sum(k in cells.partitions_for(*s) for s in spots) for k in (0, 1)]
        assert [e0.telemetry_link.stats.received, e1.telemetry_link.stats.received] == expected
        assert [len(e0.index), len(e1.index)] == expected
        assert 0 < expected[0] < len(spots)
        assert 0 < expected[1] < len(spots)
        # Every raw fix was relayed by one engine (the shared subscription), not both.
        assert e0.stats.relayed + e1.stats.relayed == len(spots)
        assert e0.stats.relay_copies + e1.stats.relay_copies == sum(expected)


async def test_an_event_without_a_position_is_planned_where_its_sender_is(
    tmp_path: Path,
) -> None:
    trigger = CALGARY
    async with mesh(tmp_path, only_the_trigger_cell(trigger)) as the_mesh:
        await the_mesh.announce("cew1", DeviceKind.CEW, trigger)
        await the_mesh.announce("bwc-e", DeviceKind.BODY_CAM, destination(*trigger, 90.0, 9.0))
        draw = Event(eid="e2", type="taser_draw", ts=time.time())
        await the_mesh.bus.deliver(TOPICS.event("cew1"), encode(draw))
        assert [c.aid for c in the_mesh.commands("bwc-e")] == [activation_id("cew1", "e2")]
        assert [e.stats.events_elsewhere for e in the_mesh.engines] == [0, 1]


async def test_an_unreadable_event_is_refused_once(tmp_path: Path) -> None:
    async with mesh(tmp_path, lambda: PartitionMap(2, halo_m=HALO_M)) as the_mesh:
        await the_mesh.bus.deliver(TOPICS.event("cew1"), b"\xc1 not msgpack")
        letters = [decode(DeadLetter, p) for t, p in the_mesh.published if "/deadletter/" in t]
        assert [letter.reason for letter in letters] == ["malformed"]
        home = the_mesh.engines[0].partitioning
        assert home is not None
        assert the_mesh.engines[home.home("cew1")].stats.rejected["malformed"] == 1
        assert not the_mesh.bus.unacknowledged


async def test_one_engine_serving_both_partitions_plans_each_event_once(tmp_path: Path) -> None:
    """Failover by configuration: the survivor lists the dead engine's partition too."""
    bus = MemoryBus()
    trigger = CALGARY
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        engine = Engine(
            topics=TOPICS,
            transport=bus,
            ledger=ledger,
            rules=RULES,
            policy=POLICY,
            signer=CommandSigner.generate(),
            settings=EngineSettings(warmup_s=0.01, partitions=2, partition=(0, 1)),
            partitions=only_the_trigger_cell(trigger)(),
        )
        the_mesh = Mesh(bus, [engine])
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(engine.run())
            async with asyncio.timeout(10):
                await engine.warmed.wait()
            await the_mesh.announce("cew1", DeviceKind.CEW, trigger)
            for name, bearing in COMPASS.items():
                at = destination(*trigger, bearing, 9.0)
                await the_mesh.announce(f"bwc-{name}", DeviceKind.BODY_CAM, at)
            now = time.time()
            draw = Event(eid="e3", type="taser_draw", ts=now, lat=trigger[0], lon=trigger[1])
            assert await bus.deliver(TOPICS.event("cew1"), encode(draw)) == 2
            for name in COMPASS:
                assert len(the_mesh.commands(f"bwc-{name}")) == 1
            assert (engine.stats.events, engine.stats.events_elsewhere) == (1, 1)
            task.cancel()


def test_an_engine_refuses_a_halo_narrower_than_its_rules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"halo \(15.144 m\) is narrower .* \(1006 m\)"):
        Engine(
            topics=TOPICS,
            transport=MemoryBus(),
            ledger=SqliteLedger(tmp_path / "l.sqlite3"),
            rules=DEFAULT_RULES,
            policy=POLICY,
            signer=CommandSigner.generate(),
            settings=EngineSettings(partitions=2),
            partitions=PartitionMap(2, halo_m=HALO_M),
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"partitions": 2, "partition": [2]}, r"from 0 to 1 \(engine.partitions = 2\), got \[2\]"),
        ({"partitions": 2, "partition": [1, 1]}, "lists a partition twice"),
        ({"partitions": 2.5}, "whole number"),
    ],
)
def test_partition_settings_are_checked(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineSettings(**settings)  # type: ignore[arg-type]  # wrong values on purpose


def test_a_list_from_the_config_file_is_kept_sorted_as_a_tuple() -> None:
    settings = EngineSettings(partitions=4, partition=[3, 1])  # type: ignore[arg-type]  # as TOML gives it
    assert settings.partition == (1, 3)
    assert settings.served == (1, 3)
    assert EngineSettings(partitions=3).served == (0, 1, 2)
