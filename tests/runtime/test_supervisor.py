"""Supervised children: started, reported, restarted after a crash, stopped with us."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from actimesh.errors import ConfigError
from actimesh.runtime.supervisor import ChildError, Supervisor
from tests.waiting import eventually


async def _ask(url: str) -> str:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        return (await reader.readline()).decode().strip()
    finally:
        writer.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_killed_child_is_restarted_and_a_cancel_stops_it() -> None:
    sup = Supervisor("echo", "tests.runtime.supervised:serve_echo", "hello", backoff_initial_s=0.05)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sup.run(), name="echo")
        async with asyncio.timeout(30):
            await sup.ready.wait()
        assert sup.url is not None
        first = sup.pid
        assert first is not None
        assert await _ask(sup.url) == f"hello {first}"
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: sup.restarts == 1 and sup.ready.is_set(), 30)
        assert sup.pid != first
        assert await _ask(sup.url) == f"hello {sup.pid}"
        last = sup.pid
        task.cancel()
    assert last is not None
    assert not _alive(last)


async def test_a_child_that_cannot_start_fails_the_first_start_with_its_error() -> None:
    sup = Supervisor(
        "x", "tests.runtime.supervised:refuse_to_start", "port 1 is taken: pass --port N"
    )
    with pytest.raises(ConfigError, match="port 1 is taken: pass --port N"):
        await sup.run()


async def test_a_child_that_exits_before_it_is_ready_is_an_error() -> None:
    sup = Supervisor("x", "tests.runtime.supervised:crash_at_once", None)
    with pytest.raises(ChildError, match="exited before it was ready"):
        await sup.run()
