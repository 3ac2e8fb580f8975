"""Two guards every test runs under: a time limit, and no unexpected logged exception.

**Time limit.** A hung test is worse than a failed one: CI waits for its own limit and
says nothing about why. Each phase of a test (setup, call, teardown) gets
``DEFAULT_LIMIT_S`` seconds, or what ``@pytest.mark.time_limit(seconds)`` gives it.
When time runs out the test fails with the stack of every thread and of every asyncio
task of the running loop in its message: the dump that found the engine task waiting
in state *cancelling* is the one that would have found it.

The limit is a ``SIGALRM`` timer that raises :func:`pytest.fail` (a ``BaseException``)
in the main thread, where pytest runs tests: asyncio lets that out of any task and out
of the loop, so even a test whose task swallows cancellations stops.

**Logged exceptions.** An exception that a task or a handler caught and logged is a bug
that the test's own assertions may never see (the activation still went out, through
another path). So a test fails when anything logged a record with an exception at
ERROR or above, unless the test declares it with
``@pytest.mark.logs_exception(SomeError, ..., reason="...")``: the test provokes that
failure on purpose, and any other type still fails it. (``reason`` is required: it says
why, and without a keyword pytest would take a lone class for the decorated object.)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Generator, Iterator
from types import FrameType

import pytest

__all__ = [
    "DEFAULT_LIMIT_S",
    "logged_exceptions_fail_the_test",
    "pytest_configure",
    "pytest_runtest_call",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
]

#: Seconds per phase. The slowest test of the suite takes about a fifth of this on 2
#: cores; a test that needs more says so with the marker.
DEFAULT_LIMIT_S = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "time_limit(seconds): this test's setup, call and teardown may each take"
    )
    config.addinivalue_line(
        "markers",
        "logs_exception(*types, reason): the test provokes these logged exceptions",
    )


def _stacks() -> str:
    """Every thread's stack and every asyncio task's, for a hung test's report."""
    out = io.StringIO()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"\n--- thread {names.get(ident, ident)}\n")
        traceback.print_stack(frame, file=out)
    loop = asyncio._get_running_loop()
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            state = "cancelling" if task.cancelling() else "pending"
            out.write(f"\n--- task {task.get_name()} ({state})\n")
            task.print_stack(file=out)
    return out.getvalue()


@contextlib.contextmanager
def _limit(item: pytest.Item, phase: str) -> Iterator[None]:
    marker = item.get_closest_marker("time_limit")
    seconds = float(marker.args[0]) if marker is not None else DEFAULT_LIMIT_S
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; pytest runs tests there
        return

    def expired(signum: int, frame: FrameType | None) -> None:
        pytest.fail(
            f"{phase} of {item.nodeid} took more than {seconds:g} s "
            f"(raise it with @pytest.mark.time_limit(seconds) if that is expected):\n" + _stacks(),
            pytrace=False,
        )

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _limit(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _limit(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    with _limit(item, "teardown"):
        return (yield)


class ExceptionCollector(logging.Handler):
    """Records logged with an exception (what fails a test here)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None and record.exc_info[1] is not None:
            self.records.append(record)


@pytest.fixture(autouse=True)
def logged_exceptions_fail_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if anything logged an exception it did not declare."""
    marker = request.node.get_closest_marker("logs_exception")
    expected: tuple[type[BaseException], ...] = ()
    if marker is not None:
        if not marker.kwargs.get("reason"):
            pytest.fail("@pytest.mark.logs_exception needs reason=: say why it is expected")
        expected = tuple(marker.args)
    collector = ExceptionCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield
    finally:
        root.removeHandler(collector)
    unexpected = [
        r for r in collector.records if not (r.exc_info and isinstance(r.exc_info[1], expected))
    ]
    if unexpected:
        lines = []
        for record in unexpected:
            assert record.exc_info is not None
            exc = record.exc_info[1]
            lines.append(f"{record.name}: {record.getMessage()}: {type(exc).__name__}: {exc}")
        pytest.fail(
            "logged an exception the test did not expect (declare it with "
            "@pytest.mark.logs_exception(Type, reason=...) if the test provokes it):\n"
            + "\n".join(lines),
            pytrace=False,
        )
