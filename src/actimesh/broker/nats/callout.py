"""The auth callout: every login to the cluster is decided here, and an MQTT client id
is bound to its account.

nats-server cannot tie an MQTT client id to a user by configuration: a camera logged
in with another camera's client id takes over its session, and with a clean session
erases the commands stored for it. Since 2.10 a server can hand each login to an
*auth callout* (``authorization { auth_callout { … } }``, server/auth_callout.go):
it sends a signed ``authorization_request`` JWT on ``$SYS.REQ.USER.AUTH`` carrying the
login's user name, password, connection type and MQTT client id
(``client_info.mqtt_id``), *before* the MQTT listener looks up the session, and admits
the login only with an ``authorization_response`` signed by the configured issuer that
carries a user JWT (its permissions). :func:`decide` is the rule, the same as the
Mosquitto plugin's: the user exists and is enabled, the password verifies (bcrypt), the
connection type is allowed, and an MQTT client id is the user's own one, or, for a
user bound to none (the services), no other user's. A refused login gets CONNACK 5
and never reaches the session store: no takeover, nothing erased.

**Redundant.** :class:`CalloutService` subscribes in the queue group
:data:`QUEUE`; :class:`~.cluster.NatsCluster` runs one per node, each a process of its
own (``python -m actimesh.broker.nats.run_callout DIR INDEX``), connected first to its own
node. Any one of them answers any node's request (the request and its reply cross
routes). What happens when none runs (measured in tests/broker/test_nats_takeover.py,
docs/SECURITY.md): logins wait ``auth_timeout`` (2 s) and are refused; connections
already up stay up and keep working; a reload of the authorization (a device added,
disabled, rotated) re-authorizes every connected client through the callout, so with
none running it disconnects them all. The callout's own login and the cluster's are
``auth_users``, checked by the server itself.

The table it decides from is ``access.json`` in the cluster's folder (0600:
:meth:`~.auth.NatsAccess.to_json`), re-read when it changes: :func:`~.cluster.apply_access`
writes it before it reloads the nodes, so the reload's re-authorization uses the new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from actimesh.broker.client import TlsSettings
from actimesh.broker.nats.auth import ConnectionType, NatsAccess, NatsUser
from actimesh.broker.nats.nkeys import KeyPair, Role, decode_jwt, encode_jwt

__all__ = [
    "ACCESS_NAME",
    "CALLOUT_NAME",
    "QUEUE",
    "SUBJECT",
    "CalloutService",
    "Refused",
    "decide",
]

log = logging.getLogger(__name__)

#: Where the server sends each login (``AuthCalloutSubject``).
SUBJECT = "$SYS.REQ.USER.AUTH"
#: Every callout of a cluster answers in this queue group: one answer per login.
QUEUE = "actimesh-auth"
#: The user table, in the cluster's folder.
ACCESS_NAME = "access.json"
#: The callouts' login and the issuer's seed, in the cluster's folder.
CALLOUT_NAME = "callout.json"
#: Users placed by a config-mode callout go to the global account.
_ACCOUNT = "$G"
_TYPES = {"mqtt": ConnectionType.MQTT, "nats": ConnectionType.STANDARD}
_NOTHING = "_ACTIMESH.nothing"


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a login is refused; ``kind`` is the counter it goes to."""

    kind: str
    reason: str


def decide(
    access: NatsAccess, bound: frozenset[str], info: dict[str, Any], opts: dict[str, Any]
) -> NatsUser | Refused:
    """The user a login is admitted as, or why not. ``bound``: every client id some
    user of ``access`` is bound to; ``info``/``opts``: the request's ``client_info`` and
    ``connect_opts``."""
    name = str(opts.get("user") or "")
    password = str(opts.get("pass") or "")
    user = access.user(name) if name else None
    if user is None or not password:
        return Refused("login", f"no such user {name!r}" if name else "no user name")
    if not bcrypt.checkpw(password.encode(), user.password_hash.encode()):
        return Refused("login", f"wrong password for {name}")
    kind = _TYPES.get(str(info.get("type") or ""))
    if kind is None or kind not in user.connection_types:
        return Refused("type", f"{name} may not connect over {info.get('type') or 'this'}")
    if kind is ConnectionType.MQTT:
        refused = _client_id_refused(user, str(info.get("mqtt_id") or ""), bound)
        if refused is not None:
            return refused
    return user


def _client_id_refused(user: NatsUser, client_id: str, bound: frozenset[str]) -> Refused | None:
    own = user.client_id
    if own is None:
        if client_id in bound:
            return Refused("client_id", f"client id {client_id!r} is another account's")
        return None
    # Exactly the id the access binds (a '.' in a device id is already written '~' there:
    # nats-server refuses a '.' in a client id; topics.mqtt_client_id).
    if client_id == own:
        return None
    return Refused("client_id", f"{user.name} may not use client id {client_id!r}")


def _allow(subjects: tuple[str, ...], nothing: str) -> dict[str, list[str]]:
    # An empty allow list is no list at all to the server: everything.
    return {"allow": list(subjects or (nothing,))}


def _answer(request: dict[str, Any], outcome: NatsUser | Refused, issuer: KeyPair) -> bytes:
    nats_part: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if isinstance(outcome, Refused):
        nats_part["error"] = outcome.reason
    else:
        user_claims = {
            "sub": request["nats"]["user_nkey"],
            "aud": _ACCOUNT,
            "name": outcome.name,
            "nats": {
                "pub": _allow(outcome.publish, f"{_NOTHING}.publish"),
                "sub": _allow(outcome.subscribe, f"{_NOTHING}.subscribe"),
                "allowed_connection_types": [t.value for t in outcome.connection_types],
                "type": "user",
                "version": 2,
            },
        }
        nats_part["jwt"] = encode_jwt(user_claims, issuer)
    response = {
        "sub": request["nats"]["user_nkey"],
        "aud": request["nats"]["server_id"]["id"],
        "nats": nats_part,
    }
    return encode_jwt(response, issuer).encode()


@dataclass
class CalloutService:
    """One callout: answers ``$SYS.REQ.USER.AUTH`` in :data:`QUEUE` from the table at
    ``access_path`` until cancelled. ``servers``: its own node first."""

    servers: list[str]
    user: str
    password: str = field(repr=False)
    issuer: KeyPair = field(repr=False)
    access_path: Path
    tls: TlsSettings | None = None
    #: Logins admitted, and refused by kind (``login``, ``type``, ``client_id``,
    #: ``malformed``).
    counts: Counter[str] = field(default_factory=Counter)
    _access: NatsAccess = field(default_factory=NatsAccess)
    _bound: frozenset[str] = frozenset()
    _stamp: tuple[int, int] | None = None

    def _table(self) -> tuple[NatsAccess, frozenset[str]]:
        stat = self.access_path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._access = NatsAccess.from_json(self.access_path.read_text())
            self._bound = frozenset(u.client_id for u in self._access.users if u.client_id)
            self._stamp = stamp
        return self._access, self._bound

    def handle(self, token: bytes) -> bytes | None:
        """The answer to one request (None: not a request, left unanswered)."""
        try:
            request = decode_jwt(token.decode(), Role.SERVER)
            body = request["nats"]
            info, opts = dict(body["client_info"]), dict(body["connect_opts"])
            str(body["user_nkey"]), str(body["server_id"]["id"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            self.counts["malformed"] += 1
            log.warning("auth callout: a request that is not one (%s)", exc)
            return None
        access, bound = self._table()
        outcome = decide(access, bound, info, opts)
        if isinstance(outcome, Refused):
            self.counts[outcome.kind] += 1
            log.warning(
                "auth callout refused a login from %s: %s", info.get("host"), outcome.reason
            )
        else:
            self.counts["admitted"] += 1
        return _answer(request, outcome, self.issuer)

    async def _on_request(self, msg: Msg) -> None:
        answer = self.handle(msg.data)
        if answer is not None and msg.reply:
            await msg.respond(answer)

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Connect (retrying; nats-py reconnects after), serve until cancelled."""
        nc = NatsClient()
        await nc.connect(
            self.servers,
            name=f"actimesh-auth-callout {self.servers[0]}",
            user=self.user,
            password=self.password,
            tls=None if self.tls is None else self.tls.context(),
            dont_randomize=True,
            reconnect_time_wait=1,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            connect_timeout=5,
        )
        try:
            await nc.subscribe(SUBJECT, queue=QUEUE, cb=self._on_request)
            await nc.flush()
            if ready is not None:
                ready.set()
            await asyncio.Event().wait()
        finally:
            await nc.close()
