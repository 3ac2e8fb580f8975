"""The dispatch's audit trail: who logged in, who watched the live map, and every API
action that changed something, with who did it and the outcome.

The records go into the engine's ledger, in the same hash chain as the activations
(``actimesh audit verify`` checks them, retention keeps them 13 months), through a ledger
connection of the dispatch's own: appends take the ledger's write lock like another
engine replica would, so the chain stays contiguous. They carry the CJIS 5.4 audit
fields as the ledger's columns:

============  ==============================================================================
time          when it happened
component     ``dispatch/<console_id>``, or ``cli/users``, ``cli/tokens``, ``cli/up``
event_type    ``login``, ``logout``, ``live_view``, ``api_change``, ``account_change``;
              the dispatchers' own work: ``dispatch_ack``, ``incident_note`` (body: the
              activation, who, when, the alert or the note's text)
subject       who: a user name, ``token:<name>``, ``os:<account>`` (a command run by an
              operator), or ``unknown-user`` (a failed login under a name that does not
              exist: what was typed is not kept, since people type passwords there)
outcome       ``success``, ``denied``, ``locked_out``, ``started``, ``ok``, ``forbidden``,
              ``csrf_rejected``, ``rejected``, ``failed``
============  ==============================================================================

The body says the rest: the action (``zone.create``, ``webhook.delete``, ``user.add``, …),
the client's address, how the caller authenticated (``session`` or the token's id), and
what was acted on. A zone's record carries its activation id, which ties it to the
activation: it is exported with the case and kept as long as the activation is.

A login or a live-map view that cannot be recorded is refused (the caller gets 503): the
audit trail of who saw the map must not have holes. A change that was already made when
its record failed is not undone; the failure is logged, counted
(``actimesh_dispatch_audit_failures_total``) and reported by ``/api/v1/health``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from actimesh.errors import LedgerError
from actimesh.ledger import EventType, open_ledger

__all__ = ["AuditEvent", "AuditStats", "AuditTrail"]

log = logging.getLogger(__name__)


class AuditEvent(StrEnum):
    """The ledger event types the dispatch writes."""

    LOGIN = "login"
    LOGOUT = "logout"
    LIVE_VIEW = "live_view"
    API_CHANGE = "api_change"
    ACCOUNT_CHANGE = "account_change"


@dataclass(slots=True)
class AuditStats:
    written: int = 0
    failures: int = 0
    #: The last write failed (health says so until one succeeds).
    failing: bool = False


class AuditTrail:
    """Appends audit records to the ledger. ``async with AuditTrail(location, component)``.

    ``location`` is what :func:`~actimesh.ledger.open_ledger` takes; ``agency`` names the
    chain of a PostgreSQL ledger."""

    def __init__(
        self,
        ledger_location: Path | str,
        component: str,
        *,
        agency: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.component = component
        self.clock = clock
        self.stats = AuditStats()
        # create=False: the engine makes the ledger; a dispatch pointed at the wrong
        # data directory must say so rather than start an empty chain of its own.
        self._ledger = open_ledger(ledger_location, create=False, agency=agency)

    async def __aenter__(self) -> AuditTrail:
        await self._ledger.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ledger.__aexit__(*exc)

    async def record(
        self, event: AuditEvent | EventType, subject: str, outcome: str, body: Mapping[str, Any]
    ) -> int:
        """Append one record; its seq. Raises :class:`LedgerError` if it was not written.

        ``event`` is one of the dispatch's audit events, or a ledger entry type the dispatch
        writes (``dispatch_ack``, ``incident_note``)."""
        try:
            seq = await self._ledger.record_event(
                self.component,
                event.value,
                subject[:256] or "-",
                outcome,
                body,
                at=self.clock(),
            )
        except LedgerError:
            self.stats.failures += 1
            self.stats.failing = True
            raise
        self.stats.written += 1
        self.stats.failing = False
        return seq

    async def record_or_log(
        self, event: AuditEvent, subject: str, outcome: str, body: Mapping[str, Any]
    ) -> None:
        """Append one record; a failure is logged and counted, not raised."""
        try:
            await self.record(event, subject, outcome, body)
        except LedgerError:
            log.exception(
                "dispatch: audit record %s %s by %s NOT written", event.value, outcome, subject
            )
