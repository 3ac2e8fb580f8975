"""Dispatch: the live activation map for dispatchers and the API for integrators.

Downstream of everything else: it reads what crosses the broker (presence, telemetry,
activation records, acknowledgements, engine status) and the engine's ledger, and
publishes only dispatcher zones, as trigger events the engine handles like any other.

:mod:`.state` is the live picture (pure), :mod:`.feed` its MQTT side, :mod:`.app` the
web app (its routes in :mod:`.routes`, one module per area, sharing :mod:`.context`),
:mod:`.basemap` the map's tile source, :mod:`.queries` the ledger reads
(:mod:`.pg_queries` on PostgreSQL), :mod:`.outbox` and :mod:`.webhooks` the durable
webhook delivery, :mod:`.cloudevents` the wire format of
a delivery, and :mod:`.service` runs them all under one TaskGroup. Who may use it:
:mod:`.accounts` (users, API tokens, sessions), :mod:`.auth` (credentials, roles, CSRF,
the security headers), :mod:`.commands` (``actimesh users`` and ``actimesh tokens``),
and :mod:`.audit` (what they did, in the ledger).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actimesh.dispatch.cloudevents import ACTIVATION_EVENT_TYPE, activation_event, sign, verify
from actimesh.dispatch.settings import DispatchSettings
from actimesh.dispatch.state import CameraStatus, DeviceStatus, LiveState

if TYPE_CHECKING:
    from actimesh.dispatch.service import DispatchService

__all__ = [
    "ACTIVATION_EVENT_TYPE",
    "CameraStatus",
    "DeviceStatus",
    "DispatchService",
    "DispatchSettings",
    "LiveState",
    "activation_event",
    "sign",
    "verify",
]


def __getattr__(name: str) -> Any:
    # The web stack (FastAPI, uvicorn) loads only when the service is used: the settings
    # are imported by every command, including `actimesh --help`.
    if name == "DispatchService":
        from actimesh.dispatch.service import DispatchService  # noqa: PLC0415

        return DispatchService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
