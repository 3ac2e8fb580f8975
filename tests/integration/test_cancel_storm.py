"""A storm of cancellations: every long-running part stops at once, whenever it is asked.

A cancellation that is lost (Python 3.11's ``asyncio.wait_for`` swallowing it as the
awaited future completes, a shield, a loop catching ``CancelledError``) shows up only
when it arrives at one particular moment, so this test asks at many moments: an engine
replica, a device agent and a dispatch service are each started and cancelled a hundred
times or more (500 cancellations in all) at random points of their lives (before they
ran at all, while connecting, subscribing, warming up, planning and confirming), while a
mesh beside them carries live traffic: telemetry, TASER draws, commands,
acknowledgements and activation records.

Why 500 and not more: the rounds are mostly waiting (a round lasts its random moment,
about 50 ms on average, and every 20th waits for readiness), so the test's time grows
with them; at 1,000 it took 70 s of the suite's 13 minutes. 500 still reach every stage
of each part tens of times (per part, 10% before it ran, half within 10 ms, a third
within 10-100 ms, and at least 5 in steady work), and a cancellation lost one time in
twenty at one stage still fails it (checked by swallowing one in the agent's telemetry
loop).

Each must be done soon after its cancel (an engine or an agent within 1 s; the dispatch
within its HTTP server's graceful shutdown window), cancelled rather than failed, and
leave no task of its own behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from actimesh.broker.messages import DeviceKind
from actimesh.broker.transport import MqttTransport
from actimesh.devices.agent import DeviceAgent
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.dispatch.service import DispatchService
from actimesh.ledger import SqliteLedger
from actimesh.triggers.rules import DEFAULT_RULES
from tests.dispatch.conftest import FAST
from tests.integration.harness import CENTER, HOST, Mesh, build_engine, fixed, mesh
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(240)]

#: Cancels per part: 500 in all (the module docstring says why not more).
ROUNDS = {"engine": 200, "agent": 200, "dispatch": 100}
#: How soon each part must be done after its cancel. A lost cancellation shows as a
#: part still running long after; these limits only have to be well above a healthy
#: stop. The dispatch's web server gives requests in flight a graceful window of its
#: own (uvicorn's ``timeout_graceful_shutdown``, 2 s) and polls its connections every
#: 0.1 s while it closes; under coverage in CI its slowest stop reached 1.01 s, so its
#: limit is that window with a margin rather than the engine's 1 s.
STOP_LIMITS_S = {"engine": 1.0, "agent": 1.0, "dispatch": 2.5}


@dataclass
class Storm:
    """What one part went through."""

    name: str
    rounds: int = 0
    reached_ready: int = 0
    slowest_stop_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def _moment(rng: random.Random) -> float | None:
    """When to cancel: None is before the task ran at all; otherwise seconds after the
    start, mostly early (connecting, subscribing), sometimes well into steady work."""
    pick = rng.random()
    if pick < 0.1:
        return None
    if pick < 0.6:
        return rng.uniform(0.0, 0.01)
    if pick < 0.95:
        return rng.uniform(0.01, 0.1)
    return rng.uniform(0.1, 1.0)


async def _storm(
    storm: Storm,
    rng: random.Random,
    make: Callable[[int], tuple[Coroutine[Any, Any, None], Callable[[], bool]]],
) -> None:
    """Start a part ``storm.rounds`` times, cancel it at a random moment, check it."""
    for i in range(storm.rounds):
        before = asyncio.all_tasks()
        body, is_ready = make(i)
        task = asyncio.create_task(body, name=f"storm-{storm.name}-{i}")
        if i % 20 == 19:
            # Every 20th round is cancelled in steady work, however slow the machine.
            await eventually(is_ready, timeout=15)
            await asyncio.sleep(rng.uniform(0.0, 0.05))
        elif (moment := _moment(rng)) is not None:
            await asyncio.sleep(moment)
        storm.reached_ready += is_ready()
        asked = time.monotonic()
        task.cancel()
        await asyncio.wait([task], timeout=STOP_LIMITS_S[storm.name])
        took = time.monotonic() - asked
        storm.slowest_stop_s = max(storm.slowest_stop_s, took)
        if not task.done():
            storm.failures.append(f"round {i}: still running {took:.2f} s after cancel")
            task.cancel()
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(10):
                    await task
            continue
        if not task.cancelled():
            exc = task.exception()
            storm.failures.append(f"round {i}: ended with {exc!r} instead of cancelled")
        left = [t.get_name() for t in asyncio.all_tasks() - before if not t.done()]
        if left:
            storm.failures.append(f"round {i}: left tasks behind: {sorted(left)}")


@contextlib.asynccontextmanager
async def traffic(m: Mesh) -> AsyncIterator[None]:
    """Two TASER draws a second (from six CEWs, each within its own rate limit), each
    commanding its paired body camera and a neighbour, which answer."""
    cews = []
    for n in range(6):
        cews.append(m.add(f"cew{n}", DeviceKind.CEW, at=0.0, paired=(f"bwc{n}",)))
        m.add(f"bwc{n}", DeviceKind.BODY_CAM, at=float(n), bearing=60.0 * n)
    await m.ready()

    async def draws() -> None:
        for n in itertools.cycle(range(len(cews))):
            await cews[n].raise_event("taser_draw")
            await asyncio.sleep(0.5)

    task = m.tg.create_task(draws(), name="draws")
    try:
        yield
    finally:
        task.cancel()


async def test_hundreds_of_cancellations_each_stop_at_once_and_leave_nothing(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    rng = random.Random(20261206)
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        traffic(m),
        SqliteLedger(tmp_path / "storm-ledger.sqlite3") as storm_ledger,
    ):
        engine = m.engine
        assert engine is not None

        def an_engine(i: int) -> tuple[Coroutine[Any, Any, None], Callable[[], bool]]:
            # A replica in the engines' share group; its session ends a second after it,
            # so a cancelled replica leaves no session taking a share of later events.
            settings = replace(m.settings, engine_id=f"storm-{i}", session_expiry_s=1)
            replica = build_engine(
                m.topics, m.port, storm_ledger, signer=m.signer, settings=settings
            )
            return replica.run(), replica.ready.is_set

        def an_agent(i: int) -> tuple[Coroutine[Any, Any, None], Callable[[], bool]]:
            device_id = f"storm-bwc-{i % 4}"
            camera = Camera(
                device_id=device_id,
                kind=DeviceKind.BODY_CAM,
                source=SyntheticSource(device_id),
                store=m.store,
                started_at=time.time() - 60.0,
            )
            agent = DeviceAgent(
                topics=m.topics,
                device_id=device_id,
                kind=DeviceKind.BODY_CAM,
                camera=camera,
                broker_host=HOST,
                broker_port=m.port,
                position=fixed(*CENTER, acc=1.0),
                verifier=m.signer.verifier(),
                telemetry_interval_s=0.02,
            )
            return agent.run(), lambda: agent.link.connected

        def a_dispatch(i: int) -> tuple[Coroutine[Any, Any, None], Callable[[], bool]]:
            service = DispatchService(
                topics=m.topics,
                transport=MqttTransport(HOST, m.port),
                settings=FAST,
                data_dir=tmp_path / "dispatch",
                ledger_location=tmp_path / "ledger.sqlite3",
                max_fix_age_s=10.0,
                event_types=tuple(r.event_type for r in DEFAULT_RULES),
            )
            return service.run(), service.ready.is_set

        storms = [Storm(name, rounds) for name, rounds in ROUNDS.items()]
        makers = [an_engine, an_agent, a_dispatch]
        handled_before = engine.stats.activations
        # One part at a time: each round's "no task left" compares against the tasks
        # that ran before it, which the other parts' rounds would change.
        for storm, make in zip(storms, makers, strict=True):
            await _storm(storm, rng, make)
        # The mesh beside the storm kept working throughout, and still does.
        await eventually(lambda: engine.stats.activations > handled_before + 5, timeout=10)

    report = {s.name: (s.rounds, s.reached_ready, round(s.slowest_stop_s, 3)) for s in storms}
    assert sum(s.rounds for s in storms) >= 500
    for storm in storms:
        assert not storm.failures, f"{storm.name}: {storm.failures[:5]} ({report})"
        assert storm.slowest_stop_s <= STOP_LIMITS_S[storm.name], report
        # The storm reached every stage: some rounds before readiness, some after.
        assert storm.rounds // 20 <= storm.reached_ready < storm.rounds, report
