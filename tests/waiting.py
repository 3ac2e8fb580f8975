"""Waiting in tests: on the condition itself, never on a fixed sleep.

A fixed sleep is a guess about how fast the machine is: too short and the test fails on
a loaded CI machine, too long and the suite crawls. :func:`eventually` polls the
condition instead and gives up with a ``TimeoutError`` that names it. :func:`quiet_for`
is the one deliberate exception: a window in which something must *not* happen (a
command nobody should get) has no condition to wait for, so it is spelled out as such
and used only after the thing that would have caused it was seen to be handled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

__all__ = ["eventually", "eventually_sync", "quiet_for"]


def _name(check: Callable[..., Any]) -> str:
    return getattr(check, "__qualname__", repr(check))


async def eventually(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    """Poll ``check`` (sync, or returning an awaitable) until it returns something
    truthy, and return that. ``TimeoutError`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if asyncio.iscoroutine(result) or asyncio.isfuture(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(every)
    except TimeoutError:
        raise TimeoutError(f"{_name(check)} not true within {timeout:g} s") from None


def eventually_sync(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    """:func:`eventually` for code outside an event loop (processes, threads)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{_name(check)} not true within {timeout:g} s")
        time.sleep(every)


async def quiet_for(seconds: float) -> None:
    """A window in which something must not happen. Not a wait for readiness: call it
    only once the cause was seen handled (a counter moved, a reply arrived)."""
    await asyncio.sleep(seconds)
