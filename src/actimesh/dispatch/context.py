"""What the routes share: the running service's parts, handed to them by dependency.

The app keeps one :class:`AppContext` in ``app.state``; a route takes it as a ``ctx:
Ctx`` parameter. No globals and no closures: two services in one process share nothing,
and each router module stands on its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from actimesh import __version__
from actimesh.dispatch.auth import Authenticator
from actimesh.dispatch.feed import Feed
from actimesh.dispatch.hub import Hub
from actimesh.dispatch.metrics import DispatchMetrics
from actimesh.dispatch.outbox import Outbox
from actimesh.dispatch.queries import LedgerQueries
from actimesh.dispatch.settings import DispatchSettings
from actimesh.dispatch.state import LiveState
from actimesh.dispatch.webhooks import Webhooks
from actimesh.evidence.service import EvidenceService
from actimesh.listener import ConnectionGauge

__all__ = ["AppContext", "Ctx", "EventFrame", "app_context"]

#: An SSE frame and the trigger type it is about (for per-client filters).
EventFrame = tuple[str, str]


@dataclass(frozen=True, slots=True)
class AppContext:
    """The running service's parts that the routes use."""

    settings: DispatchSettings
    agency: str
    max_fix_age_s: float
    #: The widest GPS margin the inclusion policy adds to a rule's radius (0: centre mode).
    gps_margin_m: float
    event_types: tuple[str, ...]
    state: LiveState
    live: Hub[str]
    events: Hub[EventFrame]
    feed: Feed
    ledger: LedgerQueries
    outbox: Outbox
    webhooks: Webhooks
    metrics: DispatchMetrics
    wait_for_activation: Callable[[str, float], Awaitable[dict[str, Any] | None]]
    auth: Authenticator
    clock: Callable[[], float] = time.time
    #: The evidence store's service: the /api/v1/evidence routes exist only with one.
    evidence: EvidenceService | None = None
    #: The listener's open connections: while crowded, only the logged-in get in.
    gauge: ConnectionGauge | None = None

    def config(self) -> dict[str, Any]:
        s = self.settings
        return {
            "agency": self.agency,
            "version": __version__,
            "max_fix_age_s": self.max_fix_age_s,
            "gps_margin_m": self.gps_margin_m,
            "ack_timeout_s": s.ack_timeout_s,
            "basemap": s.basemap_source.to_json() if s.basemap_source is not None else None,
            "zone_max_radius_m": s.zone_max_radius_m,
            "zone_default_radius_m": s.zone_default_radius_m,
            "event_types": list(self.event_types),
            "retention_s": s.activation_retention_s,
        }

    def snapshot(self) -> str:
        doc = self.state.snapshot(self.clock())
        doc["config"] = self.config()
        doc["connected"] = self.feed.connected
        return json.dumps(doc, separators=(",", ":"))


def app_context(conn: HTTPConnection) -> AppContext:
    """Route dependency: the app's :class:`AppContext` (``app.state.ctx``)."""
    found = getattr(conn.app.state, "ctx", None)
    if not isinstance(found, AppContext):  # pragma: no cover - create_app sets it
        raise TypeError("app.state.ctx must be the app's AppContext")
    return found


#: A route parameter for the service's parts: ``ctx: Ctx``.
Ctx = Annotated[AppContext, Depends(app_context)]
