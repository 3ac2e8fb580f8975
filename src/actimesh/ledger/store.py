"""The ledger store's interface: what the engine, audit, evidence and dispatch rely on.

One machine keeps the ledger in a SQLite file (:class:`~actimesh.ledger.sqlite.SqliteLedger`);
a cluster keeps it in PostgreSQL (:class:`~actimesh.ledger.postgres.PostgresLedger`), which
several engines on several hosts append to.
Whatever the store, these hold:

- **Rows are only inserted.** A decision, once written, is never updated, so the ledger
  reads as the history of what happened.
- **Every write is one record of the hash chain**, appended in the same transaction as
  the rows it describes: an activation with all of its decisions is one record, an
  acknowledgement another, and alerts, case links and retention deletions are records
  too. Concurrent writers never fork the chain.
- **Redelivery changes nothing.** Writing an activation or acknowledgement that is
  already there writes no row and no record.
- A camera's ``cancelled`` acknowledgement is an acknowledgement record and, in the same
  transaction, a ``false_activation`` record naming the camera, the activation, who
  cancelled, when, and how long after the event.

A store is an async context manager: open on entry, closed on exit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeGuard
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from actimesh.errors import LedgerError
from actimesh.ledger.rows import (
    AckRow,
    AckWrite,
    ActivationRow,
    DecisionRow,
    FalseActivation,
    Head,
    Redaction,
)
from actimesh.ledger.sqlite import SqliteLedger

__all__ = ["Ledger", "is_database_url", "open_ledger", "shown_location"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: Connection parameters that hold a secret, left out wherever a URL is shown.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


class Ledger(Protocol):
    """An open activation ledger."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    # ------------------------------------------------------------------ writes
    async def record_activation(self, row: ActivationRow, decisions: Sequence[DecisionRow]) -> bool:
        """Write an activation, its decisions and its record atomically.

        False if it was already there (a redelivered trigger): nothing is written then.
        """
        ...

    async def record_ack(self, ack: AckRow) -> None:
        """Append a camera's acknowledgement (once: a redelivered one is ignored)."""
        ...

    async def record_acks(
        self, acks: Sequence[AckRow], *, only_commanded: bool = False
    ) -> AckWrite:
        """Append acknowledgements in one transaction: all of them, or none (a group
        commit). Redelivered ones are ignored. With ``only_commanded``, so is an answer
        from a camera its activation did not command: counted in the result, never
        written."""
        ...

    async def record_cancel(
        self, ack: AckRow, by: str, *, only_commanded: bool = False
    ) -> int | None:
        """Record a camera's ``cancelled`` acknowledgement as a false activation.

        The acknowledgement and a ``false_activation`` record (camera, activation, who
        cancelled, when, seconds after the event, the recording kept) are written in one
        transaction. The record's ``seq``, or None for a redelivered acknowledgement. With
        ``only_commanded``, a cancel from a camera the activation did not command raises
        :class:`~actimesh.errors.NotCommandedError` and writes nothing.
        """
        ...

    async def record_event(
        self,
        component: str,
        event_type: str,
        subject: str,
        outcome: str,
        body: Mapping[str, Any],
        *,
        at: float | None = None,
    ) -> int:
        """Append an audit event (an alert, say) to the chain; its ``seq``.

        ``component`` is the system component (``engine/engine-1``), ``subject`` the
        device, activation or person it is about, ``outcome`` a short code. A body with
        an ``aid`` ties the record to that activation: it is exported and kept with it.
        """
        ...

    async def link_case(
        self, case_id: str, aid: str, by: str, *, at: float | None = None
    ) -> tuple[int, bool]:
        """Link an activation to a case, so retention keeps it; (record seq, newly linked).

        Linking twice is harmless: the first link's seq and False. Raises
        :class:`~actimesh.errors.LedgerError` if the activation is unknown or already
        deleted by retention.
        """
        ...

    async def record_retention(self, subject: str, outcome: str, body: Mapping[str, Any]) -> int:
        """Record a deletion done outside the ledger (a recording folder); its ``seq``."""
        ...

    async def redact_expired(
        self, cutoff: float, *, now: float | None = None, dry_run: bool = False, batch: int = 500
    ) -> list[Redaction]:
        """Redact every record before ``cutoff`` not linked to a case; what was redacted.

        Bodies are removed but their digests stay, so the chain still verifies; the rows
        they describe are deleted; one ``retention_delete`` record per activation (or
        other subject) lists the redacted records. ``dry_run`` changes nothing.
        """
        ...

    # ------------------------------------------------------------------ reads
    async def find(self, src: str, eid: str) -> str | None:
        """The activation id already recorded for this device's event, if any: its own,
        or the one it joined when storm control merged it."""
        ...

    async def recent_events(self, since: float) -> list[tuple[str, str, str]]:
        """(source, event id, activation id) of the events with event time at or after
        ``since``, merged ones included (with the activation they joined)."""
        ...

    async def activation(self, aid: str) -> tuple[ActivationRow, list[DecisionRow]] | None:
        """One activation with its decisions."""
        ...

    async def acks(self, aid: str) -> list[AckRow]:
        """Every acknowledgement received for an activation, oldest first."""
        ...

    async def false_activations(self, aid: str | None = None) -> list[FalseActivation]:
        """Cameras cancelled as false activations (of ``aid``, or all), oldest first.
        Records redacted by retention are left out."""
        ...

    async def activation_ids(self, since: float = 0.0, limit: int = 1000) -> list[str]:
        """Activation ids with event time at or after ``since``, oldest first."""
        ...

    async def head(self) -> Head:
        """The chain's last record: write it down elsewhere to detect a truncated tail."""
        ...

    async def activation_states(self, aids: Sequence[str]) -> dict[str, str]:
        """For each aid: ``linked`` (to a case), ``kept``, ``redacted`` or ``unknown``."""
        ...

    async def recording_aids(self, device_id: str, recording_id: str) -> set[str]:
        """Activations whose acknowledgements name this recording (while their rows exist)."""
        ...

    async def retention_recorded(self, subject: str) -> bool:
        """True if a ``retention_delete`` record names ``subject`` already."""
        ...


def is_database_url(location: Path | str) -> TypeGuard[str]:
    """True when ``location`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(location, str) and location.startswith(_POSTGRES_SCHEMES)


def shown_location(location: Path | str) -> str:
    """``location`` as logs, banners and reports show it: a URL loses its password (in the
    user part or the query); a file path is shown as it is."""
    if not isinstance(location, str) or "://" not in location:
        return str(location)
    try:
        parts = urlsplit(location)
        host = parts.netloc.rpartition("@")[2]
        user = parts.username
    except ValueError:
        return "<unparsable URL>"
    netloc = host if user is None else f"{user}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in _SECRET_PARAMS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def open_ledger(location: Path | str, *, create: bool = True, agency: str | None = None) -> Ledger:
    """The store at ``location``, not open yet (``async with`` it).

    A ``postgresql://`` (or ``postgres://``) URL is the agency's ledger in that
    PostgreSQL database (:class:`~actimesh.ledger.postgres.PostgresLedger`), which needs
    ``agency``: each agency has its own chain there. Any other location is a SQLite file.

    ``create=False`` for tools that work on an existing ledger (audit, dispatch,
    evidence): a wrong data directory or database is an error, never an empty chain of
    its own.
    """
    if is_database_url(location):
        if agency is None:
            raise LedgerError(
                "a PostgreSQL ledger holds one chain per agency: give the agency id "
                "([mesh] agency) with the [ledger] url"
            )
        # Imported here: psycopg loads libpq, which a one-machine deployment never needs.
        from actimesh.ledger.postgres import PostgresLedger  # noqa: PLC0415

        return PostgresLedger(location, agency=agency, create=create)
    return SqliteLedger(Path(location), create=create)
