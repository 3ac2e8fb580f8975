"""Who may connect as whom, and subscribe or publish to what: Mosquitto's Dynamic Security.

Mosquitto 2.0's ``acl_file`` grants every SUBSCRIBE and checks read rights only when a
message is delivered. A device that joined ``$share/engines/…/dev/+/event`` was therefore
picked as a member of the engines' share group, and the trigger events it was picked
for were dropped (FIELD-NOTES §8). Client ids were not bound to accounts either: any
account could connect as the engine, or as another camera, and take its session.

The Dynamic Security plugin that Debian's ``mosquitto`` package ships closes both. It
checks a subscription when it is made (``subscribeLiteral``/``subscribePattern``), so
the share group only ever holds engines; it can pin an account to one client id; and an
account can be disabled live, which disconnects it at once. It was chosen over writing
an auth plugin of our own (C code in the broker's address space, and a build step) and
over a broker that is not on the target machine.

How actimesh uses it:

* **Desired state, rendered.** The device registry renders an :class:`Access`
  (accounts, their client ids, roles and whether they are disabled) into
  ``<broker dir>/access.json``. On every start the managed broker writes the plugin's
  own config (``dynsec.json``) from it; while it runs, :func:`sync_access` brings the
  plugin into line over ``$CONTROL/dynamic-security/v1`` with the broker's admin
  account, sending only the difference.
* **Passwords stay in the password file.** The plugin's accounts carry no password, so
  its login check defers to Mosquitto's ``password_file`` (hashes from the registry,
  reloaded on SIGHUP). The plugin still refuses a disabled account, or a client id that
  is not the account's own, *before* that. This keeps plaintext passwords out of every
  live change: the plugin's commands take passwords only in clear.
* **Deny by default.** Every default access is off except unsubscribing; an account no
  role grants something cannot do it, and an account the plugin does not know gets no
  right at all (the broker denies when every check defers).
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from actimesh.errors import BrokerError

__all__ = [
    "CONTROL_TOPIC",
    "PLUGIN_PATHS",
    "RESPONSE_TOPIC",
    "Access",
    "AccessClient",
    "Acl",
    "AclType",
    "AdminLogin",
    "AdminRefusedError",
    "Role",
    "disable_client",
    "find_plugin",
    "plugin_config",
    "sync_access",
    "sync_commands",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

#: Where Debian (multiarch), other distributions and source builds put the plugin.
PLUGIN_PATHS: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
PLUGIN_HINT = (
    "mosquitto's Dynamic Security plugin (mosquitto_dynamic_security.so) is not "
    "installed: run `apt-get install mosquitto` (Debian's package ships it)"
)
#: Commands per control message: the plugin answers a message with one response for
#: each, and rewrites its config file after each.
_BATCH = 200


class AdminRefusedError(BrokerError):
    """The broker refused the admin login: its password file is older than the login
    (a rotation it has not reloaded yet), or the login is wrong."""


def find_plugin(candidates: Iterable[str] = PLUGIN_PATHS) -> Path:
    """The Dynamic Security plugin's shared object."""
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            return path
    raise BrokerError(PLUGIN_HINT)


class AclType(StrEnum):
    """The plugin's ACL types actimesh uses."""

    #: Publish (client to broker) to topics matching the ACL's topic filter.
    SEND = "publishClientSend"
    #: Receive (broker to client) messages on topics matching it.
    RECEIVE = "publishClientReceive"
    #: Subscribe with exactly this filter.
    SUBSCRIBE = "subscribeLiteral"
    #: Subscribe with any filter the ACL's filter covers (a ``+`` in the ACL matches
    #: one level; a ``#`` in the subscription needs one in the ACL).
    SUBSCRIBE_WITHIN = "subscribePattern"


@dataclass(frozen=True, slots=True, order=True)
class Acl:
    type: AclType
    topic: str
    allow: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"acltype": self.type.value, "topic": self.topic, "allow": self.allow}


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    acls: tuple[Acl, ...]


@dataclass(frozen=True, slots=True)
class AccessClient:
    """One account as the plugin sees it (its password is in the password file)."""

    username: str
    #: The only client id this account may connect with; None: any (service accounts).
    clientid: str | None
    roles: tuple[str, ...]
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Access:
    """Every account the broker should know, and every role they use."""

    clients: tuple[AccessClient, ...]
    roles: tuple[Role, ...]

    def __post_init__(self) -> None:
        names = {r.name for r in self.roles}
        for client in self.clients:
            missing = set(client.roles) - names
            if missing:
                raise ValueError(f"account {client.username} has unknown roles {sorted(missing)}")

    def to_json(self) -> str:
        return json.dumps(
            {
                "clients": [
                    {
                        "username": c.username,
                        "clientid": c.clientid,
                        "roles": list(c.roles),
                        "disabled": c.disabled,
                    }
                    for c in self.clients
                ],
                "roles": [
                    {"rolename": r.name, "acls": [a.to_json() for a in r.acls]} for r in self.roles
                ],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Access:
        doc = json.loads(text)
        return cls(
            clients=tuple(
                AccessClient(c["username"], c["clientid"], tuple(c["roles"]), c["disabled"])
                for c in doc["clients"]
            ),
            roles=tuple(
                Role(r["rolename"], tuple(_acl(a) for a in r["acls"])) for r in doc["roles"]
            ),
        )


def _acl(doc: Mapping[str, Any]) -> Acl:
    return Acl(AclType(doc["acltype"]), str(doc["topic"]), bool(doc.get("allow", True)))


def _client_json(client: AccessClient) -> dict[str, Any]:
    out: dict[str, Any] = {
        "username": client.username,
        "roles": [{"rolename": r} for r in client.roles],
    }
    if client.clientid is not None:
        out["clientid"] = client.clientid
    if client.disabled:
        out["disabled"] = True
    return out


def plugin_config(access: Access) -> str:
    """The plugin's config file (``plugin_opt_config_file``) for ``access``."""
    return json.dumps(
        {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": False,
                "subscribe": False,
                "unsubscribe": True,
            },
            "clients": [_client_json(c) for c in access.clients],
            "groups": [],
            "roles": [
                {"rolename": r.name, "acls": [a.to_json() for a in r.acls]} for r in access.roles
            ],
        },
        indent=1,
    )


def sync_commands(
    clients: Sequence[Mapping[str, Any]],
    roles: Sequence[Mapping[str, Any]],
    desired: Access,
    *,
    keep: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The plugin commands that turn the state ``listClients``/``listRoles`` (verbose)
    reported into ``desired``. Accounts in ``keep`` (the admin doing it) are left alone.
    Roles are created before the clients that use them and deleted after."""
    kept = set(keep)
    have_roles = {str(r["rolename"]): {_acl(a) for a in r.get("acls", ())} for r in roles}
    want_roles = {r.name: set(r.acls) for r in desired.roles}
    have = {str(c["username"]): c for c in clients if str(c["username"]) not in kept}
    want = {c.username: c for c in desired.clients if c.username not in kept}
    first: list[dict[str, Any]] = []
    for name, acls in want_roles.items():
        first += _role_commands(name, have_roles.get(name), acls)
    for name, client in want.items():
        first += _client_commands(have.get(name), client)
    last = [{"command": "deleteClient", "username": n} for n in sorted(set(have) - set(want))]
    used_by_kept = {
        str(r["rolename"])
        for c in clients
        if str(c["username"]) in kept
        for r in c.get("roles", ())
    }
    last += [
        {"command": "deleteRole", "rolename": n}
        for n in sorted(set(have_roles) - set(want_roles) - used_by_kept)
    ]
    return first + last


def _role_commands(name: str, have: set[Acl] | None, want: set[Acl]) -> list[dict[str, Any]]:
    if have is None:
        acls = [a.to_json() for a in sorted(want)]
        return [{"command": "createRole", "rolename": name, "acls": acls}]
    out = [
        {"command": "removeRoleACL", "rolename": name, **_acl_key(a)} for a in sorted(have - want)
    ]
    out += [{"command": "addRoleACL", "rolename": name, **a.to_json()} for a in sorted(want - have)]
    return out


def _client_commands(
    current: Mapping[str, Any] | None, client: AccessClient
) -> list[dict[str, Any]]:
    name = client.username
    create = {"command": "createClient", **_client_json(client)}
    if current is None:
        return [create]
    if current.get("clientid") != client.clientid:
        # The plugin cannot change a client id: delete, then create.
        return [{"command": "deleteClient", "username": name}, create]
    roles_now = {str(r["rolename"]) for r in current.get("roles", ())}
    out = [
        {"command": "removeClientRole", "username": name, "rolename": r}
        for r in sorted(roles_now - set(client.roles))
    ]
    out += [
        {"command": "addClientRole", "username": name, "rolename": r}
        for r in sorted(set(client.roles) - roles_now)
    ]
    if bool(current.get("disabled", False)) != client.disabled:
        out.append(
            {"command": "disableClient" if client.disabled else "enableClient", "username": name}
        )
    return out


def _acl_key(acl: Acl) -> dict[str, Any]:
    return {"acltype": acl.type.value, "topic": acl.topic}


@dataclass(frozen=True, slots=True)
class AdminLogin:
    """The broker's admin account: the only one that may use the control topic."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def read(cls, path: Path) -> AdminLogin:
        try:
            username, password = path.read_text(encoding="utf-8").split("\n")[:2]
        except (OSError, ValueError) as exc:
            raise BrokerError(
                f"cannot read the broker's admin login {path}: start `actimesh up` once "
                "(it writes it)"
            ) from exc
        return cls(username, password)


class _Control:
    """A blocking admin session on the control topic (paho, one thread, no loop)."""

    def __init__(self, host: str, port: int, login: AdminLogin, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._responses: list[dict[str, Any]] = []
        self._subscribed = False
        self._connack: int | None = None
        # The plugin publishes every admin's answers on one topic: this session's carry
        # its tag in their correlation data, and only those are read.
        self._tag = secrets.token_hex(4)
        client_id = f"{login.username}-{self._tag}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(login.username, login.password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise BrokerError(f"cannot reach the broker at {host}:{port}: {exc}") from exc
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            # A command and its answer are small packets each way: without this, Nagle
            # and delayed ACKs hold each for up to 40 ms (FIELD-NOTES §5), and a
            # quarantine is that much later to stop a flood.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reason = self._await_connack()
        if reason != 0:
            self.close()
            raise AdminRefusedError(
                f"the broker refused its admin account {login.username} "
                f"(reason {reason}): restart `actimesh up` to renew it"
            )
        self.client.subscribe(RESPONSE_TOPIC, qos=1)
        self._wait(lambda: self._subscribed, "subscribe to the control responses")

    def _await_connack(self) -> int:
        self._wait(lambda: self._connack is not None, "connect")
        return -1 if self._connack is None else self._connack

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connack = int(reason.value)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        if any(int(r.value) >= 0x80 for r in reasons):
            raise BrokerError(f"the control responses topic was refused: {reasons}")
        self._subscribed = True

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        mine = f"{self._tag}-"
        self._responses.extend(
            r
            for r in doc.get("responses", ())
            if str(r.get("correlationData", "")).startswith(mine)
        )

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise BrokerError(f"the broker did not {what} within {self.timeout_s:g} s")
            rc = self.client.loop(timeout=0.05)
            if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN) and not done():
                # (A refused CONNACK also ends the loop with an error, after it was read.)
                raise BrokerError(f"lost the broker while waiting to {what} (paho rc {rc})")

    def _await_responses(self, n: int) -> None:
        self._wait(lambda: len(self._responses) >= n, "answer its commands")

    def run(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands``; return one response each, in order. An error raises."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(commands), _BATCH):
            batch = [
                {**c, "correlationData": f"{self._tag}-{start + i}"}
                for i, c in enumerate(commands[start : start + _BATCH])
            ]
            self._responses.clear()
            self.client.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=1)
            self._await_responses(len(batch))
            for command, response in zip(batch, self._responses, strict=False):
                error = response.get("error")
                if error and not _harmless(command, str(error)):
                    raise BrokerError(
                        f"the broker refused {command['command']} "
                        f"{command.get('username') or command.get('rolename', '')}: {error}"
                    )
            out += self._responses
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop(timeout=0.05)


def _harmless(command: Mapping[str, Any], error: str) -> bool:
    # Someone else (a concurrent sync) got there first: the end state is the same.
    verb = command["command"]
    return (verb.startswith("delete") and "not found" in error) or (
        verb.startswith("create") and "already exists" in error
    )


def sync_access(
    host: str, port: int, login: AdminLogin, desired: Access, *, timeout_s: float = 10.0
) -> int:
    """Bring the running broker's plugin into line with ``desired``; returns how many
    commands it took. Blocking (paho): run it in a thread from async code.

    Disabling or deleting an account disconnects it at once."""
    control = _Control(host, port, login, timeout_s)
    try:
        listed = control.run(
            [{"command": "listClients", "verbose": True}, {"command": "listRoles", "verbose": True}]
        )
        clients = listed[0].get("data", {}).get("clients", [])
        roles = listed[1].get("data", {}).get("roles", [])
        commands = sync_commands(clients, roles, desired, keep=(login.username,))
        if commands:
            control.run(commands)
        return len(commands)
    finally:
        control.close()


def disable_client(
    host: str, port: int, login: AdminLogin, username: str, *, timeout_s: float = 5.0
) -> None:
    """Disable ``username`` on the running broker at once (it is disconnected), without
    waiting for a full sync: what a quarantine does first, so a flood stops now."""
    control = _Control(host, port, login, timeout_s)
    try:
        control.run([{"command": "disableClient", "username": username}])
    finally:
        control.close()
