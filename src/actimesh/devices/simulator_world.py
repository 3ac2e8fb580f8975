"""The simulated fleet's world: where each crew is, what it does, and what happens to it.

Free of networking and of the wall clock: :class:`World` advances by ``step(now, dt)``
and says what happens through :class:`ShiftActions` (a trigger, an officer stopping a
recording, a radio dead spot, a camera docking), which the live fleet carries out with
its device agents and a test records. One seeded ``random.Random`` drives everything,
so a seed and a sequence of steps always give the same shift.

A shift, as a patrol sees it:

* **Patrol.** Crews drive from one random point of the city to the next, along its
  streets when there is a :class:`~actimesh.devices.simulator_streets.StreetMap`
  (straight lines in a synthetic disc otherwise).
* **Incidents** arrive as a Poisson process, a few an hour per crew
  (``incidents_per_crew_hour``). The two or three nearest free crews respond with their
  lights on (a trigger each), park at the street corner nearest the scene, and their
  officers walk the footways to it and stand within a few metres of each other. One of
  them may draw a CEW. Now and then a patrolling cruiser has a collision instead.
* **The scene ends** after a few minutes: the officers stop their recordings by hand (the
  mesh never does), walk back to the car and patrol again, or first drive to the
  station to dock, where the cameras offload their recordings to the evidence store.
* **Coverage.** Now and then a patrolling crew loses GPS for a minute or two (an
  underpass, a parking garage: its fixes stop ageing forward and the map marks it stale)
  or the radio for a few minutes (the broker sees the connection drop and publishes the
  devices' last will: offline), and comes back.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from actimesh.devices.agent import Position
from actimesh.geofence import destination, distance_m

if TYPE_CHECKING:
    from actimesh.devices.agent import DeviceAgent
    from actimesh.devices.simulator import SimSettings
    from actimesh.devices.simulator_streets import RoadGraph, StreetMap

__all__ = ["Mode", "ShiftActions", "Unit", "Walker", "World"]

_EARTH_M_PER_DEG = 111_320.0
#: Time constant of the simulated GPS error (seconds): consumer receivers' errors
#: decorrelate over about a minute.
GPS_ERROR_TAU_S = 60.0
_WALK_MPS = 1.6


class ShiftActions(Protocol):
    """What the world makes happen to the devices."""

    async def fire(self, agent: DeviceAgent, event_type: str) -> None: ...

    async def stop(self, agent: DeviceAgent) -> None: ...

    async def outage(self, agent: DeviceAgent, seconds: float) -> None: ...

    def dock(self, unit: Unit) -> None: ...


class Mode(StrEnum):
    PATROL = "patrol"
    RESPONDING = "responding"
    ON_SCENE = "on_scene"
    LEAVING = "leaving"
    TO_DOCK = "to_dock"
    DOCKED = "docked"


@dataclass(slots=True)
class Walker:
    """A moving thing with a true position; devices report it with GPS noise.

    While its GPS is lost (``gps_lost_until``) it repeats its last fix, timestamp and
    all, as a receiver without satellites does: the fix ages and the map marks it stale.

    The error of its fixes has the claimed 1-sigma accuracy but wanders slowly (a
    first-order Gauss-Markov process with a :data:`GPS_ERROR_TAU_S` time constant), as
    a real receiver's does: multipath and the atmosphere change over tens of seconds, so
    a receiver standing still reports a slowly drifting position, not a new random one
    every second. Fixes asked for at the same instant (the car's three devices) agree.
    """

    lat: float
    lon: float
    rng: random.Random
    acc: float
    gps_lost_until: float = 0.0
    last_fix: Position | None = None
    #: Waypoints still ahead, and (with a street map) the graph nodes they are.
    path: list[tuple[float, float]] = field(default_factory=list)
    path_nodes: list[int] = field(default_factory=list)
    #: The current GPS error (metres north and east) and when it was drawn.
    error: tuple[float, float, float] | None = None
    #: The true position at the last fix, and when, for the receiver's ground speed.
    moved_from: tuple[float, float, float] | None = None
    speed: float = 0.0

    def fix(self, now: float) -> Position:
        if now < self.gps_lost_until and self.last_fix is not None:
            return self.last_fix
        # Report a noisy fix whose error matches the claimed 1-sigma accuracy, and is
        # correlated with the previous error over GPS_ERROR_TAU_S.
        sigma = self.acc / math.sqrt(2)
        if self.error is None:
            north, east = self.rng.gauss(0.0, sigma), self.rng.gauss(0.0, sigma)
        else:
            north, east, then = self.error
            keep = math.exp(-max(0.0, now - then) / GPS_ERROR_TAU_S)
            fresh = sigma * math.sqrt(1.0 - keep * keep)
            north = keep * north + self.rng.gauss(0.0, fresh)
            east = keep * east + self.rng.gauss(0.0, fresh)
        self.error = (north, east, now)
        if self.moved_from is not None and now > self.moved_from[2]:
            lat0, lon0, then = self.moved_from
            self.speed = distance_m(lat0, lon0, self.lat, self.lon) / (now - then)
        if self.moved_from is None or now > self.moved_from[2]:
            self.moved_from = (self.lat, self.lon, now)
        lat = self.lat + north / _EARTH_M_PER_DEG
        lon = self.lon + east / (_EARTH_M_PER_DEG * max(0.01, math.cos(math.radians(self.lat))))
        self.last_fix = Position(lat, lon, self.acc, now, self.speed)
        return self.last_fix

    def follow(self, step_m: float) -> bool:
        """Move ``step_m`` along the path; True once at its end."""
        while self.path:
            target = self.path[0]
            remaining = distance_m(self.lat, self.lon, *target)
            if remaining > step_m:
                frac = step_m / remaining
                self.lat += (target[0] - self.lat) * frac
                self.lon += (target[1] - self.lon) * frac
                return False
            step_m -= remaining
            self.lat, self.lon = target
            self.path.pop(0)
            if self.path_nodes:
                self.path_nodes.pop(0)
        return True


@dataclass(slots=True)
class Unit:
    """A cruiser crew: the car, its officers, their devices and what they are doing."""

    name: str
    car: Walker
    officers: list[Walker]
    gateway: DeviceAgent | None = None
    cameras: list[DeviceAgent] = field(default_factory=list)
    body_cams: list[DeviceAgent] = field(default_factory=list)
    cews: list[DeviceAgent] = field(default_factory=list)
    mode: Mode = Mode.PATROL
    scene: tuple[float, float] | None = None
    since: float = 0.0
    until: float = 0.0
    tased: bool = False
    #: In a radio dead spot until then: nobody can send the crew anywhere.
    radio_lost_until: float = 0.0


class World:
    """Moves the crews of ``units`` and schedules what happens to them (module docstring)."""

    def __init__(
        self,
        units: list[Unit],
        settings: SimSettings,
        rng: random.Random,
        streets: StreetMap | None,
        start: float,
    ) -> None:
        self.units = units
        self.settings = settings
        self.rng = rng
        self.streets = streets
        self.center = streets.center if streets is not None else settings.center
        self.station = self.random_point(drive=True)
        self.incidents = 0
        self.episodes: dict[str, int] = {"gps_lost": 0, "dead_spot": 0}
        self.docked = 0
        s = settings
        if s.incident_every_s is not None:
            self.next_incident = start + 3.0
        else:
            self.next_incident = start + self._gap()
        del s

    # ------------------------------------------------------------------ places
    def random_point(self, *, drive: bool) -> tuple[float, float]:
        if self.streets is not None:
            graph = self.streets.drive if drive else self.streets.walk
            return graph.nodes[graph.random_node(self.rng)]
        lat0, lon0 = self.center
        bearing = self.rng.uniform(0, 360)
        dist = self.settings.area_radius_m * math.sqrt(self.rng.random())
        return destination(lat0, lon0, bearing, dist)

    def _route(self, walker: Walker, goal: tuple[float, float], *, drive: bool) -> None:
        """Set ``walker`` on its way to ``goal``: along the graph's edges, from the node it
        is heading for (so it never leaves the street mid-block), or in a straight line."""
        if self.streets is None:
            walker.path, walker.path_nodes = [goal], []
            return
        graph: RoadGraph = self.streets.drive if drive else self.streets.walk
        if walker.path_nodes and walker.path_nodes[0] in graph.nodes:
            start = walker.path_nodes[0]
        else:
            start = graph.nearest(walker.lat, walker.lon)
        route = graph.route(start, graph.nearest(*goal))
        walker.path_nodes = list(route.nodes)
        walker.path = list(route.points)

    # ------------------------------------------------------------------ time
    def _gap(self) -> float:
        s = self.settings
        if s.incident_every_s is not None:
            return s.incident_every_s
        rate = len(self.units) * s.incidents_per_crew_hour / 3600.0
        return self.rng.expovariate(rate) if rate > 0 else math.inf

    async def step(self, now: float, dt: float, actions: ShiftActions) -> None:
        """Advance the world by ``dt`` seconds to ``now``."""
        for unit in self.units:
            await self._step(unit, now, dt, actions)
        while now >= self.next_incident:
            await self._start_incident(now, actions)
            self.next_incident += self._gap()

    def _scene_s(self) -> float:
        s = self.settings
        if s.stop_after_s is not None:
            return s.stop_after_s
        return self.rng.uniform(*s.on_scene_s)

    async def _start_incident(self, now: float, actions: ShiftActions) -> None:
        self.incidents += 1
        free = [u for u in self.units if u.mode is Mode.PATROL and now >= u.radio_lost_until]
        if not free:
            return
        scene = self.random_point(drive=False)
        free.sort(key=lambda u: distance_m(u.car.lat, u.car.lon, *scene))
        responders = free[: self.rng.randint(2, 3)]
        for unit in responders:
            unit.mode = Mode.RESPONDING
            unit.scene = scene
            unit.since = now
            unit.tased = False
            if self.streets is None:
                # Park within 8-20 m of the scene, each at its own bearing.
                park = destination(*scene, self.rng.uniform(0, 360), self.rng.uniform(8, 20))
            else:
                park = scene
            self._route(unit.car, park, drive=True)
            if unit.gateway is not None:
                await actions.fire(unit.gateway, "emergency_lights")
        if self.rng.random() < self.settings.collision_chance and len(free) > len(responders):
            crash = free[-1]
            if crash.gateway is not None:
                await actions.fire(crash.gateway, "collision")
                crash.mode = Mode.ON_SCENE
                crash.scene = (crash.car.lat, crash.car.lon)
                crash.since = now
                crash.until = now + self._scene_s()
                crash.tased = True
                crash.car.path, crash.car.path_nodes = [], []

    async def _step(self, unit: Unit, now: float, dt: float, actions: ShiftActions) -> None:
        s = self.settings
        if unit.mode is Mode.PATROL:
            if not unit.car.path:
                self._route(unit.car, self.random_point(drive=True), drive=True)
            self._ride(unit, s.cruiser_speed_mps * 0.6 * dt)
            await self._coverage(unit, now, dt, actions)
        elif unit.mode in (Mode.RESPONDING, Mode.TO_DOCK):
            if self._ride(unit, s.cruiser_speed_mps * dt):
                if unit.mode is Mode.TO_DOCK:
                    unit.mode, unit.since = Mode.DOCKED, now
                    self.docked += 1
                    actions.dock(unit)
                else:
                    self._arrive(unit, now)
        elif unit.mode is Mode.DOCKED:
            if now - unit.since >= s.dock_s:
                unit.mode = Mode.PATROL
        elif unit.mode is Mode.ON_SCENE:
            await self._on_scene(unit, now, dt, actions)
        elif unit.mode is Mode.LEAVING:
            self._leave(unit, dt)

    async def _on_scene(self, unit: Unit, now: float, dt: float, actions: ShiftActions) -> None:
        walking = [o for o in unit.officers if not o.follow(_WALK_MPS * dt)]
        if not walking and not unit.tased and now - unit.since > 4.0 and unit.cews:
            unit.tased = True
            if self.rng.random() < 0.6:
                await actions.fire(self.rng.choice(unit.cews), "taser_draw")
        if now >= unit.until:
            for agent in unit.cameras:
                await actions.stop(agent)
            unit.mode, unit.scene = Mode.LEAVING, None
            car = (unit.car.lat, unit.car.lon)
            for officer in unit.officers:
                self._route(officer, car, drive=False)
                officer.path.append(car)
                officer.path_nodes = []

    def _leave(self, unit: Unit, dt: float) -> None:
        """The officers walk back to the car; then patrol, or first dock at the station."""
        walking = [o for o in unit.officers if not o.follow(_WALK_MPS * dt)]
        if walking:
            return
        if self.rng.random() < self.settings.dock_chance:
            unit.mode = Mode.TO_DOCK
            self._route(unit.car, self.station, drive=True)
        else:
            unit.mode = Mode.PATROL

    def _ride(self, unit: Unit, step_m: float) -> bool:
        """The car moves and its officers ride along; True once it has arrived."""
        arrived = unit.car.follow(step_m)
        for officer in unit.officers:
            officer.lat, officer.lon = unit.car.lat, unit.car.lon
        return arrived

    def _arrive(self, unit: Unit, now: float) -> None:
        unit.mode, unit.since, unit.until = Mode.ON_SCENE, now, now + self._scene_s()
        if unit.scene is None:
            return
        for officer in unit.officers:
            # Officers walk up to within a few metres of the scene.
            spot = destination(*unit.scene, self.rng.uniform(0, 360), self.rng.uniform(0.5, 4.0))
            if self.streets is None:
                officer.lat, officer.lon = spot
                officer.path, officer.path_nodes = [], []
            else:
                self._route(officer, unit.scene, drive=False)
                officer.path.append(spot)

    async def _coverage(self, unit: Unit, now: float, dt: float, actions: ShiftActions) -> None:
        s = self.settings
        if self.rng.random() < s.gps_losses_per_crew_hour * dt / 3600.0:
            self.episodes["gps_lost"] += 1
            until = now + self.rng.uniform(*s.gps_loss_s)
            for walker in (unit.car, *unit.officers):
                walker.gps_lost_until = until
        if self.rng.random() < s.dead_spots_per_crew_hour * dt / 3600.0:
            self.episodes["dead_spot"] += 1
            seconds = self.rng.uniform(*s.dead_spot_s)
            unit.radio_lost_until = now + seconds
            for agent in (unit.gateway, *unit.cameras, *unit.cews):
                if agent is not None:
                    await actions.outage(agent, seconds)
