"""A real PostgreSQL for the tests of the ledger and its readers, started by the suite.

One server serves the whole session, like the suite's Mosquitto; each test gets its own
agency id (the ``agency`` fixture), so its chain lives in a schema of its own and never
meets another test's. ``tests/conftest.py`` makes :func:`postgres_url` a fixture of
every test package; the server starts only when a test asks for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from actimesh.broker.mosquitto import free_port
from actimesh.lifeline import die_with_parent

PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: The account the server runs as when the suite runs as root (PostgreSQL refuses root).
SERVER_USER = "nobody"
SERVER_GROUP = "nogroup"


@dataclass(frozen=True)
class _RunAs:
    """Who the server's programs run as: ``nobody`` when the suite runs as root
    (PostgreSQL refuses root), else the suite's own user (all None)."""

    user: str | None = None
    group: str | None = None
    extra_groups: list[str] | None = None

    @classmethod
    def for_server(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        return cls(SERVER_USER, SERVER_GROUP, [])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL 15 server of this session, on a free loopback port.

    ``initdb`` makes a throw-away cluster (trust authentication, loopback only, no Unix
    socket, no fsync: nothing here must survive a crash), then ``postgres`` runs in the
    foreground as a child of the suite, ready once a connection succeeds. PostgreSQL
    refuses to run as root, and the suite often runs as root (containers, CI): then both
    programs are started as ``nobody`` with ``subprocess``'s own ``user``/``group``/
    ``extra_groups`` (a plain ``setresuid`` in the child, no ``runuser`` or ``sudo`` to
    install), in a folder made outside pytest's root-only temporary tree and handed to
    that user. The server also gets SIGINT (a fast shutdown) if the suite dies without
    cleaning up (:func:`actimesh.lifeline.die_with_parent`, set after the user change).
    """
    for program in ("initdb", "postgres"):
        if not (PG_BIN / program).is_file():
            pytest.fail(
                f"{PG_BIN / program} not found: install the postgresql-15 package "
                "(make installs it) to run the PostgreSQL ledger tests",
                pytrace=False,
            )
    run_as = _RunAs.for_server()
    root = Path(tempfile.mkdtemp(prefix="actimesh-pg-"))
    data = root / "data"
    data.mkdir()
    if run_as.user is not None:
        shutil.chown(root, run_as.user, run_as.group)
        shutil.chown(data, run_as.user, run_as.group)
    log = root / "server.log"
    try:
        subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "--pgdata",
                str(data),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=60,
            user=run_as.user,
            group=run_as.group,
            extra_groups=run_as.extra_groups,
        )
        port = free_port()
        with log.open("wb") as out:
            server = subprocess.Popen(
                [
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(signal.SIGINT),  # noqa: PLW1509 - see the docstring
                user=run_as.user,
                group=run_as.group,
                extra_groups=run_as.extra_groups,
            )
        try:
            url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            _wait_ready(server, url, log)
            yield url
        finally:
            server.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions at once
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 30.0
    while True:
        if server.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            pytest.fail(f"postgres exited at start: {' | '.join(tail)}", pytrace=False)
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)  # between attempts to connect, not in place of them
