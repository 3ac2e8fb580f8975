"""The heap freezer: after a full collection, and only then, the survivors are frozen;
the engine installs it with its warm-up's freeze and removes it when it stops."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from actimesh.broker.memory import MemoryBus
from actimesh.broker.topics import Topics
from actimesh.geofence import InclusionPolicy
from actimesh.ledger import SqliteLedger
from actimesh.security.signing import CommandSigner
from actimesh.triggers import DEFAULT_RULES, Engine, EngineSettings
from actimesh.triggers.heap import HeapFreezer


class _Freezes:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_only_the_end_of_a_full_collection_freezes() -> None:
    freezes = _Freezes()
    freezer = HeapFreezer(freeze=freezes)
    for generation in (0, 1, 2):
        freezer("start", {"generation": generation})
    assert freezes.calls == 0
    freezer("stop", {"generation": 0, "collected": 5, "uncollectable": 0})
    freezer("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
    assert freezes.calls == 0
    freezer("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    freezer("stop", {"generation": 2, "collected": 9, "uncollectable": 0})
    assert (freezes.calls, freezer.freezes) == (2, 2)


@pytest.fixture
def installed() -> Iterator[HeapFreezer]:
    freezer = HeapFreezer()
    freezer.install()
    try:
        yield freezer
    finally:
        freezer.uninstall()
        gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_after_a_full_collection_the_survivors_are_frozen_and_garbage_is_not(
    installed: HeapFreezer,
) -> None:
    gc.collect()
    frozen_before = gc.get_freeze_count()
    alive = [_Node() for _ in range(200)]
    for _ in range(100):
        _Node()  # cyclic garbage: the collection frees it, nothing of it is frozen
    gc.collect()
    assert installed.freezes >= 2
    assert all(gc.is_tracked(node) for node in alive)
    # The survivors moved to the permanent generation, so a collection no longer walks
    # them; the garbage cycles were gone before the freeze.
    assert gc.get_freeze_count() >= frozen_before + len(alive)
    assert not any(type(obj) is _Node for obj in gc.get_objects())
    freezes = installed.freezes
    gc.collect(1)  # a young collection freezes nothing
    assert installed.freezes == freezes


def test_installing_twice_registers_once_and_uninstall_removes_it() -> None:
    freezer = HeapFreezer(freeze=_Freezes())
    freezer.install()
    freezer.install()
    try:
        assert gc.callbacks.count(freezer) == 1
    finally:
        freezer.uninstall()
    assert freezer not in gc.callbacks
    freezer.uninstall()  # not installed: nothing to do


def _freezers() -> list[HeapFreezer]:
    return [cb for cb in gc.callbacks if isinstance(cb, HeapFreezer)]


@pytest.mark.parametrize("freeze_heap", [True, False])
async def test_the_engine_installs_the_freezer_with_its_warm_up_and_removes_it_when_stopped(
    tmp_path: Path, freeze_heap: bool
) -> None:
    async with SqliteLedger(tmp_path / "ledger.sqlite3") as ledger:
        engine = Engine(
            topics=Topics("am-heap"),
            transport=MemoryBus(),
            ledger=ledger,
            rules=DEFAULT_RULES,
            policy=InclusionPolicy(),
            signer=CommandSigner.generate(),
            settings=EngineSettings(warmup_s=0.01, freeze_heap=freeze_heap),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(engine.run(), name="engine-heap")
                async with asyncio.timeout(10):
                    await engine.warmed.wait()
                assert len(_freezers()) == (1 if freeze_heap else 0)
                task.cancel()
            assert _freezers() == []
        finally:
            gc.unfreeze()
