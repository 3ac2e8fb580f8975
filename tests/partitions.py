"""Two engines owning geographic partitions: the world the partition tests share.

The same 30 ft rules, the same place (Calgary), the same devices spread over 20 km in
both partitions, the same point next to a boundary, and the same two engines (one per
partition), whether they run on the in-process bus, Mosquitto or a NATS cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path

from actimesh.broker.topics import Topics
from actimesh.broker.transport import Transport
from actimesh.geofence import InclusionPolicy, PartitionMap, destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings, RuleTable
from actimesh.triggers.partitions import halo_for
from tests.waiting import eventually

POLICY = InclusionPolicy()
#: The 30 ft rules. Dispatch zones (up to 1 km) would need a 1 km halo: most of the
#: 20 km below would be in both partitions' halos (docs/SCALING.md), and it would be too
#: wide for 4 m cells that put a boundary in every direction.
RULES = RuleTable({t: r for t, r in DEFAULT_RULES.rules.items() if r.radius_m < 100.0})
HALO_M = halo_for(RULES, POLICY)
CALGARY = (51.0447, -114.0719)
#: Devices spread over 20 km around the trigger, in both partitions.
FAR = [(f"far-{i}", destination(*CALGARY, 45.0 * i, 2500.0 + 1500.0 * i)) for i in range(8)]


def cells() -> PartitionMap:
    """Two partitions of the default 2 km cells, with the rules' halo."""
    return PartitionMap(2, halo_m=HALO_M)


def near_a_boundary() -> tuple[tuple[float, float], int]:
    """A point 3 m west of where the owner changes, going east from Calgary; its owner."""
    partitions = cells()
    owner, step = partitions.owner(*CALGARY), 0.0
    while partitions.owner(*destination(*CALGARY, 90.0, step + 3.0)) == owner:
        step += 1.0
        assert step < 50_000, "no boundary within 50 km east"
    return destination(*CALGARY, 90.0, step), owner


async def two_engines(
    stack: AsyncExitStack,
    topics: Topics,
    transport: Callable[[], Transport],
    tmp_path: Path,
    partitions: Callable[[], PartitionMap] | None = None,
) -> list[Engine]:
    """``engine-0`` serving partition 0 and ``engine-1`` partition 1, one signer, each
    with its own ledger (closed by ``stack``); not started. ``partitions``: each
    engine's own map of them (default: the engine's own, from its settings)."""
    signer = CommandSigner.generate()
    engines = []
    for k in (0, 1):
        ledger = await stack.enter_async_context(SqliteLedger(tmp_path / f"l{k}.sqlite3"))
        settings = EngineSettings(
            engine_id=f"engine-{k}", warmup_s=0.01, partitions=2, partition=(k,)
        )
        engines.append(
            Engine(
                topics=topics,
                transport=transport(),
                ledger=ledger,
                rules=RULES,
                policy=POLICY,
                signer=signer,
                settings=settings,
                partitions=None if partitions is None else partitions(),
            )
        )
    return engines


async def each_hears_its_share(
    engines: list[Engine], partitions: PartitionMap, reported: Mapping[str, tuple[float, float]]
) -> None:
    """Each engine indexes the devices ``reported`` in its partition or halo, and
    received only those; each fix was relayed once."""
    expected = [
        {d for d, at in reported.items() if k in partitions.partitions_for(*at)} for k in (0, 1)
    ]
    await eventually(
        lambda: [{d for d in reported if d in e.index} for e in engines] == expected,
        timeout=20,
    )
    received = [e.telemetry_link.stats.received for e in engines]
    assert received == [len(share) for share in expected]
    assert all(0 < n < len(reported) for n in received), received
    assert sum(e.stats.relayed for e in engines) == len(reported)
