"""The durable webhook outbox: registered endpoints and one delivery row per activation
and endpoint, in SQLite (``<data_dir>/webhooks.sqlite3``).

A delivery is written before anything is sent, and marked delivered only after the
receiver answered 2xx: a crash or restart anywhere in between sends it again (at least
once). Its id is derived from the endpoint and the activation, so every attempt, and
any re-enqueue of the same activation, carries the same id for the receiver to dedupe.

Taking due deliveries *leases* them: the attempt is counted and the next attempt time
pushed past the request timeout before the request starts, so a delivery that was in
flight when the process died is retried after its backoff, not in a tight loop.

The ``seen`` table remembers which activations were already fanned out to the endpoints,
so the reconciler (which compares the outbox with the ledger) does not rebuild them.
Endpoints get the activations decided at or after their registration.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actimesh.dispatch._sqlite import SqliteStore, SqliteThread
from actimesh.dispatch.models import DeliveryOut, DeliveryStatus, WebhookOut
from actimesh.errors import LedgerError

__all__ = ["Due", "Endpoint", "Outbox", "delivery_id"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    id           TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    secret       TEXT NOT NULL,
    description  TEXT NOT NULL,
    event_types  TEXT NOT NULL,
    created_ts   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id     TEXT PRIMARY KEY,
    endpoint_id     TEXT NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    aid             TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            BLOB NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    created_ts      REAL NOT NULL,
    next_attempt_ts REAL,
    last_attempt_ts REAL,
    delivered_ts    REAL,
    last_status     INTEGER,
    last_error      TEXT,
    UNIQUE (endpoint_id, aid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_ts);
CREATE INDEX IF NOT EXISTS deliveries_by_endpoint ON deliveries (endpoint_id, created_ts);
CREATE TABLE IF NOT EXISTS seen (
    aid  TEXT PRIMARY KEY,
    ts   REAL NOT NULL
);
"""

#: A constant list of column names: the only thing ever formatted into the SQL here.
_DELIVERY_COLUMNS = (
    "delivery_id, endpoint_id, aid, event_type, status, attempts, created_ts, "
    "next_attempt_ts, last_attempt_ts, delivered_ts, last_status, last_error"
)


def delivery_id(endpoint_id: str, aid: str) -> str:
    """The id of one activation's delivery to one endpoint: stable across retries."""
    return "dlv-" + hashlib.sha256(f"{endpoint_id}\x00{aid}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    url: str
    secret: str
    description: str
    event_types: tuple[str, ...]
    created_ts: float

    def wants(self, event_type: str, decided_ts: float) -> bool:
        if decided_ts < self.created_ts:
            return False
        return not self.event_types or event_type in self.event_types


@dataclass(frozen=True, slots=True)
class Due:
    """A leased delivery, ready to send."""

    delivery_id: str
    endpoint_id: str
    url: str
    secret: str
    aid: str
    body: bytes
    attempt: int


def _delivery(row: Sequence[Any]) -> DeliveryOut:
    return DeliveryOut(
        delivery_id=row[0],
        endpoint_id=row[1],
        aid=row[2],
        event_type=row[3],
        status=DeliveryStatus(row[4]),
        attempts=row[5],
        created_ts=row[6],
        next_attempt_ts=row[7],
        last_attempt_ts=row[8],
        delivered_ts=row[9],
        last_status=row[10],
        last_error=row[11],
    )


class Outbox(SqliteStore):
    """The webhook outbox. ``async with Outbox(path) as outbox``."""

    label = "webhook outbox"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = SqliteThread("outbox", self._connect)

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None)
            # The file holds the endpoints' signing secrets.
            os.chmod(self.path, 0o600)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(
                f"cannot open the webhook outbox at {self.path}: {exc}; check the --data-dir "
                "is writable and not used by another actimesh"
            ) from exc
        return conn

    # ------------------------------------------------------------------ endpoints
    def _endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5])
            for r in self._tx(
                "SELECT id, url, secret, description, event_types, created_ts FROM endpoints "
                "ORDER BY created_ts"
            )
        ]

    async def add_endpoint(
        self, *, url: str, description: str, event_types: Sequence[str], now: float
    ) -> Endpoint:
        """Register a receiver; its secret is generated here."""
        endpoint = Endpoint(
            id=f"wh-{secrets.token_hex(8)}",
            url=url,
            secret=f"whsec_{secrets.token_urlsafe(32)}",
            description=description,
            event_types=tuple(event_types),
            created_ts=now,
        )

        def add() -> None:
            self._tx(
                "INSERT INTO endpoints VALUES (?, ?, ?, ?, ?, ?)",
                (
                    endpoint.id,
                    endpoint.url,
                    endpoint.secret,
                    endpoint.description,
                    json.dumps(list(endpoint.event_types)),
                    endpoint.created_ts,
                ),
            )

        await self._thread.run(add)
        return endpoint

    def _counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for endpoint_id, status, n in self._tx(
            "SELECT endpoint_id, status, COUNT(*) FROM deliveries GROUP BY endpoint_id, status"
        ):
            out.setdefault(endpoint_id, {})[status] = n
        return out

    def _out(self, e: Endpoint, counts: dict[str, dict[str, int]]) -> WebhookOut:
        mine = counts.get(e.id, {})
        return WebhookOut(
            id=e.id,
            url=e.url,
            description=e.description,
            event_types=list(e.event_types),
            created_ts=e.created_ts,
            pending=mine.get(DeliveryStatus.PENDING, 0),
            delivered=mine.get(DeliveryStatus.DELIVERED, 0),
            failed=mine.get(DeliveryStatus.FAILED, 0),
        )

    async def endpoints(self) -> list[WebhookOut]:
        """Every endpoint with its delivery counts (never the secrets)."""

        def fetch() -> list[WebhookOut]:
            counts = self._counts()
            return [self._out(e, counts) for e in self._endpoints()]

        return await self._thread.run(fetch)

    async def endpoint(self, endpoint_id: str) -> WebhookOut | None:
        def fetch() -> WebhookOut | None:
            counts = self._counts()
            return next(
                (self._out(e, counts) for e in self._endpoints() if e.id == endpoint_id), None
            )

        return await self._thread.run(fetch)

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        """Remove an endpoint and its deliveries. False if there was none."""
        return await self._thread.run(
            lambda: self._tx("DELETE FROM endpoints WHERE id = ?", (endpoint_id,)).rowcount == 1
        )

    # ------------------------------------------------------------------ enqueue
    def _enqueue(
        self, aid: str, event_type: str, decided_ts: float, body: bytes, now: float
    ) -> int:
        db = self._db
        added = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            for e in self._endpoints():
                if not e.wants(event_type, decided_ts):
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO deliveries (delivery_id, endpoint_id, aid, event_type,"
                    " body, status, attempts, created_ts, next_attempt_ts)"
                    " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                    (delivery_id(e.id, aid), e.id, aid, event_type, body, now, now),
                )
                added += cur.rowcount
            db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (aid, now))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise LedgerError(f"webhook outbox: cannot enqueue {aid}: {exc}") from exc
        return added

    async def enqueue(
        self, *, aid: str, event_type: str, decided_ts: float, body: bytes, now: float
    ) -> int:
        """A delivery of ``body`` to every endpoint that wants it (once per endpoint and
        activation, however often this is called). Returns how many were new."""
        return await self._thread.run(lambda: self._enqueue(aid, event_type, decided_ts, body, now))

    async def unseen(self, aids: Sequence[str]) -> list[str]:
        """Those of ``aids`` that were never enqueued."""

        def fetch() -> list[str]:
            seen: set[str] = set()
            for i in range(0, len(aids), 500):
                chunk = aids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT aid FROM seen WHERE aid IN ({marks})"  # noqa: S608 - only ?s
                seen.update(r[0] for r in self._tx(sql, chunk))
            return [a for a in aids if a not in seen]

        return await self._thread.run(fetch)

    # ------------------------------------------------------------------ delivery
    def _lease(self, now: float, limit: int, lease_s: float) -> list[Due]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT d.delivery_id, d.endpoint_id, e.url, e.secret, d.aid, d.body, d.attempts"
                " FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id"
                " WHERE d.status = 'pending' AND d.next_attempt_ts <= ?"
                " ORDER BY d.next_attempt_ts LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt_ts = ?,"
                " next_attempt_ts = ? WHERE delivery_id = ?",
                [(now, now + lease_s, r[0]) for r in rows],
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise LedgerError(f"webhook outbox: cannot lease deliveries: {exc}") from exc
        return [Due(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6] + 1) for r in rows]

    async def lease(self, *, now: float, limit: int, lease_s: float) -> list[Due]:
        """Take up to ``limit`` due deliveries, counting the attempt before it starts."""
        return await self._thread.run(lambda: self._lease(now, limit, lease_s))

    async def delivered(self, delivery: str, *, status: int, now: float) -> None:
        await self._thread.run(
            lambda: self._tx(
                "UPDATE deliveries SET status = 'delivered', delivered_ts = ?, last_status = ?,"
                " last_error = NULL, next_attempt_ts = NULL WHERE delivery_id = ?",
                (now, status, delivery),
            )
        )

    async def attempt_failed(
        self, delivery: str, *, status: int | None, error: str, retry_at: float | None
    ) -> None:
        """Record a failed attempt; ``retry_at`` None gives up (status ``failed``)."""
        state = DeliveryStatus.PENDING if retry_at is not None else DeliveryStatus.FAILED
        await self._thread.run(
            lambda: self._tx(
                "UPDATE deliveries SET status = ?, last_status = ?, last_error = ?,"
                " next_attempt_ts = ? WHERE delivery_id = ? AND status = 'pending'",
                (state.value, status, error[:500], retry_at, delivery),
            )
        )

    async def next_due(self) -> float | None:
        """When the earliest pending delivery is due, if any."""

        def fetch() -> float | None:
            row = self._tx(
                "SELECT MIN(next_attempt_ts) FROM deliveries WHERE status = 'pending'"
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._thread.run(fetch)

    async def retry(self, delivery: str, *, now: float) -> bool:
        """Send a delivery again now (also a failed one). False if there is none."""
        return await self._thread.run(
            lambda: (
                self._tx(
                    "UPDATE deliveries SET status = 'pending', next_attempt_ts = ?"
                    " WHERE delivery_id = ? AND status != 'delivered'",
                    (now, delivery),
                ).rowcount
                == 1
            )
        )

    # ------------------------------------------------------------------ reading
    async def deliveries(
        self, endpoint_id: str, *, status: DeliveryStatus | None = None, limit: int = 100
    ) -> list[DeliveryOut]:
        """An endpoint's deliveries, newest first."""

        def fetch() -> list[DeliveryOut]:
            sql = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE endpoint_id = ?"  # noqa: S608
            args: list[Any] = [endpoint_id]
            if status is not None:
                sql += " AND status = ?"
                args.append(status.value)
            sql += " ORDER BY created_ts DESC, delivery_id LIMIT ?"
            return [_delivery(r) for r in self._tx(sql, [*args, limit])]

        return await self._thread.run(fetch)

    async def delivery(self, delivery: str) -> DeliveryOut | None:
        def fetch() -> DeliveryOut | None:
            row = self._tx(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = ?",  # noqa: S608
                (delivery,),
            ).fetchone()
            return None if row is None else _delivery(row)

        return await self._thread.run(fetch)

    async def counts(self) -> dict[str, int]:
        """Deliveries by status, over every endpoint."""

        def fetch() -> dict[str, int]:
            out = {s.value: 0 for s in DeliveryStatus}
            out.update(self._tx("SELECT status, COUNT(*) FROM deliveries GROUP BY status"))
            return out

        return await self._thread.run(fetch)

    async def prune(self, *, before: float, seen_before: float) -> int:
        """Delete finished deliveries created before ``before`` and old ``seen`` marks."""

        def prune() -> int:
            n = self._tx(
                "DELETE FROM deliveries WHERE status != 'pending' AND created_ts < ?", (before,)
            ).rowcount
            self._tx("DELETE FROM seen WHERE ts < ?", (seen_before,))
            return n

        return await self._thread.run(prune)
