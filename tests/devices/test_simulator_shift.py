"""A simulated shift, driven with a clock of the test's own: the same seed gives the same
fleet and shift, triggers come at a shift's rate, crews keep to the streets and
footways, coverage comes and goes, and docked cameras offload to a real evidence store."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent
from actimesh.devices.simulator import DEFAULT_SEED, FleetSimulator, SimSettings
from actimesh.devices.simulator_streets import RoadGraph, StreetMap
from actimesh.devices.simulator_world import Mode, Unit
from actimesh.security.provision import specs_of
from actimesh.security.registry import Registry
from tests.devices.osm import grid_city
from tests.evidence.helpers import evidence_store, key_of, record
from tests.waiting import eventually

T0 = 1_800_000_000.0


@dataclass
class Recorded:
    """The world's actions, recorded instead of carried out."""

    fired: list[tuple[float, str, str]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    outages: list[tuple[str, float]] = field(default_factory=list)
    docks: list[str] = field(default_factory=list)
    now: float = T0

    async def fire(self, agent: DeviceAgent, event_type: str) -> None:
        self.fired.append((self.now, agent.device_id, event_type))

    async def stop(self, agent: DeviceAgent) -> None:
        self.stopped.append(agent.device_id)

    async def outage(self, agent: DeviceAgent, seconds: float) -> None:
        self.outages.append((agent.device_id, seconds))

    def dock(self, unit: Unit) -> None:
        self.docks.append(unit.name)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def fleet(tmp_path: Path, clock: Clock, **kw: Any) -> FleetSimulator:
    return FleetSimulator(
        topics=Topics("sim"),
        broker_host="127.0.0.1",
        broker_port=1,
        data_dir=tmp_path,
        settings=SimSettings(**kw),
        clock=clock,
    )


async def shift(sim: FleetSimulator, clock: Clock, hours: float, dt: float = 1.0) -> Recorded:
    """Run the world for ``hours`` of simulated time, ``dt`` a step."""
    actions = Recorded()
    for _ in range(int(hours * 3600 / dt)):
        clock.now += dt
        actions.now = clock.now
        await sim.world.step(clock.now, dt, actions)
    return actions


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> StreetMap:
    path = tmp_path_factory.mktemp("map") / "city.osm.pbf"
    grid_city(path)
    return StreetMap.load(path)


@pytest.mark.parametrize("on_streets", [False, True])
async def test_the_same_seed_gives_the_same_fleet_and_the_same_shift(
    tmp_path: Path, city: StreetMap, *, on_streets: bool
) -> None:
    streets = city if on_streets else None
    runs = []
    for n in range(2):
        clock = Clock()
        sim = fleet(tmp_path / str(n), clock, units=12, streets=streets)
        assert sim.settings.seed == DEFAULT_SEED
        start = [(u.car.lat, u.car.lon) for u in sim.units]
        actions = await shift(sim, clock, 1)
        end = [(o.lat, o.lon) for u in sim.units for o in (u.car, *u.officers)]
        runs.append(([a.device_id for a in sim.agents], start, actions.fired, end))
    assert runs[0] == runs[1]
    assert runs[0][2], "an hour of twelve crews without a trigger"
    other = fleet(tmp_path / "other", Clock(), units=12, seed=DEFAULT_SEED + 1, streets=streets)
    assert [(u.car.lat, u.car.lon) for u in other.units] != runs[0][1]


def test_a_larger_fleet_keeps_the_devices_of_a_smaller_one(tmp_path: Path) -> None:
    small = {a.device_id for a in fleet(tmp_path / "s", Clock(), units=5).agents}
    large = {a.device_id for a in fleet(tmp_path / "l", Clock(), units=9).agents}
    assert small < large


async def test_a_shift_has_a_few_triggers_an_hour_per_crew(tmp_path: Path) -> None:
    clock = Clock()
    crews, hours = 24, 6.0
    sim = fleet(tmp_path, clock, units=crews)
    actions = await shift(sim, clock, hours, dt=2.0)
    per_crew_hour = len(actions.fired) / crews / hours
    # About one incident an hour per crew, each two or three cruisers' lights and often
    # a CEW: three to four triggers. 144 incidents: the bounds are several sigma wide.
    assert 2.0 < per_crew_hour < 6.0, per_crew_hour
    assert 0.7 < sim.world.incidents / crews / hours < 1.3
    kinds = {kind for _, _, kind in actions.fired}
    assert {"emergency_lights", "taser_draw"} <= kinds
    # Officers stop what they recorded when a scene ends; some crews dock afterwards.
    assert actions.stopped
    assert actions.docks


async def test_busy_shows_about_ten_incidents_a_minute_for_24_crews(tmp_path: Path) -> None:
    clock = Clock()
    sim = FleetSimulator(
        topics=Topics("sim"),
        broker_host="127.0.0.1",
        broker_port=1,
        data_dir=tmp_path,
        settings=SimSettings(units=24).busy(),
        clock=clock,
    )
    actions = await shift(sim, clock, 0.5, dt=1.0)
    per_minute = sim.world.incidents / 30
    assert 8.0 < per_minute < 12.0, per_minute
    assert len(actions.fired) / 30 > 10  # triggers a minute: ten times a shift's


def _segments(graph: RoadGraph) -> tuple[np.ndarray, np.ndarray, float]:
    lat0 = sum(lat for lat, _ in graph.nodes.values()) / len(graph.nodes)
    k = np.cos(np.radians(lat0))

    def xy(p: tuple[float, float]) -> tuple[float, float]:
        return p[1] * 111_320.0 * k, p[0] * 111_320.0

    a = np.array([xy(graph.nodes[u]) for u, _ in graph.edges])
    b = np.array([xy(graph.nodes[v]) for _, v in graph.edges])
    return a, b, float(k)


def _off_road_m(segs: tuple[np.ndarray, np.ndarray, float], lat: float, lon: float) -> float:
    a, b, k = segs
    p = np.array([lon * 111_320.0 * k, lat * 111_320.0])
    d = b - a
    t = np.clip(
        np.einsum("ij,ij->i", p - a, d) / np.maximum(np.einsum("ij,ij->i", d, d), 1e-9), 0, 1
    )
    return float(np.min(np.linalg.norm(a + t[:, None] * d - p, axis=1)))


async def test_crews_drive_the_streets_and_officers_walk_the_footways(
    tmp_path: Path, city: StreetMap
) -> None:
    clock = Clock()
    sim = fleet(tmp_path, clock, units=6, streets=city, incidents_per_crew_hour=4.0)
    drive, walk = _segments(city.drive), _segments(city.walk)
    actions = Recorded()
    walked = 0
    for step in range(3600):
        clock.now += 1.0
        actions.now = clock.now
        await sim.world.step(clock.now, 1.0, actions)
        if step % 5:
            continue
        for unit in sim.units:
            assert _off_road_m(drive, unit.car.lat, unit.car.lon) < 0.5, unit
            for officer in unit.officers:
                if (officer.lat, officer.lon) == (unit.car.lat, unit.car.lon):
                    continue
                walked += 1
                # On a footway or a street's sidewalk, or standing a few metres off it
                # at the scene.
                assert _off_road_m(walk, officer.lat, officer.lon) < 5.0, unit
    assert walked > 50, "officers never left their cars"
    assert any(kind == "taser_draw" for _, _, kind in actions.fired)


def test_the_road_graph_leaves_out_private_islands_and_clipped_ends(city: StreetMap) -> None:
    # The island road and the private drive are not driven; the clipped way still is,
    # up to the extract's edge.
    assert 9001 not in city.drive.nodes
    assert (1000, 1007) not in city.drive.edges
    assert 99_999 not in city.drive.nodes
    route = city.drive.route(1000, 1035)
    # Corner to opposite corner of a 6x6 grid: ten blocks of 120 m, along the edges.
    length = sum(
        np.hypot(*np.subtract(*_xy_pair(a, b))) for a, b in itertools.pairwise(route.points)
    )
    assert length == pytest.approx(1200.0, rel=0.01)
    for u, v in itertools.pairwise(route.nodes):
        assert (min(u, v), max(u, v)) in city.drive.edges


def _xy_pair(
    a: tuple[float, float], b: tuple[float, float]
) -> tuple[tuple[float, float], tuple[float, float]]:
    k = np.cos(np.radians(a[0]))
    return (
        (a[1] * 111_320.0 * k, a[0] * 111_320.0),
        (b[1] * 111_320.0 * k, b[0] * 111_320.0),
    )


def test_the_graph_is_cached_beside_the_extract(tmp_path: Path) -> None:
    path = tmp_path / "city.osm.pbf"
    grid_city(path)
    first = StreetMap.load(path)
    cache = path.with_name(path.name + ".streets.json")
    assert cache.is_file()
    again = StreetMap.load(path)
    assert again.drive.edges == first.drive.edges
    assert again.walk.nodes == first.walk.nodes
    # Another extract at the same path: the cache is of the old one and is rebuilt.
    grid_city(path, size=4)
    assert len(StreetMap.load(path).drive.nodes) == 16


async def test_coverage_comes_and_goes(tmp_path: Path) -> None:
    clock = Clock()
    sim = fleet(
        tmp_path,
        clock,
        units=4,
        incidents_per_crew_hour=0.0,
        gps_losses_per_crew_hour=6.0,
        dead_spots_per_crew_hour=6.0,
    )
    car = sim.units[0].car
    stale = fresh_again = 0
    actions = Recorded()
    for _ in range(4 * 3600):
        clock.now += 1.0
        await sim.world.step(clock.now, 1.0, actions)
        fix = car.fix(clock.now)
        assert fix.ts is not None
        if clock.now - fix.ts > 10.0:  # older than the engine trusts: stale on the map
            stale += 1
        elif stale and fix.ts == clock.now:
            fresh_again += 1
    assert stale > 0
    assert fresh_again > 0
    assert sim.world.episodes["gps_lost"] > 50  # 4 crews, 4 h, 6 an hour each
    # Dead spots drop every device of the crew off the broker for a few minutes.
    assert sim.world.episodes["dead_spot"] > 50
    assert len({d for d, _ in actions.outages}) > 10
    assert all(60.0 <= s <= 240.0 for _, s in actions.outages)


async def test_a_docked_crews_cameras_offload_to_a_real_evidence_listener(
    tmp_path: Path,
) -> None:
    clock = Clock()
    sim = fleet(tmp_path / "fleet", clock, units=1, dock_chance=1.0)
    async with evidence_store(tmp_path / "store") as env:
        with Registry.open(env.root) as registry:
            creds = registry.provision_simulated(specs_of(sim.agents))
        sim.use_credentials(creds)
        sim.evidence_url = env.server.url
        unit = sim.units[0]
        body = unit.body_cams[0].device_id
        folder = record(sim.store.root, body, key_of(creds[body]), "rec-1", "act-1")
        # Drive the shift until the crew docks at the station.
        actions = Recorded()
        while not actions.docks:
            clock.now += 1.0
            if clock.now - T0 == 5.0:
                await sim.world._start_incident(clock.now, actions)
            await sim.world.step(clock.now, 1.0, actions)
            assert clock.now - T0 < 4 * 3600, "the crew never docked"
        assert unit.mode is Mode.DOCKED
        async with asyncio.TaskGroup() as tg:
            docking = tg.create_task(sim._docking())
            sim.dock(unit)
            await eventually(lambda: sim.offloaded == 1, timeout=20)
            docking.cancel()
        assert not folder.exists()
        stored = await env.service.list()
        assert [r.evidence_id for r in stored] == [f"{body}/rec-1"]
        assert sim.offload_kept == 0
