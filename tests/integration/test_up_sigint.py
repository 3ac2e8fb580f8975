"""`actimesh up` stops on SIGINT however it was started.

A shell without job control (a script, or ``cmd &`` in a subshell) starts background
commands with SIGINT ignored, and Python keeps it ignored unless told otherwise: ``up``
started that way went on printing its status after ``kill -INT`` until something
SIGKILLed it (its broker not stopped gracefully, its web children left to the
lifeline). This starts it exactly that way (``trap '' INT``, then ``exec``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actimesh.broker.mosquitto import free_port
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(120)]

SRC = Path(__file__).parents[2] / "src"
#: How long `up` may take to stop after SIGINT (about 1 s on the 2-core machine).
STOP_LIMIT_S = 10.0
_IGNORING_SIGINT = "trap '' INT; exec \"$@\""


def _with_sigint_ignored(argv: list[str]) -> list[str]:
    """``argv`` run as a script's background job runs: with SIGINT ignored."""
    return ["sh", "-c", _IGNORING_SIGINT, "sh", *argv]


def test_the_wrapper_starts_a_command_with_sigint_ignored() -> None:
    # What the test below relies on: without it, it would pass without the fix.
    shown = subprocess.run(
        _with_sigint_ignored(
            [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"]
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert shown.stdout.strip() == str(signal.SIG_IGN)


async def test_up_started_with_sigint_ignored_stops_on_sigint(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    argv = [
        sys.executable,
        "-m",
        "actimesh",
        "up",
        "--data-dir",
        str(tmp_path / "data"),
        "--broker-port",
        str(free_port()),
        "--http-port",
        "0",
        "--evidence-port",
        "0",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, waited on below
            _with_sigint_ignored(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(SRC)},
            start_new_session=True,
        )
    try:

        def started() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            return "Ctrl-C stops everything" in log.read_text(errors="replace")

        await eventually(started, timeout=60, every=0.2)
        proc.send_signal(signal.SIGINT)  # `kill -INT`, to `up` alone (exec'd by sh)
        try:
            code = proc.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"actimesh up still ran {STOP_LIMIT_S:g} s after SIGINT:\n"
                + log.read_text(errors="replace")[-3000:]
            )
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = log.read_text(errors="replace")
    assert code == 130, text[-3000:]  # interrupted, as Ctrl-C
    assert "actimesh: stopped" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
