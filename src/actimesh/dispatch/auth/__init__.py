"""Who is calling the dispatch, and what they may do.

Two ways in, never a secret in a URL:

* ``Authorization: Bearer amt_…`` — an API token (integrators, scripts, Prometheus).
* A session cookie, for the browser: set by ``POST /api/v1/session`` (the login form),
  ``HttpOnly``, ``SameSite=Strict``, ``Path=/``, and ``Secure`` with the ``__Host-`` name
  prefix when the dispatch is reached over https. The id is 256 random bits; the server
  keeps only its SHA-256, with an idle and an absolute timeout.

Every request passes :class:`AuthGate` first, an ASGI middleware in front of all routes:
anything not on the short public list (:data:`PUBLIC_ROUTES`: the page and its static
files, the login, ``/api/v1/health``, ``/openapi.json``) without valid credentials gets
401, so routes added later are covered without anyone remembering to. The gate also
refuses:

* state-changing requests made with the cookie that lack the ``X-CSRF-Token`` header
  (its value is bound to the session and given to the page at login); tokens sent in the
  Authorization header are not subject to CSRF, since a browser never adds them itself;
* state-changing requests and WebSocket handshakes whose ``Origin`` is another site's
  (cross-site WebSocket hijacking; login CSRF);
* credentials in the query string (they end up in logs): never read, and named in the 401.

Each route then states what it needs with :class:`Require` (a dependency), and
``create_app`` refuses to build an app with a non-public route that does not.

Roles (:class:`~actimesh.dispatch.accounts.Role`) and what they grant:

=============  ==========  ==========================  ==========  =====
permission     integrator  integrator + ``telemetry``  dispatcher  admin
=============  ==========  ==========================  ==========  =====
``read``       yes         yes                         yes         yes
``telemetry``  no          yes                         yes         yes
``dispatch``   no          no                          yes         yes
``admin``      no          no                          no          yes
=============  ==========  ==========================  ==========  =====

Logins are limited per user name and per client address, and answered the same way for
every kind of wrong (:mod:`._login`).

:mod:`._principal` is who is calling, :mod:`._authenticator` how credentials become a
caller (and the audit of what callers change), :mod:`._login` password logins,
:mod:`._guard` the public routes and :class:`Require`, :mod:`._gate` and
:mod:`._headers` the two middlewares.
"""

from __future__ import annotations

from actimesh.dispatch.auth._authenticator import CSRF_HEADER, Authenticator, AuthStats
from actimesh.dispatch.auth._gate import AuthGate
from actimesh.dispatch.auth._guard import (
    PUBLIC_PREFIXES,
    PUBLIC_ROUTES,
    Auth,
    Caller,
    Require,
    authenticator,
    caller,
    check_guarded,
    is_public,
)
from actimesh.dispatch.auth._headers import SecurityHeaders
from actimesh.dispatch.auth._login import LoginDesk, LoginRefusedError
from actimesh.dispatch.auth._principal import (
    Permission,
    Principal,
    client_address,
    principal_of,
)

__all__ = [
    "CSRF_HEADER",
    "PUBLIC_PREFIXES",
    "PUBLIC_ROUTES",
    "Auth",
    "AuthGate",
    "AuthStats",
    "Authenticator",
    "Caller",
    "LoginDesk",
    "LoginRefusedError",
    "Permission",
    "Principal",
    "Require",
    "SecurityHeaders",
    "authenticator",
    "caller",
    "check_guarded",
    "client_address",
    "is_public",
    "principal_of",
]
