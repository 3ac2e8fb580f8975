"""The Mosquitto ``acl_file``: who may publish and receive on which topics.

How Mosquitto 2.0 decides (its default ACL check, read from the 2.0 sources and proved
against the real broker in tests/security/test_acl_broker.py):

* A client's own ``user`` block is tried first, line by line in file order; the first
  line whose topic matches decides: ``deny`` refuses, a matching grant allows.
* Only when no line of its block matches are the ``pattern`` lines tried, and **they
  apply to every account**, not only to accounts without a ``user`` block: ``%u`` is
  replaced by whoever is asking. A pattern meant for devices therefore also hands
  ``svc-monitor`` or ``int-acme`` write access to ``dev/svc-monitor/event`` or
  ``dev/int-acme/event`` — a read-only integrator could raise trigger events under a
  made-up device id and start cameras. Every non-device account therefore starts with
  ``topic deny am/v1/{agency}/dev/{account}/#``, which matches exactly the slot the
  patterns would give it and is checked before them.
* Subscribing is always allowed; the check runs on every message *delivered* (a
  ``read``), against the message's real topic. A device may subscribe to
  ``dev/+/cmd`` and still receives only its own commands, and an engine's
  ``$share/engines/…/dev/+/event`` subscription is governed by the plain topic's ``read``
  line: shared subscriptions need no ACL line of their own.
* Publishing without the right is refused silently at QoS 0; at QoS 1 over MQTT 5 the
  PUBACK carries reason code 0x87 (not authorised). Either way nobody receives it.

Device ids are MQTT usernames, so the patterns pin each device to
``am/v1/{agency}/dev/{its id}/…``. Ids with ``+``, ``#`` or ``/`` would make a pattern
match other devices' topics; Mosquitto refuses such usernames everything, and the
registry never issues them (they are not identifiers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from actimesh.broker.topics import ROOT, SCHEME_VERSION, DeviceChannel, is_identifier

__all__ = [
    "DEVICE_READ",
    "DEVICE_WRITE",
    "INTEGRATOR_PREFIX",
    "LOADGEN_ACCOUNT",
    "SERVICE_ACCOUNTS",
    "SERVICE_DISPATCH",
    "SERVICE_ENGINE",
    "SERVICE_MONITOR",
    "AccountRole",
    "AclAccount",
    "AclPolicy",
    "render_acl",
]

SERVICE_ENGINE = "svc-engine"
SERVICE_DISPATCH = "svc-dispatch"
SERVICE_MONITOR = "svc-monitor"
SERVICE_ACCOUNTS = (SERVICE_ENGINE, SERVICE_DISPATCH, SERVICE_MONITOR)
#: The benchmark's and the fault drill's load generator: one connection that plays a
#: whole fleet. Only the throw-away registries of ``actimesh bench`` and ``actimesh drill
#: --faults`` ever hold it.
LOADGEN_ACCOUNT = "svc-loadgen"
INTEGRATOR_PREFIX = "int-"

#: What a device may publish on its own topics, and what it may receive there.
DEVICE_WRITE = (
    DeviceChannel.TELEMETRY,
    DeviceChannel.EVENT,
    DeviceChannel.ACK,
    DeviceChannel.PRESENCE,
)
DEVICE_READ = (DeviceChannel.COMMAND, DeviceChannel.CONFIRM)


class AccountRole(StrEnum):
    """What a non-device account is for; it decides the account's ACL block."""

    ENGINE = "engine"
    DISPATCH = "dispatch"
    MONITOR = "monitor"
    INTEGRATOR = "integrator"
    LOADGEN = "loadgen"


@dataclass(frozen=True, slots=True)
class AclAccount:
    """A non-device MQTT account as the ACL sees it."""

    name: str
    role: AccountRole
    #: Integrators only: may also read every device's telemetry.
    telemetry: bool = False


@dataclass(frozen=True, slots=True)
class AclPolicy:
    """What the ACL depends on besides the accounts."""

    agency: str
    #: The device id dispatcher zones are raised under (``DispatchSettings.source_device``).
    dispatch_device: str

    def __post_init__(self) -> None:
        for what, value in (("agency", self.agency), ("dispatch device", self.dispatch_device)):
            if not is_identifier(value):
                raise ValueError(f"{what} {value!r} is not an identifier")

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{SCHEME_VERSION}/{self.agency}"


def _device_patterns(prefix: str) -> list[str]:
    lines = [f"pattern write {prefix}/dev/%u/{c.value}" for c in DEVICE_WRITE]
    lines += [f"pattern read {prefix}/dev/%u/{c.value}" for c in DEVICE_READ]
    return lines


def _grants(account: AclAccount, policy: AclPolicy) -> list[str]:
    p = policy.prefix
    dev = f"{p}/dev/+"
    role = account.role
    if role is AccountRole.ENGINE:
        return [
            *(f"topic read {dev}/{c}" for c in ("telemetry", "event", "presence", "ack")),
            *(f"topic write {dev}/{c}" for c in ("cmd", "confirm")),
            f"topic write {p}/activations/#",
            f"topic write {p}/json/activations/#",
            f"topic write {p}/alerts/#",
            f"topic write {p}/deadletter/#",
            f"topic write {p}/engine/#",
        ]
    if role is AccountRole.DISPATCH:
        zone = f"{p}/dev/{policy.dispatch_device}"
        return [
            *(f"topic read {dev}/{c}" for c in ("telemetry", "presence", "ack")),
            f"topic read {p}/activations/#",
            f"topic read {p}/alerts/#",
            f"topic read {p}/engine/+/status",
            # Dispatcher zones: the one device topic this account may publish on.
            f"topic write {zone}/event",
            f"topic read {zone}/confirm",
        ]
    if role is AccountRole.MONITOR:
        return [
            f"topic read {p}/activations/#",
            f"topic read {dev}/ack",
            f"topic read {p}/alerts/#",
            f"topic read {p}/deadletter/#",
        ]
    if role is AccountRole.INTEGRATOR:
        lines = [f"topic read {p}/activations/#", f"topic read {p}/json/activations/#"]
        if account.telemetry:
            lines.append(f"topic read {dev}/telemetry")
        return lines
    # LOADGEN: the benchmark's helpers play every device and, for the broker-only
    # baseline, an engine of their own agency over one connection each: read and write
    # on every device topic of every agency. Wide on purpose and never in an operator's
    # registry (see LOADGEN_ACCOUNT).
    return [f"topic readwrite {ROOT}/{SCHEME_VERSION}/+/dev/#"]


def render_acl(policy: AclPolicy, accounts: Iterable[AclAccount]) -> str:
    """The ``acl_file`` text for ``policy`` and the non-device ``accounts``.

    Devices need no line of their own: the patterns cover every device account, and an
    account the password file no longer lists cannot connect at all.
    """
    p = policy.prefix
    lines = [
        "# Written by actimesh from its device registry; rewritten on every change.",
        "# Mosquitto tries a client's own `user` block first (first matching line",
        "# decides), then the `pattern` lines, which apply to EVERY account. Each",
        "# non-device account therefore denies itself the slot the patterns would give it.",
        "",
        "# Devices (username = device id): their own topics only.",
        *_device_patterns(p),
    ]
    for account in sorted(accounts, key=lambda a: a.name):
        if not is_identifier(account.name):
            raise ValueError(f"account {account.name!r} is not an identifier")
        lines += [
            "",
            f"user {account.name}",
            f"topic deny {p}/dev/{account.name}/#",
            *_grants(account, policy),
        ]
    return "\n".join(lines) + "\n"
