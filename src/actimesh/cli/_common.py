"""What every command shares: one-line usage errors, argument types, exit codes, and
the runner that lets SIGTERM stop a command the way Ctrl-C does."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Parser",
    "http_port",
    "port",
    "positive_int",
    "registry_location",
    "run_async",
]

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """Usage errors as one line that points at ``--help``, with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"actimesh: {message} (see `{self.prog} --help`)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def http_port(text: str) -> int:
    return 0 if text.strip() == "0" else port(text)


def registry_location(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--data-dir`` of the commands that change the device registry."""
    parser.add_argument("--config", type=Path, help="TOML settings file (data_dir, [broker] ports)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="data directory holding registry.sqlite3 (default ./actimesh-data)",
    )


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; SIGINT (Ctrl-C) cancels it, however the command was started, and
    SIGTERM cancels it the same way."""
    _heed_sigint()

    async def wrapper() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    return asyncio.run(wrapper())


def _heed_sigint() -> None:
    """Take SIGINT back if it was inherited ignored.

    A shell without job control (a script, or ``cmd &`` in a subshell) starts
    background commands with SIGINT ignored, and Python then leaves it ignored: asyncio
    installs its Ctrl-C handler only over the default one. ``actimesh up`` started that
    way went on running after ``kill -INT`` (or a test's Ctrl-C to its process group)
    until SIGKILL, which stops neither its broker gracefully nor its web children. The
    commands that run until stopped promise that Ctrl-C stops them, so they heed it.
    """
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)
