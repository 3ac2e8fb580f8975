"""The suite's own guards (tests/guards.py) fail what they promise to fail.

Each case runs a small test file in a separate pytest process that loads the guards the
way tests/conftest.py does, and reads its outcome.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_CONFTEST = """
from tests.guards import (  # noqa: F401
    logged_exceptions_fail_the_test,
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)
"""


def _run(tmp_path: Path, body: str) -> tuple[int, str]:
    (tmp_path / "conftest.py").write_text(_CONFTEST)
    (tmp_path / "test_case.py").write_text(textwrap.dedent(body))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:cov",
            "-o",
            "asyncio_mode=auto",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_a_hung_async_test_fails_with_every_task_stack(tmp_path: Path) -> None:
    code, out = _run(
        tmp_path,
        """
        import asyncio
        import pytest

        async def stuck() -> None:
            while True:  # swallows every cancellation, as a lost-cancel bug does
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    pass

        @pytest.mark.time_limit(1)
        async def test_hangs() -> None:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(stuck(), name="engine-commands")
        """,
    )
    assert code == 1, out
    assert "call of test_case.py::test_hangs took more than 1 s" in out
    assert "--- task engine-commands (pending)" in out
    assert "in stuck" in out


def test_a_hung_sync_test_fails(tmp_path: Path) -> None:
    code, out = _run(
        tmp_path,
        """
        import threading
        import pytest

        @pytest.mark.time_limit(1)
        def test_waits_forever() -> None:
            threading.Event().wait()
        """,
    )
    assert code == 1, out
    assert "took more than 1 s" in out
    assert "--- thread MainThread" in out


def test_a_logged_exception_fails_the_test_unless_declared(tmp_path: Path) -> None:
    code, out = _run(
        tmp_path,
        """
        import logging
        import pytest

        def handler() -> None:
            try:
                raise KeyError("bwc-9")
            except KeyError:
                logging.getLogger("actimesh.x").exception("ack handler failed")

        def test_undeclared() -> None:
            handler()

        @pytest.mark.logs_exception(KeyError, reason="provoked")
        def test_declared() -> None:
            handler()

        @pytest.mark.logs_exception(ValueError, reason="another")
        def test_declared_another_type() -> None:
            handler()

        def test_warning_with_traceback_is_not_a_failure() -> None:
            logging.getLogger("actimesh.x").warning("retrying", exc_info=ValueError("x"))
        """,
    )
    assert code == 1, out
    # Failed at teardown: the call passed, the guard's fixture did not.
    assert "4 passed, 2 errors" in out, out
    assert "test_undeclared" in out
    assert "test_declared_another_type" in out
    assert "actimesh.x: ack handler failed: KeyError: 'bwc-9'" in out


@pytest.mark.parametrize("marker", ["time_limit(5)", "logs_exception(OSError, reason='x')"])
def test_markers_are_registered(tmp_path: Path, marker: str) -> None:
    code, out = _run(
        tmp_path,
        f"""
        import pytest

        @pytest.mark.{marker}
        def test_ok() -> None:
            pass
        """,
    )
    assert code == 0, out
