"""The dispatch's read-only queries on an agency's PostgreSQL ledger.

The queries are :class:`~actimesh.dispatch.queries.LedgerReader`'s (written once in
``ReadQueries``); this gives them a psycopg connection to the agency's schema ``am_<agency>``
(its ``search_path``). The connection is synchronous and lives on one worker thread, as
the SQLite reader's does: the event loop never waits on the network, and the queries stay
plain functions. It is read-only (``default_transaction_read_only``) and autocommit, each
statement bounded by ``statement_timeout``; one that lost its server is closed, and the
next query connects again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar

import psycopg
from psycopg import sql

from actimesh.dispatch.queries import ReadQueries
from actimesh.errors import LedgerError
from actimesh.ledger import shown_location
from actimesh.ledger.postgres import schema_name

__all__ = ["PostgresLedgerReader"]

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]


class PostgresLedgerReader(ReadQueries):
    """Read-only access to ``agency``'s ledger in the database at ``url``.
    ``async with PostgresLedgerReader(url, agency=...) as r``."""

    _errors = (psycopg.Error,)
    # Keyset pages compare aids as SQLite does, by their bytes, whatever the
    # database's locale.
    _aid_key = 'a.aid COLLATE "C"'

    def __init__(
        self,
        url: str,
        *,
        agency: str,
        connect_timeout_s: float = 10.0,
        statement_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.agency = agency
        self.schema = schema_name(agency)
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: Conn | None = None

    def __repr__(self) -> str:
        return f"PostgresLedgerReader(agency={self.agency!r})"  # never the URL's password

    @property
    def _shown(self) -> str:
        return f"{shown_location(self.url)} (agency {self.agency})"

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-read")
        try:
            await self._run(self._connected)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._executor is None:
            return
        try:
            # Shielded: a cancelled shutdown must still close the connection on its thread.
            await asyncio.shield(self._run(self._close))
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._executor is None:
            raise LedgerError("the ledger database is not open")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connected(self) -> Conn:
        """The connection, made (again) if there is none."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        statement_ms = int(self.statement_timeout_s * 1000)
        try:
            conn: Conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(2, round(self.connect_timeout_s)),
                options=(
                    f"-c statement_timeout={statement_ms} -c default_transaction_read_only=on"
                ),
                application_name=f"actimesh-dispatch/{self.agency}",
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        except psycopg.Error as exc:
            raise LedgerError(
                f"cannot connect to the ledger at {self._shown}: {_line(exc)}"
            ) from exc
        try:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            conn.execute("SELECT 1 FROM activations LIMIT 1").fetchall()
        except psycopg.errors.UndefinedTable:
            conn.close()
            raise LedgerError(
                f"no activation ledger at {self._shown}: start the engine first "
                "(actimesh up) or check the [ledger] url and the agency"
            ) from None
        except psycopg.Error as exc:
            conn.close()
            raise LedgerError(f"cannot read the ledger at {self._shown}: {_line(exc)}") from exc
        self._conn = conn
        return conn

    # ------------------------------------------------------------------ queries
    def _all(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._connected()
        try:
            return conn.execute(query.replace("?", "%s"), args).fetchall()
        except psycopg.OperationalError:
            self._close()  # the next query connects again
            raise

    async def ping(self) -> bool:
        """True when the ledger answers a query."""

        def ping() -> bool:
            try:
                self._all("SELECT 1 FROM activations LIMIT 1")
            except (psycopg.Error, LedgerError):
                return False
            return True

        return await self._run(ping)


def _line(exc: BaseException) -> str:
    """One line about ``exc`` (libpq's messages span several)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
