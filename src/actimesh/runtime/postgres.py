"""A managed PostgreSQL server for ``actimesh cluster up``: the shared ledger of the
engines on one machine.

The first start makes the server's cluster with ``initdb`` in ``{data_dir}/postgres``
(one superuser, ``actimesh``, with a random password kept in
``{data_dir}/secrets/postgres.password``, mode 0600, and SCRAM authentication: loopback
is shared by every local user) and a database ``actimesh``; later starts reuse both.
The server listens on loopback only, with no Unix socket, and runs in the foreground as
a child that gets SIGINT (a fast shutdown) if ``cluster up`` dies without stopping it.

PostgreSQL refuses to run as root. When ``cluster up`` runs as root, ``initdb`` and
``postgres`` run as ``nobody`` (``subprocess``'s own ``user``/``group``, no ``sudo`` to
install), which then owns ``{data_dir}/postgres``; ``nobody`` must be able to reach that
folder, so every folder above it must be searchable by others (``chmod o+x``), which is
checked first and reported in one line.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psycopg
from psycopg import sql

from actimesh.broker.mosquitto import free_port
from actimesh.errors import ConfigError, LedgerError
from actimesh.lifeline import die_with_parent
from actimesh.security.registry import SECRETS_DIR

__all__ = ["PG_USER", "ManagedPostgres", "find_pg_bin"]

#: The superuser ``initdb`` creates, and the database the ledger lives in.
PG_USER = "actimesh"
PG_DATABASE = "actimesh"
_RUN_AS_ROOT = ("nobody", "nogroup")
_PG_ROOT = Path("/usr/lib/postgresql")
_PASSWORD_FILE = "postgres.password"  # noqa: S105 - a file name, not a password
_POLL_S = 0.05


def find_pg_bin(root: Path | None = None) -> Path:
    """The ``bin`` folder of the newest PostgreSQL server installed (Debian's layout,
    under ``root``, default ``/usr/lib/postgresql``)."""
    root = root or _PG_ROOT
    found = sorted(
        (p.parent for p in root.glob("*/bin/initdb") if p.parent.parent.name.isdigit()),
        key=lambda b: int(b.parent.name),
    )
    if not found:
        raise ConfigError(
            f"no PostgreSQL server under {root}: run `make postgres-deps` "
            "(apt-get install postgresql-15) for `actimesh cluster up`"
        )
    return found[-1]


@dataclass(frozen=True, slots=True)
class _RunAs:
    user: str | None = None
    group: str | None = None

    @classmethod
    def here(cls) -> _RunAs:
        return cls(*_RUN_AS_ROOT) if os.geteuid() == 0 else cls()

    @property
    def extra_groups(self) -> list[str] | None:
        return None if self.user is None else []


def _check_reachable(folder: Path) -> None:
    """Every folder above ``folder`` is searchable by others (``nobody`` must get in)."""
    for parent in folder.absolute().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise ConfigError(
                f"PostgreSQL runs as nobody (root may not run it) and cannot reach {folder}: "
                f"`chmod o+x {parent}`, or use a --data-dir others may traverse"
            )


class ManagedPostgres:
    """``postgres`` on ``host``:``port`` (a free one by default) over ``data_dir/postgres``.

    ``async with`` starts it (making the cluster the first time) and stops it; ``url``
    carries the password (for the ledger's connections), ``shown_url`` does not.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        bin_dir: Path | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "postgres"
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.bin_dir = bin_dir
        self.start_timeout_s = start_timeout_s
        self.log_path = data_dir / "postgres.log"
        self._run_as = _RunAs.here()
        self._password: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"<ManagedPostgres {self.shown_url}>"

    @property
    def shown_url(self) -> str:
        """The URL without its password: what banners and logs show."""
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{PG_DATABASE}"

    @property
    def url(self) -> str:
        """The URL with the password, for the ledger (never printed)."""
        if self._password is None:
            raise LedgerError("the managed PostgreSQL has not started")
        return f"postgresql://{PG_USER}:{self._password}@{self.host}:{self.port}/{PG_DATABASE}"

    @property
    def password_file(self) -> Path:
        return self.data_dir / SECRETS_DIR / _PASSWORD_FILE

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # ------------------------------------------------------------------ set-up
    def _read_password(self) -> str:
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(
                f"{self.pgdata} exists but {self.password_file} does not: restore it, or "
                f"remove {self.pgdata} to start the ledger afresh"
            ) from None

    def _initdb(self, bin_dir: Path) -> str:
        password = secrets.token_urlsafe(24)
        self.password_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(password + "\n")
        self.pgdata.mkdir(mode=0o700)
        pwfile = self.data_dir / ".postgres-initdb-pw"
        try:
            pwfile.write_text(password + "\n", encoding="utf-8")
            pwfile.chmod(0o600)
            if self._run_as.user is not None:
                shutil.chown(self.pgdata, self._run_as.user, self._run_as.group)
                shutil.chown(pwfile, self._run_as.user, self._run_as.group)
            done = subprocess.run(  # noqa: S603 - fixed argv
                [
                    str(bin_dir / "initdb"),
                    "--pgdata",
                    str(self.pgdata.absolute()),
                    f"--username={PG_USER}",
                    f"--pwfile={pwfile.absolute()}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                capture_output=True,
                timeout=120,
                check=False,
                user=self._run_as.user,
                group=self._run_as.group,
                extra_groups=self._run_as.extra_groups,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise ConfigError(f"initdb of {self.pgdata} failed: {' '.join(tail) or 'no output'}")
        return password

    def _launch(self, bin_dir: Path) -> None:
        self._log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(self.pgdata.absolute()),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={self.host}",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "max_connections=200",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches `cluster up`, which
                # stops the server last, once the engines' final writes are in.
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGINT),  # noqa: PLW1509 - prctl only
                user=self._run_as.user,
                group=self._run_as.group,
                extra_groups=self._run_as.extra_groups,
            )
        except OSError as exc:
            self._close_log()
            raise ConfigError(f"cannot run {bin_dir / 'postgres'}: {exc.strerror}") from exc

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        admin = f"postgresql://{PG_USER}:{self._password}@{self.host}:{self.port}/postgres"
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                lines = self.log_path.read_text(errors="replace").strip().splitlines()
                raise ConfigError(
                    f"postgres exited with code {code} ({(lines or ['no output'])[-1]}): "
                    f"see {self.log_path}"
                )
            try:
                with psycopg.connect(admin, connect_timeout=2, autocommit=True) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
                    ).fetchone()
                    if exists is None:
                        conn.execute(
                            sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE))
                        )
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"PostgreSQL on {self.host}:{self.port} not ready within "
                        f"{self.start_timeout_s:g} s ({exc}): see {self.log_path}"
                    ) from None
            time.sleep(_POLL_S)  # between attempts to connect, not in place of them

    def start(self) -> None:
        """Make the cluster if needed, start the server, wait until it answers."""
        bin_dir = self.bin_dir or find_pg_bin()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as.user is not None:
            _check_reachable(self.pgdata)
        if (self.pgdata / "PG_VERSION").is_file():
            self._password = self._read_password()
        else:
            self._password = self._initdb(bin_dir)
        self._launch(bin_dir)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT (fast shutdown: sessions end at once), SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> Self:
        try:
            await asyncio.to_thread(self.start)
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
