"""What the garbage collector costs the engine once a large fleet has arrived.

Run from the repository root (about a minute of one core)::

    PYTHONPATH=src .venv/bin/python -m tests.triggers.time_collections [--freezer] [DEVICES]

The engine freezes its heap at the end of its warm-up (``[engine] freeze_heap``),
before most of a fleet has reported: in ``actimesh bench`` the 100,000 devices arrive
after it. This feeds an engine built in-process, its heap frozen as the warm-up leaves
it, the fleet's first reports and then rounds of motion-scaled fixes (the telemetry
handler, as the transport calls it), timing every collection through ``gc.callbacks``
by phase. Then it times a full collection as it would come with the fleet unfrozen, and
one with it frozen. ``--freezer`` installs the engine's
:class:`~actimesh.triggers.heap.HeapFreezer` after the warm-up's freeze, as the engine
does: run it with and without to compare. Not a test: it prints numbers and asserts
nothing.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from actimesh.broker.codec import encode
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import DeviceState, Telemetry
from actimesh.broker.topics import Topics
from actimesh.geofence import InclusionPolicy, destination
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings
from actimesh.triggers.heap import HeapFreezer

T0 = 1_800_000_000.0
CENTER = (51.0447, -114.0719)
TOPICS = Topics("am-gc")
BATCH, ROUNDS = 64, 6


class _Pauses:
    """Collections by phase: ``phase -> generation -> [ms, ...]``."""

    def __init__(self) -> None:
        self.phase = "start"
        self.by_phase: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        self._start = 0.0

    def __call__(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._start) * 1e3
            self.by_phase[self.phase][info["generation"]].append(ms)


def _reports(devices: int, r: int) -> list[list[tuple[bytes, bytes]]]:
    rng = random.Random(r)
    out: list[tuple[bytes, bytes]] = []
    for n in range(devices):
        moving = n % 10 < 7  # the bench's mixture: about 70 % drive
        lat, lon = destination(*CENTER, (n * 37) % 360, (n % 5_000) + (14.0 * r if moving else 0))
        fix = Telemetry(
            ts=T0 + r,
            state=DeviceState.BUFFERING,
            lat=lat,
            lon=lon,
            acc=4.0,
            hb=10.0,
            db=2.29,
            spd=14.0 if moving else rng.choice((0.0, 0.4)),
        )
        out.append((TOPICS.telemetry(f"bwc-{n}").encode(), encode(fix)))
    return [out[i : i + BATCH] for i in range(0, len(out), BATCH)]


def _full_collection_ms() -> float:
    start = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - start) * 1e3


async def main(argv: list[str]) -> None:
    freezer = HeapFreezer() if "--freezer" in argv else None
    sizes = [a for a in argv if a.isdigit()]
    devices = int(sizes[0]) if sizes else 100_000
    rounds = [_reports(devices, r) for r in range(ROUNDS)]
    now = [T0]
    pauses = _Pauses()
    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteLedger(Path(tmp) / "ledger.sqlite3") as ledger:
            engine = Engine(
                topics=TOPICS,
                transport=MemoryBus(),
                ledger=ledger,
                rules=DEFAULT_RULES,
                policy=InclusionPolicy(),
                signer=CommandSigner.generate(),
                settings=EngineSettings(),
                clock=lambda: now[0],
            )
            gc.collect()
            gc.freeze()  # the warm-up's freeze, before the fleet arrives
            gc.callbacks.append(pauses)
            if freezer is not None:
                freezer.install()  # after the timer: it sees the collection, then freezes
            for r, batches in enumerate(rounds):
                now[0] = T0 + r
                pauses.phase = "arrival" if r == 0 else "steady"
                for batch in batches:
                    await engine.intake.on_telemetry(batch)
            pauses.phase = "forced"
            if freezer is not None:
                freezer.uninstall()
            # What the next young collection walks: every tracked object made since the
            # last collection and still alive, however balanced the count that
            # schedules collections (each fix frees what it replaces) has stayed.
            young = len(gc.get_objects(generation=0))
            start = time.perf_counter()
            gc.collect(0)
            young_ms = (time.perf_counter() - start) * 1e3
            tracked = len(gc.get_objects())
            # The first: what the next full collection would cost. The second, after the
            # first has untracked the tuples of floats it found (CPython does that).
            unfrozen_ms = [_full_collection_ms(), _full_collection_ms()]
            gc.freeze()
            frozen_ms = _full_collection_ms()
            gc.callbacks.remove(pauses)
            gc.unfreeze()
    how = "with the heap freezer" if freezer is not None else "without the heap freezer"
    lines = [f"{devices} devices, {ROUNDS - 1} rounds of fixes after their first, {how}"]
    for phase in ("arrival", "steady"):
        for gen, ms in sorted(pauses.by_phase[phase].items()):
            lines.append(
                f"{phase:8s} gen{gen}: {len(ms):4d} collections, longest {max(ms):7.2f} ms, "
                f"total {sum(ms):8.2f} ms"
            )
    lines += [
        f"young generation after the rounds: {young} objects, its collection {young_ms:.2f} ms",
        f"objects the collector tracks outside the frozen heap: {tracked}",
        f"full collection now              {unfrozen_ms[0]:7.2f} ms",
        f"full collection again            {unfrozen_ms[1]:7.2f} ms",
        f"full collection, all frozen      {frozen_ms:7.2f} ms",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
