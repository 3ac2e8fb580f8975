"""One SQLite connection on one worker thread, for the dispatch's two databases.

SQLite connections are not shared across threads, and the event loop must never wait on
disk; so each database gets a single-thread executor that owns its connection, and the
async side hands it plain functions. The same shape as the ledger's (ledger/sqlite/store.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Self, TypeVar

from actimesh.errors import LedgerError

__all__ = ["SqliteStore", "SqliteThread"]

T = TypeVar("T")


class SqliteThread:
    """Runs functions of a connection on the connection's own thread."""

    def __init__(self, name: str, connect: Callable[[], sqlite3.Connection]) -> None:
        self.name = name
        self._connect = connect
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        try:
            await self.run(self._open)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _open(self) -> None:
        self._conn = self._connect()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            # Shielded: a cancelled shutdown must still close the file on its thread.
            await asyncio.shield(self.run(self._close))
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise LedgerError(f"the {self.name} database is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection: only for functions running on this thread."""
        if self._conn is None:
            raise LedgerError(f"the {self.name} database is not open")
        return self._conn


class SqliteStore:
    """A dispatch database whose connection lives on its own :class:`SqliteThread`:
    ``async with`` opens and closes it. Subclasses set ``_thread`` and ``label``."""

    #: Names the database in errors (``"webhook outbox"``).
    label: ClassVar[str]
    _thread: SqliteThread

    async def __aenter__(self) -> Self:
        await self._thread.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._thread.close()

    @property
    def _db(self) -> sqlite3.Connection:
        return self._thread.db

    def _tx(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One statement, its SQLite error turned into a :class:`LedgerError`."""
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.label}: {exc}") from exc
