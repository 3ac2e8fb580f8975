"""The simulated fleet's city: a road graph for cruisers and a walking graph for officers,
from an OpenStreetMap extract, and shortest paths on them.

``make map-data`` puts the demo's extract (central Helsinki) at
``build/map/helsinki.osm.pbf``. :meth:`StreetMap.load` reads it once with
:mod:`actimesh.devices.simulator_pbf` and caches both graphs beside it
(``<extract>.streets.json``, rebuilt when the extract's size or SHA-256 changes).

* **Driving:** the ways tagged as roads a patrol car may use (``highway`` = motorway to
  residential, service roads, their links). One-way tags are not followed: a patrol car
  with its lights on drives against them, and a smaller graph would leave dead ends.
* **Walking:** footways, pedestrian streets, paths, steps and platforms, and the
  roads themselves (their sidewalks), so an officer steps out of the car onto it.

Each graph keeps only its largest connected part, so every route exists. Distances are
metres on a local flat projection around the extract's centre, far within a metre of
the geodesic over a city.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from actimesh.devices.simulator_pbf import read_pbf

__all__ = ["DEFAULT_MAP", "RoadGraph", "Route", "StreetMap", "point_segment_m"]

#: Where ``make map-data`` puts the demo's extract, relative to the project root.
DEFAULT_MAP = Path("build/map/helsinki.osm.pbf")

_CACHE_VERSION = 1
_EARTH_M_PER_DEG = 111_320.0

_DRIVE = frozenset(
    {
        "motorway",
        "trunk",
        "primary",
        "secondary",
        "tertiary",
        "unclassified",
        "residential",
        "living_street",
        "service",
        "motorway_link",
        "trunk_link",
        "primary_link",
        "secondary_link",
        "tertiary_link",
    }
)
_WALK_ONLY = frozenset(
    {"footway", "pedestrian", "path", "steps", "platform", "corridor", "crossing", "track"}
)


def _drivable(tags: Mapping[str, str]) -> bool:
    return (
        tags.get("highway") in _DRIVE
        and tags.get("access") not in ("no", "private")
        and tags.get("area") != "yes"
    )


def _walkable(tags: Mapping[str, str]) -> bool:
    highway = tags.get("highway")
    if highway in _WALK_ONLY:
        return tags.get("access") not in ("no", "private") and tags.get("area") != "yes"
    return _drivable(tags) and highway not in ("motorway", "motorway_link", "trunk")


@dataclass(frozen=True, slots=True)
class _Projection:
    """Local flat metres around a reference latitude."""

    lat0: float

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        return lon * _EARTH_M_PER_DEG * math.cos(math.radians(self.lat0)), lat * _EARTH_M_PER_DEG

    def metres(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        (ax, ay), (bx, by) = self.xy(*a), self.xy(*b)
        return math.hypot(ax - bx, ay - by)


def point_segment_m(
    p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]
) -> float:
    """Metres from ``p`` to the segment ``a``-``b`` (all ``(lat, lon)``)."""
    proj = _Projection(a[0])
    px, py = proj.xy(*p)
    ax, ay = proj.xy(*a)
    bx, by = proj.xy(*b)
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / length2))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


@dataclass(frozen=True, slots=True)
class Route:
    """A path along graph edges: its nodes and their points in order, first to last."""

    nodes: tuple[int, ...]
    points: tuple[tuple[float, float], ...]


@dataclass(slots=True)
class RoadGraph:
    """One undirected graph: node positions and, per node, its neighbours and the metres
    to each."""

    nodes: dict[int, tuple[float, float]]
    edges: list[tuple[int, int]]
    adjacency: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    _ids: list[int] = field(default_factory=list)
    _proj: _Projection = field(default_factory=lambda: _Projection(0.0))

    def __post_init__(self) -> None:
        lats = [lat for lat, _ in self.nodes.values()]
        self._proj = _Projection(sum(lats) / len(lats) if lats else 0.0)
        self.adjacency = {n: [] for n in self.nodes}
        for a, b in self.edges:
            d = self._proj.metres(self.nodes[a], self.nodes[b])
            self.adjacency[a].append((b, d))
            self.adjacency[b].append((a, d))
        self._ids = sorted(self.nodes)

    @classmethod
    def from_ways(
        cls, nodes: Mapping[int, tuple[float, float]], ways: Iterable[Sequence[int]]
    ) -> RoadGraph:
        """The largest connected part of the graph the ways draw (refs outside the
        extract, where a way was clipped, end the way there)."""
        edges: set[tuple[int, int]] = set()
        for refs in ways:
            for a, b in itertools.pairwise(refs):
                if a != b and a in nodes and b in nodes:
                    edges.add((min(a, b), max(a, b)))
        adjacency: dict[int, list[int]] = {}
        for a, b in edges:
            adjacency.setdefault(a, []).append(b)
            adjacency.setdefault(b, []).append(a)
        best: set[int] = set()
        seen: set[int] = set()
        for start in sorted(adjacency):
            if start in seen:
                continue
            part, stack = {start}, [start]
            while stack:
                for nxt in adjacency[stack.pop()]:
                    if nxt not in part:
                        part.add(nxt)
                        stack.append(nxt)
            seen |= part
            if len(part) > len(best):
                best = part
        kept = sorted((a, b) for a, b in edges if a in best)
        return cls({n: nodes[n] for n in sorted(best)}, kept)

    def random_node(self, rng: random.Random) -> int:
        return self._ids[rng.randrange(len(self._ids))]

    def nearest(self, lat: float, lon: float) -> int:
        """The node closest to ``(lat, lon)``."""
        x, y = self._proj.xy(lat, lon)

        def dist2(n: int) -> float:
            nx, ny = self._proj.xy(*self.nodes[n])
            return (nx - x) ** 2 + (ny - y) ** 2

        return min(self._ids, key=dist2)

    def route(self, start: int, goal: int) -> Route:
        """The shortest path from node ``start`` to node ``goal`` (A*)."""
        target = self.nodes[goal]
        best = {start: 0.0}
        came: dict[int, int] = {}
        queue = [(0.0, start)]
        done: set[int] = set()
        while queue:
            _, node = heapq.heappop(queue)
            if node == goal:
                break
            if node in done:
                continue
            done.add(node)
            for nxt, d in self.adjacency[node]:
                cost = best[node] + d
                if cost < best.get(nxt, math.inf):
                    best[nxt] = cost
                    came[nxt] = node
                    heapq.heappush(queue, (cost + self._proj.metres(self.nodes[nxt], target), nxt))
        if goal != start and goal not in came:
            raise ValueError(f"no path from node {start} to node {goal}")
        path = [goal]
        while path[-1] != start:
            path.append(came[path[-1]])
        path.reverse()
        return Route(tuple(path), tuple(self.nodes[n] for n in path))

    def distance_to_edges(self, lat: float, lon: float) -> float:
        """Metres from ``(lat, lon)`` to the nearest edge of the graph."""
        return min(point_segment_m((lat, lon), self.nodes[a], self.nodes[b]) for a, b in self.edges)

    def to_json(self) -> dict[str, object]:
        return {
            "nodes": [[n, lat, lon] for n, (lat, lon) in sorted(self.nodes.items())],
            "edges": [list(e) for e in self.edges],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RoadGraph:
        raw_nodes = data["nodes"]
        raw_edges = data["edges"]
        if not isinstance(raw_nodes, list) or not isinstance(raw_edges, list):
            raise TypeError("a road graph needs lists of nodes and edges")
        nodes = {int(n): (float(lat), float(lon)) for n, lat, lon in raw_nodes}
        return cls(nodes, [(int(a), int(b)) for a, b in raw_edges])


@dataclass(slots=True)
class StreetMap:
    """The city of the simulated fleet: where cruisers drive and officers walk."""

    source: Path
    drive: RoadGraph
    walk: RoadGraph

    @property
    def center(self) -> tuple[float, float]:
        lats = [lat for lat, _ in self.drive.nodes.values()]
        lons = [lon for _, lon in self.drive.nodes.values()]
        return (min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2

    @classmethod
    def load(cls, path: Path) -> StreetMap:
        """The graphs of the extract at ``path``: from the cache beside it when it is of
        this extract, else read and cached. ``FileNotFoundError`` when ``path`` is
        missing; ``ValueError`` when it is not a usable extract."""
        data = path.read_bytes()
        stamp: dict[str, object] = {
            "version": _CACHE_VERSION,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        cache = path.with_name(path.name + ".streets.json")
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("source") == stamp:
                return cls(
                    path, RoadGraph.from_json(cached["drive"]), RoadGraph.from_json(cached["walk"])
                )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache, or one of another extract or version: build it again
        extract = read_pbf(path, lambda tags: _walkable(tags) or _drivable(tags))
        drive = RoadGraph.from_ways(
            extract.nodes, (w.refs for w in extract.ways if _drivable(w.tags))
        )
        walk = RoadGraph.from_ways(
            extract.nodes, (w.refs for w in extract.ways if _walkable(w.tags))
        )
        if len(drive.nodes) < 2 or len(walk.nodes) < 2:
            raise ValueError(f"{path} has no connected streets to drive or walk on")
        body = {"source": stamp, "drive": drive.to_json(), "walk": walk.to_json()}
        tmp = cache.with_name(cache.name + ".tmp")
        try:
            tmp.write_text(json.dumps(body, separators=(",", ":")), encoding="utf-8")
            tmp.replace(cache)
        except OSError:
            pass  # a read-only map folder: the graph is built again next time
        return cls(path, drive, walk)
