"""Who may connect to a NATS cluster, as what: the users and permissions of its
``authorization`` block, rendered into a file every node ``include``\\ s.

nats-server checks a user's publish permission on every message and its subscribe
permission when a subscription is made, on MQTT connections too (against the NATS
subject of the MQTT topic, :func:`~.subjects.topic_to_subject`). What it adds or
refuses by itself for MQTT (read in its ``server/mqtt.go`` and ``client.go``, 2.10 to
2.15), and so what is *not* granted here:

* the listener's own work (storing QoS 1 messages in ``$MQTT_msgs``, sessions in
  ``$MQTT_sess``, retained messages) runs on an internal client of the account, which
  no permission restricts: a device's QoS 1 PUBLISH is checked on its plain subject
  only, and needs no grant on ``$MQTT.``;
* an MQTT connection may always subscribe within ``$MQTT.sub.`` and
  ``$MQTT.deliver.pubrel.`` (the delivery subjects of its own QoS 1 and QoS 2
  subscriptions, unguessable ``nuid`` names), and may never subscribe to anything else
  that starts with ``$MQTT.`` (the SUBACK says failure): a device cannot read
  ``$MQTT.msgs.>`` or the session stream's subjects, whatever it is granted;
* ``allowed_connection_types`` keeps a user to MQTT (or to NATS): a device's password
  is refused on the NATS port, where ``$JS.API`` would let it read streams directly.

A NATS service (:class:`~.transport.NatsTransport`) needs, besides its topics,
:func:`native_grants`: the JetStream API calls of its control links on ``$MQTT_msgs``,
their acknowledgements, its reply inboxes, the stored copy of what it publishes, and
the reads of the listener's retained store (:mod:`.retained`) for what it may
subscribe to. That last grant is as narrow as a subscription: a read creates its
consumer with the filter *in the API subject* (``$JS.API.CONSUMER.CREATE.$MQTT_rmsgs.
<name>.$MQTT.rmsgs.<filter>``, which the server refuses unless the body's filter is the
same), so the grant names the filters, not the stream; pulls from it are granted, a
delete is not (the consumer goes by itself, its inactivity limit), and so neither
listing, reading nor removing the listener's own consumers of that stream is.

Passwords: nats-server takes them in clear or as bcrypt (``$2a$``/``$2b$``), never as
Mosquitto's ``$7$``. :func:`bcrypt_hash` makes bcrypt at its lowest cost (4), for the
reason :mod:`actimesh.security.passwords` gives for its low PBKDF2 count (144-bit
random passwords; the server checks the hash on every CONNECT and, on a reload, for
every connected client). It uses the ``bcrypt`` package (the standard library's
``crypt`` is deprecated and removed in Python 3.13).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import bcrypt

from actimesh.broker.nats.subjects import (
    MQTT_QOS1_PREFIX,
    MQTT_QOS1_STREAM,
    MQTT_RETAINED_PREFIX,
    MQTT_RETAINED_STREAM,
)

__all__ = [
    "BCRYPT_COST",
    "CalloutConfig",
    "ConnectionType",
    "NatsAccess",
    "NatsUser",
    "bcrypt_hash",
    "native_grants",
    "render_authorization",
    "retained_subject",
]

#: bcrypt's lowest cost (2**4 rounds): see the module docstring.
BCRYPT_COST = 4

#: Allow lists nothing but the server's implicit grants get past (nats-server reads an
#: empty list as no list at all): two subjects, so no user may both publish and
#: subscribe on one.
_NO_PUBLISH = "_ACTIMESH.nothing.publish"
_NO_SUBSCRIBE = "_ACTIMESH.nothing.subscribe"


def bcrypt_hash(password: str, *, cost: int = BCRYPT_COST) -> str:
    """The ``$2b$`` bcrypt hash of ``password``, which nats-server verifies."""
    if not 4 <= cost <= 31:
        raise ValueError("bcrypt's cost is 4 to 31")
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


class ConnectionType(StrEnum):
    """The kinds of connection a user may make (``allowed_connection_types``)."""

    STANDARD = "STANDARD"
    MQTT = "MQTT"


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One login: name, bcrypt hash, and the subjects it may publish and subscribe to."""

    name: str
    password_hash: str = field(repr=False)
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    connection_types: tuple[ConnectionType, ...]
    #: The one MQTT client id this user may connect with (None: any id no other user
    #: is bound to). Enforced by the auth callout (:mod:`.callout`), not by the server.
    client_id: str | None = None
    #: May answer requests it received (the auth callout's replies), whatever
    #: ``publish`` says.
    allow_responses: bool = False

    def __post_init__(self) -> None:
        if not self.password_hash.startswith("$2"):
            raise ValueError(f"user {self.name}: only bcrypt hashes go in a NATS config")
        if not self.connection_types:
            raise ValueError(f"user {self.name} may make no kind of connection")
        for subject in (*self.publish, *self.subscribe):
            if not subject or any(c.isspace() for c in subject):
                raise ValueError(f"user {self.name}: {subject!r} is not a NATS subject")


@dataclass(frozen=True, slots=True)
class NatsAccess:
    """Every user a cluster admits. Nobody else is: no anonymous connection."""

    users: tuple[NatsUser, ...] = ()

    def __post_init__(self) -> None:
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError("a NATS user is listed twice")

    def with_users(self, users: Iterable[NatsUser]) -> NatsAccess:
        return NatsAccess((*self.users, *users))

    def user(self, name: str) -> NatsUser | None:
        return next((u for u in self.users if u.name == name), None)

    def to_json(self) -> str:
        """The whole table, hashes included, for the auth callout (a 0600 file)."""
        return json.dumps(
            [
                {
                    "name": u.name,
                    "hash": u.password_hash,
                    "publish": u.publish,
                    "subscribe": u.subscribe,
                    "types": [t.value for t in u.connection_types],
                    "client_id": u.client_id,
                    "responses": u.allow_responses,
                }
                for u in self.users
            ],
            indent=0,
        )

    @classmethod
    def from_json(cls, text: str) -> NatsAccess:
        """:meth:`to_json` read back; ValueError if it is not one."""
        try:
            return cls(
                tuple(
                    NatsUser(
                        str(u["name"]),
                        str(u["hash"]),
                        tuple(map(str, u["publish"])),
                        tuple(map(str, u["subscribe"])),
                        tuple(ConnectionType(t) for t in u["types"]),
                        None if u["client_id"] is None else str(u["client_id"]),
                        bool(u["responses"]),
                    )
                    for u in json.loads(text)
                )
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a NATS access table ({exc})") from exc


@dataclass(frozen=True, slots=True)
class CalloutConfig:
    """Every login but ``auth_users`` is decided by the auth callout (:mod:`.callout`),
    whose answers ``issuer`` (an account nkey) signs."""

    issuer: str
    auth_users: tuple[str, ...]


def native_grants(
    publishes: Sequence[str], reads: Sequence[str] = ()
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a :class:`~.transport.NatsTransport` publishing on ``publishes`` and reading
    the retained messages of ``reads`` (subjects, each a subscription it is granted)
    needs besides them: (publish, subscribe) subjects."""
    stream = MQTT_QOS1_STREAM
    publish = [
        *(MQTT_QOS1_PREFIX + s for s in publishes),  # stored for QoS 1 subscriptions
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        "_INBOX.>",  # a round trip is a message to its own inbox
    ]
    if reads:
        retained = MQTT_RETAINED_STREAM
        # One consumer per read (any name), filtered on what it may subscribe to.
        publish += [f"$JS.API.CONSUMER.CREATE.{retained}.*.{retained_subject(s)}" for s in reads]
        publish.append(f"$JS.API.CONSUMER.MSG.NEXT.{retained}.*")
    return tuple(publish), ("_INBOX.>",)


def retained_subject(subject: str) -> str:
    """Where the MQTT listener keeps the retained messages of ``subject`` (a filter)."""
    return MQTT_RETAINED_PREFIX + subject


def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string is a quoted string in the NATS config


def _list(subjects: Sequence[str], nothing: str) -> str:
    return "[" + ", ".join(_q(s) for s in (subjects or (nothing,))) + "]"


def render_authorization(access: NatsAccess, callout: CalloutConfig | None = None) -> str:
    """The ``authorization`` block of every node (the file it includes).

    With ``callout``, every login but its ``auth_users`` is decided by the callout
    (:mod:`.callout`), whose table is ``access`` too (:meth:`NatsAccess.to_json`). The
    users are still listed here: on a reload the server closes every connected client
    whose user it does not find in its own list (``clientHasMovedToDifferentAccount``
    in server/reload.go), and re-authorizes the others through the callout. A digest of
    the table is part of the callout users' grants, so that any change to it is a
    change to the server's options, which is what makes a reload re-authorize."""
    lines = ["# Written by actimesh from the device registry; reloaded live.", "authorization {"]
    lines.append("  users = [")
    users = access.users
    if callout is not None:
        digest = hashlib.sha256(access.to_json().encode()).hexdigest()[:24]
        users = tuple(
            replace(u, subscribe=(*u.subscribe, f"_ACTIMESH.access.{digest}"))
            if u.name in callout.auth_users
            else u
            for u in access.users
        )
    for user in users:
        kinds = ", ".join(_q(k.value) for k in user.connection_types)
        lines += [
            "    {",
            f"      user: {_q(user.name)}",
            f"      password: {_q(user.password_hash)}",
            f"      allowed_connection_types: [{kinds}]",
            "      permissions: {",
            f"        publish: {{ allow: {_list(user.publish, _NO_PUBLISH)} }}",
            f"        subscribe: {{ allow: {_list(user.subscribe, _NO_SUBSCRIBE)} }}",
            *(["        allow_responses: true"] if user.allow_responses else []),
            "      }",
            "    }",
        ]
    lines.append("  ]")
    if callout is not None:
        lines += [
            "  auth_callout {",
            f"    issuer: {_q(callout.issuer)}",
            f"    auth_users: [{', '.join(_q(u) for u in callout.auth_users)}]",
            "  }",
        ]
    lines += ["}", ""]
    return "\n".join(lines)
