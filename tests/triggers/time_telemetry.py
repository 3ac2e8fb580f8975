"""What one fix costs the engine, for a device that moves and for one that stands.

Run from the repository root (about half a minute of one core)::

    PYTHONPATH=src .venv/bin/python -m tests.triggers.time_telemetry [--profile | --index]

It feeds the engine's telemetry handler (:meth:`~actimesh.triggers.intake.Intake.
on_telemetry`, the code the transport calls) pre-encoded motion-scaled reports in
batches, as the lean reader hands them over, on a fake clock one second a round: a
*moving* fleet (14 m/s, a new report every second, each crossing the dead-band) and a
*still* one (the same place give or take the GPS error's wander, speed 0), timed
round by round in alternation so both see the same machine, each by the index as it
was before rows carried their cell's key and as it is now (``_Before``). Rounds are
timed in CPU time (``time.thread_time``), not wall time: on a shared machine the wall
time of a round is mostly other processes' turns. The collector runs as in the engine
(heap frozen once the fleet is indexed) and the collections during each round are
counted, so the figures include what per-fix garbage costs. ``--profile`` prints
cProfile's top entries for each fleet instead, ``--index`` times the index's
``upsert_latest`` alone on the same kind of fixes. Not a test: it prints numbers and
asserts nothing.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import math
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from actimesh.broker.codec import encode
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import DeviceState, Telemetry
from actimesh.broker.topics import Topics
from actimesh.geofence import GridIndex, InclusionPolicy, destination
from actimesh.geofence.geodesy import to_ecef
from actimesh.geofence.index import _ROW, _SEP, _TS_AT, _XYZ_AT, _check_fix
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings

T0 = 1_800_000_000.0
CENTER = (51.0447, -114.0719)
TOPICS = Topics("am-time")
#: Devices per fleet, reports per batch (the lean reader's batches are up to this), rounds.
DEVICES, BATCH, ROUNDS, WARM_ROUNDS = 20_000, 64, 24, 6
SPEED_MPS, DEADBAND_M, ACC_M = 14.0, 2.29, 4.0

Batch = list[tuple[bytes, bytes]]


def _fleet_reports(prefix: str, *, moving: bool, rounds: int) -> list[list[Batch]]:
    """Per round, the fleet's reports in batches: one per device, at ``T0 + round``."""
    rng = random.Random(prefix)
    starts = [
        destination(*CENTER, rng.uniform(0.0, 360.0), rng.uniform(0.0, 5_000.0))
        for _ in range(DEVICES)
    ]
    headings = [rng.uniform(0.0, 360.0) for _ in range(DEVICES)]
    topics = [TOPICS.telemetry(f"{prefix}-{n}").encode() for n in range(DEVICES)]
    out: list[list[Batch]] = []
    for r in range(rounds):
        reports: Batch = []
        for n, start in enumerate(starts):
            if moving:
                lat, lon = destination(*start, headings[n], SPEED_MPS * r)
                spd = SPEED_MPS
            else:
                # A still receiver's error wanders a few centimetres between epochs.
                lat, lon = destination(*start, rng.uniform(0.0, 360.0), rng.uniform(0.0, 0.3))
                spd = 0.0
            fix = Telemetry(
                ts=T0 + r,
                state=DeviceState.BUFFERING,
                lat=lat,
                lon=lon,
                acc=ACC_M,
                batt=80.0,
                hb=10.0,
                db=DEADBAND_M,
                spd=spd,
            )
            reports.append((topics[n], encode(fix)))
        out.append([reports[i : i + BATCH] for i in range(0, len(reports), BATCH)])
    return out


class _Before(GridIndex):
    """The index as it upserted before each row carried its cell's key: it looked the
    device up twice (lateness, then replacement) and worked out the old fix's cell
    again from its coordinates. Its rows are the same but for the key."""

    def upsert(self, device_id: str, lat: float, lon: float, acc: float | None, ts: float) -> None:
        _check_fix(lat, lon, acc, ts)
        if _SEP in device_id:
            raise ValueError("device ids cannot contain NUL")
        x, y, z = to_ecef(lat, lon)
        key = self._old_key(x, y, z)
        rows = self._rows
        old = rows.get(device_id)
        rows[device_id] = _ROW.pack(lat, lon, math.nan if acc is None else acc, ts, x, y, z)
        if old is not None:
            old_key = self._old_key(*_XYZ_AT.unpack_from(old, 32))
            if old_key == key:
                return
            self._leave_cell(old_key, device_id)
        cell = self._cells.get(key)
        self._cells[key] = device_id if cell is None else cell + _SEP + device_id

    def upsert_latest(
        self, device_id: str, lat: float, lon: float, acc: float | None, ts: float
    ) -> bool:
        old = self._rows.get(device_id)
        if old is not None and _TS_AT.unpack_from(old, 24)[0] > ts:
            return False
        self.upsert(device_id, lat, lon, acc, ts)
        return True

    def remove(self, device_id: str) -> None:
        old = self._rows.pop(device_id, None)
        if old is not None:
            self._leave_cell(self._old_key(*_XYZ_AT.unpack_from(old, 32)), device_id)

    def _old_key(self, x: float, y: float, z: float) -> int:
        c, off, bits = self._cell, self._offset, self._bits
        return (
            ((math.floor(x / c) + off) << (2 * bits))
            | ((math.floor(y / c) + off) << bits)
            | (math.floor(z / c) + off)
        )


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def _feed(engine: Engine, batches: list[Batch]) -> None:
    for batch in batches:
        await engine.intake.on_telemetry(batch)


def _collections() -> int:
    return sum(s["collections"] for s in gc.get_stats())


def _engine(ledger: SqliteLedger, clock: _Clock, index: GridIndex) -> Engine:
    return Engine(
        topics=TOPICS,
        transport=MemoryBus(),
        ledger=ledger,
        rules=DEFAULT_RULES,
        policy=InclusionPolicy(),
        signer=CommandSigner.generate(),
        settings=EngineSettings(),
        clock=clock,
        index=index,
    )


def _index_only() -> None:
    """The index alone: ``upsert_latest`` of the same fixes, before and now, CPU time."""
    rng = random.Random(1)
    starts = [
        destination(*CENTER, rng.uniform(0.0, 360.0), rng.uniform(0.0, 5_000.0))
        for _ in range(DEVICES)
    ]
    headings = [rng.uniform(0.0, 360.0) for _ in range(DEVICES)]
    ids = [f"d{n}" for n in range(DEVICES)]
    fixes = {
        "moving": [
            [(ids[n], *destination(*p, headings[n], SPEED_MPS * r)) for n, p in enumerate(starts)]
            for r in range(ROUNDS)
        ],
        "still": [
            [(ids[n], *destination(*p, rng.uniform(0.0, 360.0), 0.3)) for n, p in enumerate(starts)]
            for r in range(ROUNDS)
        ],
    }
    indexes = {
        (name, v): _Before() if v == "before" else GridIndex()
        for name in fixes
        for v in ("before", "now")
    }
    samples: dict[tuple[str, str], list[float]] = {run: [] for run in indexes}
    for r in range(ROUNDS):
        for run in list(indexes) if r % 2 else list(indexes)[::-1]:
            upsert, ts = indexes[run].upsert_latest, float(r)
            start = time.thread_time()
            for device_id, lat, lon in fixes[run[0]][r]:
                upsert(device_id, lat, lon, ACC_M, ts)
            if r >= WARM_ROUNDS:
                samples[run].append((time.thread_time() - start) / DEVICES * 1e6)
    us = {run: statistics.median(values) for run, values in samples.items()}
    lines = [f"index upsert alone, {DEVICES} devices a fleet, CPU us per fix"]
    lines.extend(f"{name:6s} {v:6s} {us[name, v]:6.3f} us" for name, v in indexes)
    lines.extend(
        f"{name:6s} now/before   {us[name, 'now'] / us[name, 'before']:6.3f}" for name in fixes
    )
    sys.stdout.write("\n".join(lines) + "\n")


async def main(argv: list[str]) -> None:
    if "--index" in argv:
        _index_only()
        return
    profile = "--profile" in argv
    fleets = {
        "moving": _fleet_reports("mov", moving=True, rounds=ROUNDS),
        "still": _fleet_reports("sta", moving=False, rounds=ROUNDS),
    }
    clock = _Clock()
    runs = [(name, version) for name in fleets for version in ("before", "now")]
    per_fix: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    collected = dict.fromkeys(runs, 0)
    profiles = {run: cProfile.Profile() for run in runs}
    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteLedger(Path(tmp) / "ledger.sqlite3") as ledger:
            engines = {
                "before": _engine(ledger, clock, _Before()),
                "now": _engine(ledger, clock, GridIndex()),
            }
            for r in range(ROUNDS):
                clock.now = T0 + r
                if r == WARM_ROUNDS:
                    # The engine's warm-up: collect, then freeze what is alive.
                    gc.collect()
                    gc.freeze()
                # Alternate which goes first, so neither always follows the other.
                for name, version in runs if r % 2 else runs[::-1]:
                    batches = fleets[name][r]
                    engine = engines[version]
                    if r < WARM_ROUNDS:
                        await _feed(engine, batches)
                        continue
                    before = _collections()
                    if profile:
                        profiles[name, version].enable()
                    start = time.thread_time()
                    await _feed(engine, batches)
                    elapsed = time.thread_time() - start
                    if profile:
                        profiles[name, version].disable()
                    collected[name, version] += _collections() - before
                    per_fix[name, version].append(elapsed / DEVICES * 1e6)
            gc.unfreeze()
    if profile:
        for (name, version), prof in profiles.items():
            sys.stdout.write(f"--- {name}, {version}\n")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(12)
        return
    us = {run: statistics.median(samples) for run, samples in per_fix.items()}
    timed = (ROUNDS - WARM_ROUNDS) * DEVICES
    lines = [
        f"{DEVICES} moving + {DEVICES} still devices a fleet, batches of {BATCH}, "
        f"median of {ROUNDS - WARM_ROUNDS} rounds, CPU us per fix"
    ]
    lines.extend(
        f"{name:6s} {version:6s} {us[name, version]:6.2f} us   collections while timed "
        f"{collected[name, version]} ({collected[name, version] / timed * 1e3:.2f} per 1000 fixes)"
        for name, version in runs
    )
    lines.extend(
        f"{name:6s} now/before   {us[name, 'now'] / us[name, 'before']:6.3f}" for name in fleets
    )
    lines.extend(
        f"moving/still {version:6s} {us['moving', version] / us['still', version]:6.3f}"
        for version in ("before", "now")
    )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
