"""How geographic partitions split the telemetry between engines: the measurement.

``python -m actimesh.triggers.partition_load`` places a fleet in a metropolitan area
(uniform over a disk, 25 km in radius by default, around Calgary), runs one round of
its telemetry through the relay of :class:`~actimesh.triggers.partitions.Partitioning`
(the code the engines run) for 1, 2 and 4 partitions, and counts the messages each
engine receives: its share of the raw telemetry, which it relays (a shared subscription
splits it evenly), and the relayed fixes of its own partition and halo, which it
indexes. The halo's overhead is the relayed copies beyond one per fix.

The counts are exact functions of the positions, the cells and the halo; on the NATS
cluster the engines' link counters match them (tests/broker/test_nats_partitions.py).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from actimesh.broker.client import InFlight, LinkStats
from actimesh.broker.codec import encode
from actimesh.broker.ingest import Publish
from actimesh.broker.messages import DeviceState, Telemetry
from actimesh.broker.topics import Topics
from actimesh.geofence import InclusionPolicy, PartitionMap
from actimesh.triggers.partitions import Partitioning, halo_for
from actimesh.triggers.rules import DEFAULT_RULES, RuleTable
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats

__all__ = ["Split", "main", "measure"]

_TOPICS = Topics("load")
_EARTH_M = 6_371_000.0


class _Counting:
    """An outbound link that counts what the relay publishes for each partition."""

    def __init__(self) -> None:
        self.per_partition: Counter[int] = Counter()
        self.stats = LinkStats()
        self.name = "count"
        self.connected = True
        self._root = f"{_TOPICS.prefix}/engine/part/"

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, expiry_s: float | None = None
    ) -> InFlight:
        del payload, qos, expiry_s
        self.per_partition[int(topic[len(self._root) :].split("/", 1)[0])] += 1
        return InFlight.acknowledged(topic, self.stats)

    def flush(self) -> None:
        return None

    async def run(self) -> None:
        return None

    async def wait_connected(self, timeout: float | None = None) -> None:
        del timeout

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        del retain
        self.publish_nowait(topic, payload, qos=qos)


@dataclass(frozen=True, slots=True)
class Split:
    """One configuration's result: per engine, the fraction of the fleet's telemetry it
    receives to relay and to index, and the halo's overhead."""

    partitions: int
    cell_m: float
    halo_m: float
    relay_share: float
    indexed: tuple[float, ...]
    halo_overhead: float
    #: CPU time the relay took per fix, microseconds (one process, one core).
    relay_us: float

    @property
    def received(self) -> tuple[float, ...]:
        """Messages each engine receives, as a fraction of the fleet's telemetry."""
        return tuple(self.relay_share + share for share in self.indexed)


def fleet(devices: int, radius_m: float, seed: int = 7) -> list[tuple[float, float]]:
    """``devices`` positions uniform over a disk of ``radius_m`` around Calgary."""
    rng = random.Random(seed)
    lat0, lon0 = 51.0447, -114.0719
    points = []
    for _ in range(devices):
        r, a = radius_m * math.sqrt(rng.random()), rng.random() * math.tau
        dlat = math.degrees(r * math.cos(a) / _EARTH_M)
        dlon = math.degrees(r * math.sin(a) / (_EARTH_M * math.cos(math.radians(lat0))))
        points.append((lat0 + dlat, lon0 + dlon))
    return points


def measure(
    positions: Sequence[tuple[float, float]], partitions: int, cell_m: float, rules: RuleTable
) -> Split:
    """Relay one fix of every device in ``positions`` and count where each goes."""
    policy = InclusionPolicy()
    halo = halo_for(rules, policy)
    settings = EngineSettings(partitions=partitions, partition_cell_m=cell_m)
    part = Partitioning(
        topics=_TOPICS,
        settings=settings,
        rules=rules,
        policy=policy,
        stats=EngineStats(),
        cells=PartitionMap(partitions, cell_m=cell_m, halo_m=halo),
    )
    out = _Counting()
    part.attach(out)
    batch: list[Publish] = []
    for i, (lat, lon) in enumerate(positions):
        fix = Telemetry(ts=1.0, state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=3.0)
        batch.append((_TOPICS.telemetry(f"d{i}").encode(), encode(fix)))
    started = time.perf_counter()
    asyncio.run(part.relay(batch))
    elapsed = time.perf_counter() - started
    total = len(positions)
    indexed = tuple(out.per_partition[k] / total for k in range(partitions))
    return Split(
        partitions=partitions,
        cell_m=cell_m,
        halo_m=halo,
        relay_share=0.0 if partitions == 1 else 1.0 / partitions,
        indexed=indexed,
        halo_overhead=sum(out.per_partition.values()) / total - 1.0,
        relay_us=elapsed / total * 1e6,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Print the split for 1, 2 and 4 partitions (see the module)."""
    parser = argparse.ArgumentParser(prog="python -m actimesh.triggers.partition_load")
    parser.add_argument("--devices", type=int, default=50_000)
    parser.add_argument("--radius-m", type=float, default=25_000.0, help="the metro area")
    parser.add_argument("--cells-m", type=float, nargs="+", default=[2000.0])
    parser.add_argument(
        "--dispatch-zones",
        action="store_true",
        help="keep the dispatch_zone rule (1 km radius: a 1 km halo)",
    )
    args = parser.parse_args(argv)
    rules = DEFAULT_RULES
    if not args.dispatch_zones:
        rules = RuleTable({t: r for t, r in DEFAULT_RULES.rules.items() if t != "dispatch_zone"})
    positions = fleet(args.devices, args.radius_m)
    say = sys.stdout.write
    say(
        f"{args.devices} devices over {args.radius_m / 1000:g} km around Calgary; "
        "fractions of the fleet's telemetry\n"
        "partitions  cell_m  halo_m  relayed/engine  indexed/engine (each)  "
        "received/engine (max)  halo overhead  relay us/fix\n"
    )
    for cell_m in args.cells_m:
        for n in (1, 2, 4):
            split = measure(positions, n, cell_m, rules)
            indexed = " ".join(f"{share:.3f}" for share in split.indexed)
            say(
                f"{n:>10}  {cell_m:>6g}  {split.halo_m:>6.1f}  {split.relay_share:>14.3f}  "
                f"{indexed:<21}  {max(split.received):>21.3f}  {split.halo_overhead:>12.2%}  "
                f"{split.relay_us:>12.1f}\n"
            )


if __name__ == "__main__":
    main()
