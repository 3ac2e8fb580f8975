"""Engines under test, running for the length of a block."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from actimesh.triggers import Engine


@asynccontextmanager
async def running(engines: list[Engine], *, warm_within: float) -> AsyncIterator[list[Engine]]:
    """The engines run, warmed up, until the block ends (then they are cancelled)."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(e.run(), name=e.settings.engine_id) for e in engines]
        async with asyncio.timeout(warm_within):
            for engine in engines:
                await engine.warmed.wait()
        try:
            yield engines
        finally:
            for task in tasks:
                task.cancel()
