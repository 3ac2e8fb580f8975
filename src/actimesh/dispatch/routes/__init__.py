"""The dispatch's HTTP routes, one module per area; :mod:`..app` puts them together.

Each module has a ``router`` whose routes take what they use by dependency: the
service's parts as ``ctx: Ctx`` (:mod:`..context`), the authenticator as ``auth: Auth``
and the caller as ``principal: Caller`` (:mod:`..auth`). Each route, or its router,
states the permission it needs with ``Require``. :mod:`.errors` makes every error one
line of JSON; :mod:`.page` serves the map page and its files.
"""

from actimesh.dispatch.routes import (
    accounts,
    activations,
    basemap,
    devices,
    errors,
    evidence,
    health,
    live,
    page,
    session,
    tracks,
    webhooks,
    workflow,
    zones,
)

__all__ = [
    "accounts",
    "activations",
    "basemap",
    "devices",
    "errors",
    "evidence",
    "health",
    "live",
    "page",
    "session",
    "tracks",
    "webhooks",
    "workflow",
    "zones",
]
