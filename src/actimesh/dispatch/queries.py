"""Read-only queries on the activation ledger, for the API and the webhook outbox.

The engine owns the ledger and writes it; the dispatch opens it **read-only** with a
connection of its own on its own thread: a SQLite file (WAL mode lets readers run beside
the writer) with :class:`LedgerReader`, or the agency's schema of a PostgreSQL database
with :class:`~actimesh.dispatch.pg_queries.PostgresLedgerReader`. :func:`open_reader`
picks one from the ledger's location. The queries are written once (:class:`ReadQueries`), in
SQL both speak; only the parameter marks and the order of text differ. Columns are
always named, never ``*``: the engine may add columns and tables.

Area filters take a bounding box (``min_lon,min_lat,max_lon,max_lat``, GeoJSON order; a
box with ``min_lon > max_lon`` crosses the 180th meridian) or a point and a radius, which
is prefiltered by a box in SQL and then measured exactly (WGS-84).
"""

from __future__ import annotations

import abc
import json
import math
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar

from actimesh.broker.messages import (
    CAMERA_KINDS,
    Ack,
    AckStatus,
    Activation,
    ActivationReason,
    CameraActivation,
    DeviceKind,
)
from actimesh.dispatch._sqlite import SqliteStore, SqliteThread
from actimesh.dispatch.models import (
    AckOut,
    ActivationDetail,
    ActivationSummary,
    AtEventFrom,
    CameraOutcome,
    DispatcherAck,
    NoteOut,
    Outcome,
    Workflow,
)
from actimesh.errors import LedgerError
from actimesh.geofence import distance_m
from actimesh.ledger import ActivationRow, DecisionRow, EventType, is_database_url
from actimesh.triggers import left_out_of

__all__ = ["ActivationQuery", "BBox", "LedgerQueries", "LedgerReader", "Near", "open_reader"]

T = TypeVar("T")

_ACK_OUTCOME = {
    "recording": Outcome.RECORDING,
    "refused": Outcome.REFUSED,
    "cancelled": Outcome.CANCELLED,
}
_M_PER_DEG_LAT = 110_574.0  # the shortest degree of latitude (at the equator)

#: The ledger's activation columns a summary carries (all but the rule), then its counts:
#: the API model declares the same fields in this order (a test keeps them in step).
SUMMARY_FIELDS = (
    *(f.name for f in fields(ActivationRow) if f.name != "rule"),
    "commanded",
    "recording",
    "refused",
)
_SUMMARY = f"""
SELECT {", ".join(f"a.{name}" for name in SUMMARY_FIELDS[:-3])},
       (SELECT COUNT(*) FROM decisions d WHERE d.aid = a.aid AND d.commanded = TRUE),
       (SELECT COUNT(DISTINCT k.device_id) FROM acks k
         WHERE k.aid = a.aid AND k.status = 'recording'
           AND NOT EXISTS (SELECT 1 FROM acks c WHERE c.aid = k.aid
                           AND c.device_id = k.device_id AND c.status = 'cancelled')),
       (SELECT COUNT(DISTINCT k.device_id) FROM acks k
         WHERE k.aid = a.aid AND k.status = 'refused'
           AND NOT EXISTS (SELECT 1 FROM acks r WHERE r.aid = k.aid
                           AND r.device_id = k.device_id AND r.status = 'recording'))
FROM activations a
"""  # noqa: S608 - the column names come from the row type, never from input


@dataclass(frozen=True, slots=True)
class BBox:
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    @classmethod
    def parse(cls, text: str) -> BBox:
        """``min_lon,min_lat,max_lon,max_lat``; raise ValueError saying what is wrong."""
        parts = text.split(",")
        if len(parts) != 4:
            raise ValueError("bbox must be four numbers: min_lon,min_lat,max_lon,max_lat")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError("bbox must be four numbers: min_lon,min_lat,max_lon,max_lat") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError("bbox values must be finite numbers")
        box = cls(*values)
        if not (-180 <= box.min_lon <= 180 and -180 <= box.max_lon <= 180):
            raise ValueError("bbox longitudes must be between -180 and 180")
        if not (-90 <= box.min_lat <= box.max_lat <= 90):
            raise ValueError("bbox latitudes must be between -90 and 90, min before max")
        return box


@dataclass(frozen=True, slots=True)
class Near:
    lat: float
    lon: float
    radius_m: float

    def contains(self, lat: float | None, lon: float | None) -> bool:
        if lat is None or lon is None:
            return False
        return distance_m(self.lat, self.lon, lat, lon) <= self.radius_m

    def bbox(self) -> BBox:
        dlat = self.radius_m / _M_PER_DEG_LAT
        cos_lat = math.cos(math.radians(min(89.9, abs(self.lat) + dlat)))
        dlon = min(180.0, self.radius_m / (_M_PER_DEG_LAT * max(cos_lat, 1e-6)))
        min_lat, max_lat = max(-90.0, self.lat - dlat), min(90.0, self.lat + dlat)
        if dlon >= 180.0 or max_lat >= 90.0 or min_lat <= -90.0:
            return BBox(-180.0, min_lat, 180.0, max_lat)
        lo, hi = self.lon - dlon, self.lon + dlon
        # Wrap across the 180th meridian: the box then has min_lon > max_lon.
        lo = lo + 360.0 if lo < -180.0 else lo
        hi = hi - 360.0 if hi > 180.0 else hi
        return BBox(lo, min_lat, hi, max_lat)


@dataclass(frozen=True, slots=True)
class ActivationQuery:
    """Filters of ``GET /api/v1/activations``; every one optional."""

    since: float | None = None
    until: float | None = None
    types: tuple[str, ...] = ()
    device: str | None = None
    initiated_by: str | None = None
    bbox: BBox | None = None
    near: Near | None = None
    limit: int = 100
    #: Keyset cursor: (event_ts, aid) of the last item of the previous page.
    after: tuple[float, str] | None = None


def _summary(row: Sequence[Any]) -> ActivationSummary:
    return ActivationSummary(**dict(zip(SUMMARY_FIELDS, row, strict=True)))


def _bbox_sql(box: BBox, where: list[str], args: list[Any]) -> None:
    where.append("a.lat BETWEEN ? AND ?")
    args += [box.min_lat, box.max_lat]
    if box.min_lon <= box.max_lon:
        where.append("a.lon BETWEEN ? AND ?")
        args += [box.min_lon, box.max_lon]
    else:  # crosses the 180th meridian
        where.append("(a.lon >= ? OR a.lon <= ?)")
        args += [box.min_lon, box.max_lon]


def _where(q: ActivationQuery, aid_key: str) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if q.since is not None:
        where.append("a.event_ts >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append("a.event_ts < ?")
        args.append(q.until)
    if q.types:
        where.append(f"a.type IN ({','.join('?' * len(q.types))})")
        args += list(q.types)
    if q.device is not None:
        where.append(
            "(a.src = ? OR a.aid IN (SELECT d.aid FROM decisions d "
            "WHERE d.device_id = ? AND d.commanded = TRUE))"
        )
        args += [q.device, q.device]
    if q.initiated_by is not None:
        where.append("a.initiated_by = ?")
        args.append(q.initiated_by)
    for box in (q.bbox, q.near.bbox() if q.near is not None else None):
        if box is not None:
            _bbox_sql(box, where, args)
    if q.after is not None:
        where.append(f"(a.event_ts < ? OR (a.event_ts = ? AND {aid_key} > ?))")
        args += [q.after[0], q.after[0], q.after[1]]
    return where, args


class LedgerQueries(Protocol):
    """What the API and the webhook outbox ask of the ledger, whatever the store.
    ``async with`` opens and closes the reader."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def ping(self) -> bool:
        """True when the ledger answers a query."""
        ...

    async def search(self, query: ActivationQuery) -> list[ActivationSummary]:
        """Activations matching ``query``, newest first."""
        ...

    async def detail(
        self, aid: str, *, now: float, ack_timeout_s: float
    ) -> ActivationDetail | None:
        """One activation with per-camera outcomes, or None if the ledger has no such id."""
        ...

    async def record(self, aid: str) -> Activation | None:
        """The activation record the engine published for ``aid``, rebuilt from the ledger."""
        ...

    async def recent(
        self, since: float, limit: int
    ) -> list[tuple[Activation, list[tuple[str, Ack]]]]:
        """Activations since ``since`` (oldest first, at most ``limit`` newest) with their
        acknowledgements: what a restarted dispatch puts back on the map."""
        ...

    async def aids_since(self, since: float) -> list[str]:
        """Ids of activations with event time at or after ``since``, oldest first."""
        ...

    async def workflow(self, aid: str) -> Workflow:
        """Dispatchers' acknowledgements and notes on ``aid``, oldest first."""
        ...


def open_reader(location: Path | str, *, agency: str) -> LedgerQueries:
    """The reader of the ledger at ``location``, not open yet: a ``postgresql://`` URL is
    ``agency``'s schema in that database; anything else a SQLite file."""
    if is_database_url(location):
        # Imported here: psycopg loads libpq, which a one-machine deployment never needs.
        from actimesh.dispatch.pg_queries import PostgresLedgerReader  # noqa: PLC0415

        return PostgresLedgerReader(location, agency=agency)
    return LedgerReader(Path(location))


class ReadQueries(abc.ABC):
    """The queries, once for every store. A store gives :meth:`_all` (a query with ``?``
    marks, on its connection's thread), :meth:`_run` (a function on that thread),
    ``_errors`` (its driver's errors) and ``_aid_key`` (``a.aid`` in the byte order
    SQLite sorts text in, which the keyset cursor relies on)."""

    _errors: ClassVar[tuple[type[Exception], ...]]
    _aid_key: ClassVar[str] = "a.aid"

    @abc.abstractmethod
    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of ``sql``, on the connection's thread."""

    @abc.abstractmethod
    def _run(self, fn: Callable[[], T]) -> Awaitable[T]:
        """Run ``fn`` on the connection's thread."""

    def _first(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    # ------------------------------------------------------------------ search
    def _search(self, q: ActivationQuery) -> list[ActivationSummary]:
        where, args = _where(q, self._aid_key)
        sql = _SUMMARY + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY a.event_ts DESC, {self._aid_key} ASC LIMIT ?"
        out: list[ActivationSummary] = []
        page = max(q.limit, 200)
        offset = 0
        while len(out) < q.limit:
            rows = self._all(sql + " OFFSET ?", [*args, page, offset])
            for row in rows:
                item = _summary(row)
                if q.near is not None and not q.near.contains(item.lat, item.lon):
                    continue
                out.append(item)
                if len(out) == q.limit:
                    break
            if len(rows) < page:
                break
            offset += page
        return out

    async def search(self, query: ActivationQuery) -> list[ActivationSummary]:
        """Activations matching ``query``, newest first."""
        try:
            return await self._run(lambda: self._search(query))
        except self._errors as exc:
            raise LedgerError(f"ledger query failed: {exc}") from exc

    # ------------------------------------------------------------------ one
    def _detail(self, aid: str, now: float, ack_timeout_s: float) -> ActivationDetail | None:
        row = self._first(_SUMMARY + " WHERE a.aid = ?", (aid,))
        if row is None:
            return None
        summary = _summary(row)
        (rule_text,) = self._all("SELECT rule FROM activations WHERE aid = ?", (aid,))[0]
        acks = [
            AckOut(
                device_id=r[0],
                status=r[1],
                pre_cov_s=r[2],
                recording=r[3],
                device_ts=r[4],
                received_ts=r[5],
                detail=r[6],
            )
            for r in self._all(
                "SELECT device_id, status, pre_cov_s, recording, device_ts, received_ts, detail "
                "FROM acks WHERE aid = ? ORDER BY received_ts",
                (aid,),
            )
        ]
        by_device: dict[str, list[AckOut]] = {}
        for ack in acks:
            by_device.setdefault(ack.device_id, []).append(ack)
        cameras = []
        for r in self._all(
            "SELECT device_id, device_kind, commanded, reason, distance_m, margin_m, fix_age_s,"
            " acc_m, lat, lon FROM decisions WHERE aid = ? ORDER BY commanded DESC, device_id",
            (aid,),
        ):
            commanded = bool(r[2])
            mine = by_device.get(r[0], [])
            # A cancel is the camera's last word on an activation: it outranks recording.
            chosen = next((a for a in mine if a.status == "cancelled"), None)
            chosen = chosen or next((a for a in mine if a.status == "recording"), None)
            chosen = chosen or next((a for a in mine if a.status == "refused"), None)
            chosen = chosen or (mine[0] if mine else None)
            if not commanded:
                outcome = Outcome.NOT_COMMANDED
            elif chosen is not None:
                outcome = _ACK_OUTCOME.get(chosen.status, Outcome.ACKNOWLEDGED)
            elif now - summary.decided_ts > ack_timeout_s:
                outcome = Outcome.NO_ACK
            else:
                outcome = Outcome.PENDING
            cameras.append(
                CameraOutcome(
                    device_id=r[0],
                    device_kind=r[1],
                    commanded=commanded,
                    reason=r[3],
                    distance_m=r[4],
                    margin_m=r[5],
                    fix_age_s=r[6],
                    acc_m=r[7],
                    at_event=None if r[8] is None or r[9] is None else (r[8], r[9]),
                    at_event_from=None if r[8] is None or r[9] is None else AtEventFrom.LEDGER,
                    outcome=outcome,
                    pre_roll_covered_s=chosen.pre_cov_s if chosen else None,
                    recording_id=chosen.recording if chosen else None,
                    ack_latency_s=(
                        max(0.0, mine[0].received_ts - summary.decided_ts) if mine else None
                    ),
                    detail=chosen.detail if chosen else None,
                )
            )
        return ActivationDetail(
            **summary.model_dump(), rule=json.loads(rule_text), cameras=cameras, acks=acks
        )

    async def detail(
        self, aid: str, *, now: float, ack_timeout_s: float
    ) -> ActivationDetail | None:
        """One activation with per-camera outcomes, or None if the ledger has no such id."""
        try:
            return await self._run(lambda: self._detail(aid, now, ack_timeout_s))
        except self._errors as exc:
            raise LedgerError(f"ledger query failed: {exc}") from exc

    # ------------------------------------------------------------------ records
    def _record(self, aid: str) -> Activation | None:
        row = self._first(
            "SELECT aid, eid, src, type, event_ts, decided_ts, lat, lon, radius_m, pre_roll_s,"
            " initiated_by FROM activations WHERE aid = ?",
            (aid,),
        )
        if row is None:
            return None
        cameras: list[CameraActivation] = []
        excluded: list[DecisionRow] = []
        for device_id, kind, commanded, reason, dist, margin, age, acc, lat, lon in self._all(
            "SELECT device_id, device_kind, commanded, reason, distance_m, margin_m, "
            "fix_age_s, acc_m, lat, lon FROM decisions WHERE aid = ? ORDER BY device_id",
            (aid,),
        ):
            if not commanded:
                excluded.append(
                    DecisionRow(
                        device_id, kind, False, str(reason), dist, margin, age, acc, lat, lon
                    )
                )
                continue
            if kind is None or DeviceKind(kind) not in CAMERA_KINDS:
                continue  # the engine's record lists cameras of a known kind only
            paired = str(reason).startswith("paired")
            cameras.append(
                CameraActivation(
                    id=device_id,
                    device_kind=DeviceKind(kind),
                    reason=ActivationReason.PAIRED if paired else ActivationReason.PROXIMITY,
                    dist=None if paired else dist,
                    lat=lat,
                    lon=lon,
                )
            )
        return Activation(
            aid=row[0],
            eid=row[1],
            src=row[2],
            type=row[3],
            ets=row[4],
            ts=row[5],
            lat=row[6],
            lon=row[7],
            radius=row[8],
            pre=row[9],
            by=row[10],
            cameras=tuple(cameras),
            excluded=len(excluded),
            left_out=left_out_of(excluded),
        )

    async def record(self, aid: str) -> Activation | None:
        """The activation record the engine published for ``aid``, rebuilt from the ledger."""
        return await self._run(lambda: self._record(aid))

    def _recent(self, since: float, limit: int) -> list[tuple[Activation, list[tuple[str, Ack]]]]:
        aids = [
            r[0]
            for r in self._all(
                "SELECT aid FROM activations WHERE event_ts >= ? ORDER BY event_ts DESC LIMIT ?",
                (since, limit),
            )
        ]
        out = []
        for aid in reversed(aids):
            record = self._record(aid)
            if record is None:  # pragma: no cover - rows are never deleted
                continue
            acks = [
                (
                    r[0],
                    Ack(
                        aid=aid,
                        status=AckStatus(r[1]),
                        pre_cov=r[2],
                        rec=r[3],
                        ts=r[4],
                        detail=r[5],
                    ),
                )
                for r in self._all(
                    "SELECT device_id, status, pre_cov_s, recording, device_ts, detail "
                    "FROM acks WHERE aid = ? ORDER BY received_ts",
                    (aid,),
                )
            ]
            out.append((record, acks))
        return out

    async def recent(
        self, since: float, limit: int
    ) -> list[tuple[Activation, list[tuple[str, Ack]]]]:
        """Activations since ``since`` (oldest first, at most ``limit`` newest) with their
        acknowledgements: what a restarted dispatch puts back on the map."""
        return await self._run(lambda: self._recent(since, limit))

    async def aids_since(self, since: float) -> list[str]:
        """Ids of activations with event time at or after ``since``, oldest first."""

        def fetch() -> list[str]:
            return [
                str(r[0])
                for r in self._all(
                    "SELECT aid FROM activations WHERE event_ts >= ? ORDER BY event_ts", (since,)
                )
            ]

        return await self._run(fetch)

    # ------------------------------------------------------------------ dispatchers
    def _workflow(self, aid: str) -> Workflow:
        acks: list[DispatcherAck] = []
        notes: list[NoteOut] = []
        for seq, event_type, body_text in self._all(
            "SELECT seq, event_type, body FROM records WHERE aid = ? AND event_type IN (?, ?)"
            " ORDER BY seq",
            (aid, EventType.DISPATCH_ACK.value, EventType.INCIDENT_NOTE.value),
        ):
            if body_text is None:  # redacted by retention
                continue
            body = json.loads(body_text)
            if event_type == EventType.DISPATCH_ACK:
                acks.append(
                    DispatcherAck(
                        aid=aid,
                        alert_id=body.get("alert_id"),
                        by=body["by"],
                        ts=body["ts"],
                        seq=seq,
                    )
                )
            else:
                notes.append(
                    NoteOut(aid=aid, by=body["by"], ts=body["ts"], text=body["text"], seq=seq)
                )
        return Workflow(aid=aid, acks=acks, notes=notes)

    async def workflow(self, aid: str) -> Workflow:
        """Dispatchers' acknowledgements and notes on ``aid``, oldest first."""
        try:
            return await self._run(lambda: self._workflow(aid))
        except self._errors as exc:
            raise LedgerError(f"ledger query failed: {exc}") from exc


class LedgerReader(SqliteStore, ReadQueries):
    """Read-only access to the engine's ledger. ``async with LedgerReader(path) as r``."""

    label = "ledger"
    _errors = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = SqliteThread("ledger-read", self._connect)

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise LedgerError(
                f"no activation ledger at {self.path}: start the engine first "
                "(actimesh up) or pass the --data-dir it uses"
            )
        try:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
            conn.execute("PRAGMA query_only = ON")
            conn.execute("PRAGMA busy_timeout = 2000")
            conn.execute("SELECT 1 FROM activations LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the ledger at {self.path}: {exc}") from exc
        return conn

    async def ping(self) -> bool:
        """True when the ledger answers a query."""

        def ping() -> bool:
            try:
                self._db.execute("SELECT 1 FROM activations LIMIT 1").fetchall()
            except sqlite3.Error:
                return False
            return True

        return await self._thread.run(ping)

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, args).fetchall()

    def _run(self, fn: Callable[[], T]) -> Awaitable[T]:
        return self._thread.run(fn)
