"""The resilient client's guards that are not visible through the broker."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from actimesh.broker.client import resume_cancellation


async def test_swallowed_cancellation_is_raised_again() -> None:
    """Python 3.11's wait_for can eat a cancel; the link must not carry on regardless."""
    resumed = asyncio.Event()

    async def library_call_that_swallows() -> None:
        # What asyncio.wait_for does on 3.11 when the inner future wins the race:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        resumed.set()
        resume_cancellation()
        await asyncio.sleep(10)  # not reached

    task = asyncio.create_task(library_call_that_swallows())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert resumed.is_set()


async def test_no_cancellation_means_no_raise() -> None:
    resume_cancellation()
