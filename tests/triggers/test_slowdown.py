"""The engine's slow-down: asked for when it sheds telemetry, with hysteresis so that it
does not flap, renewed while the overload lasts, cleared when it ends, and the planner
trusting the slower heartbeat exactly as long as devices may use it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest

from actimesh.broker.codec import decode
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import SlowDown
from actimesh.broker.topics import Topics
from actimesh.errors import ConfigError
from actimesh.security.signing import CommandSigner
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.slowdown import Overload, SlowDownControl
from actimesh.triggers.stats import EngineStats

TOPICS = Topics("am-slow")
SETTINGS = EngineSettings(
    slowdown_heartbeat_s=30.0,
    slowdown_shed_per_s=100.0,
    slowdown_calm_per_s=10.0,
    slowdown_window_s=10.0,
    slowdown_hold_s=60.0,
    slowdown_ttl_s=120.0,
)


def _overload() -> Overload:
    return Overload(shed_per_s=100.0, calm_per_s=10.0, window_s=10.0, hold_s=60.0)


def _feed(
    overload: Overload, start: float, end: float, per_s: float, total: int
) -> tuple[list[tuple[float, bool]], int]:
    """Readings every 2 s from ``start`` to ``end`` at ``per_s`` shed a second; returns the
    changes seen and the counter at the end."""
    changes: list[tuple[float, bool]] = []
    t = start
    while t <= end:
        change = overload.observe(t, total)
        if change is not None:
            changes.append((t, change))
        total += int(per_s * 2)
        t += 2.0
    return changes, total


def test_overload_begins_only_when_the_shed_rate_reaches_the_threshold() -> None:
    overload = _overload()
    changes, total = _feed(overload, 0.0, 60.0, 99.0, 0)
    assert changes == []
    changes, _ = _feed(overload, 62.0, 80.0, 150.0, total)
    assert changes
    assert changes[0][1] is True
    assert overload.active


def test_overload_ends_only_after_the_rate_stays_calm_for_the_hold() -> None:
    overload = _overload()
    changes, total = _feed(overload, 0.0, 20.0, 500.0, 0)
    assert [c for _t, c in changes] == [True]
    # Calm, then a burst above calm_per_s (but below shed_per_s) restarts the hold.
    changes, total = _feed(overload, 22.0, 70.0, 0.0, total)
    assert changes == []
    changes, total = _feed(overload, 72.0, 84.0, 50.0, total)
    assert changes == []
    changes, total = _feed(overload, 86.0, 140.0, 0.0, total)
    assert changes == []  # not calm for 60 s yet since the burst's window passed
    changes, _ = _feed(overload, 142.0, 200.0, 0.0, total)
    assert [c for _t, c in changes] == [False]
    calm_from = 96.0  # the burst's last reading (84 s) left the window 10 s later
    assert changes[0][0] >= calm_from + 60.0 - 2.0
    assert not overload.active


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"slowdown_calm_per_s": 100.0}, "below engine.slowdown_shed_per_s"),
        ({"slowdown_heartbeat_s": 301.0}, "at most 300"),
        ({"slowdown_heartbeat_s": 0.0}, "positive"),
        ({"slowdown_window_s": -1.0}, "positive"),
        ({"slowdown_calm_per_s": -1.0}, "0 or more"),
        ({"slowdown": "yes"}, "true or false"),
    ],
)
def test_bad_slow_down_settings_are_one_line_errors(change: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        replace(SETTINGS, **change)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@dataclass
class _World:
    control: SlowDownControl
    sent: list[SlowDown] = field(default_factory=list)
    trusted: list[float] = field(default_factory=list)
    now: float = 1_800_000_000.0
    shed: int = 0


@asynccontextmanager
async def _world() -> AsyncIterator[_World]:
    bus = MemoryBus()
    out = bus.outbound("eng-cmd")
    signer = CommandSigner.generate()
    holder: list[_World] = []
    trusted: list[float] = []

    def clock() -> float:
        return holder[0].now

    control = SlowDownControl(
        out=out,
        signer=signer,
        topics=TOPICS,
        settings=SETTINGS,
        stats=EngineStats(),
        clock=clock,
        shed=lambda: holder[0].shed,
        trust=trusted.append,
    )
    world = _World(control, trusted=trusted)
    holder.append(world)
    verifier = signer.verifier()

    def listen(topic: str, payload: bytes) -> None:
        assert topic == TOPICS.slowdown()
        message = decode(SlowDown, payload)
        verifier.verify_slowdown(message, agency=TOPICS.agency, now=world.now)
        world.sent.append(message)

    bus.listen(listen)
    async with asyncio.TaskGroup() as tg:
        link = tg.create_task(out.run())
        await out.wait_connected(timeout=1.0)
        yield world
        link.cancel()


async def _run(world: _World, seconds: float, per_s: float) -> None:
    for _ in range(int(seconds / 2)):
        world.now += 2.0
        world.shed += int(per_s * 2)
        await world.control.step()


async def test_the_engine_asks_renews_and_clears_with_newer_signed_messages() -> None:
    async with _world() as w:
        await _run(w, 20.0, 0.0)
        assert w.sent == []
        await _run(w, 12.0, 1000.0)
        assert len(w.sent) == 1
        first = w.sent[0]
        assert first.hb == 30.0
        assert first.exp == pytest.approx(first.ts + 120.0)
        # The planner trusts the slower heartbeat before any device hears of it.
        assert w.trusted == [30.0]
        await _run(w, 42.0, 1000.0)  # renewed every ttl / 3 = 40 s
        assert [m.hb for m in w.sent] == [30.0, 30.0]
        assert w.control.overload.active
        await _run(w, 80.0, 0.0)
        clear = w.sent[-1]
        assert clear.hb is None
        seqs = [m.seq for m in w.sent]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        # Still trusted while a device may be on its last slow heartbeat...
        assert w.trusted == [30.0]
        last_slow = w.sent[-2]
        await _run(w, last_slow.exp + 30.0 - w.now, 0.0)
        assert w.trusted == [30.0]
        # ... and back to the configured policy once none can be.
        await _run(w, 44.0, 0.0)
        assert w.trusted == [30.0, 0.0]
        assert len([m for m in w.sent if m.hb is None]) == 1  # cleared once, no flapping


async def test_a_starting_engine_trusts_a_slow_down_sent_before_it_started() -> None:
    """A retained slow-down from before a restart may still hold on the devices."""
    async with _world() as w, asyncio.TaskGroup() as tg:
        task = tg.create_task(w.control.run())
        await asyncio.sleep(0)
        assert w.trusted == [30.0]
        task.cancel()
    w.now += SETTINGS.slowdown_ttl_s + SETTINGS.slowdown_heartbeat_s + 1.0
    await w.control.step()
    assert w.trusted == [30.0, 0.0]
    assert w.sent == []  # nothing published: it was never overloaded
