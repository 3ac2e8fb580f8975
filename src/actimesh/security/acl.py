"""Who may do what on the broker: the accounts, client ids and roles the registry renders.

The managed broker enforces this with Mosquitto's Dynamic Security plugin
(:mod:`actimesh.broker.dynsec`), which checks subscriptions when they are made:

* **Devices** (username = device id) get a role of their own, ``dev-{id}``: publish on
  their telemetry, acknowledgement and presence topics, and on their event topic only
  if some rule lets their kind raise a trigger (:attr:`AclPolicy.event_kinds`);
  subscribe to and receive their own commands and confirmations, and the engine's
  slow-down (``engine/slowdown``, which only the engine may publish). Nothing else, not
  even ``#`` or ``$SYS/#``. Each may connect only with its own client id, ``{agency}-{id}``
  (:func:`~actimesh.broker.topics.device_client_id`), so no account can take over
  a camera's session, and a camera cannot pose as the engine or dispatch.
* **Integrators** (``int-…``) may subscribe within ``activations/#``,
  ``json/activations/#`` and ``alerts/#`` (and ``dev/+/telemetry`` if granted), and
  connect only with their account name as client id.
* **Operators** (``op-…``) read what integrators read but telemetry, and the dead
  letters (``deadletter/#``): rejected input with the reason, whose payload heads may be
  an attacker's bytes or a misconfigured device's, which is the agency's own business and
  no integrator's. Bound to their account name as client id, like integrators.
* **The engines' share group** (``$share/{group}/…/dev/+/event``) may be joined only
  by ``svc-engine``: a member that cannot read would be handed trigger events and drop
  them (FIELD-NOTES §8).
* **OwnTracks**: a device may also publish on ``owntracks/{id}/+`` (the phone app's
  location topic, ``owntracks/%u/%d`` with its username), and the engine may read
  ``owntracks/+/+``, and so may the dispatch (to put those devices on its map): an
  officer's phone, logged in as the device it tracks, moves that device only
  (adapters/owntracks.py).
* **The adapters** (``svc-adapter``: OsmAnd and NMEA listeners) may publish on every
  device's telemetry topic, and dead letters, nothing else: they authenticate the
  devices themselves (adapters/).
* **Service accounts** (engine, dispatch, monitor, load generator, admin) are not bound
  to one client id: the engine runs several replicas and links, each with its own. Their
  passwords live only in the data directory of the host that runs them
  (``secrets/``, 0600), so using one means holding that host already; and since every
  device and integrator is pinned to its own client id, none of those can take a
  service's.
* **The admin account** (``svc-admin``) alone may use the plugin's control topic.

Ids with ``+``, ``#`` or ``/`` are not identifiers; the registry never issues them, and
Mosquitto refuses such usernames and client ids every topic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from actimesh.broker.dynsec import Access, AccessClient, Acl, AclType, Role
from actimesh.broker.topics import (
    ROOT,
    SCHEME_VERSION,
    DeviceChannel,
    device_client_id,
    is_identifier,
)

__all__ = [
    "DEVICE_READ",
    "DEVICE_WRITE",
    "INTEGRATOR_PREFIX",
    "LOADGEN_ACCOUNT",
    "OPERATOR_PREFIX",
    "SERVICE_ACCOUNTS",
    "SERVICE_ADAPTER",
    "SERVICE_ADMIN",
    "SERVICE_DISPATCH",
    "SERVICE_ENGINE",
    "SERVICE_MONITOR",
    "AccountRole",
    "AclAccount",
    "AclDevice",
    "AclPolicy",
    "render_access",
]

SERVICE_ENGINE = "svc-engine"
SERVICE_DISPATCH = "svc-dispatch"
SERVICE_MONITOR = "svc-monitor"
#: Applies registry changes to the running broker (the plugin's control topic).
SERVICE_ADMIN = "svc-admin"
#: Publishes the fixes of the OsmAnd and NMEA listeners as their devices' telemetry.
SERVICE_ADAPTER = "svc-adapter"
SERVICE_ACCOUNTS = (
    SERVICE_ENGINE,
    SERVICE_DISPATCH,
    SERVICE_MONITOR,
    SERVICE_ADMIN,
    SERVICE_ADAPTER,
)
#: The OwnTracks app's topic root (``owntracks/<user>/<device>``; adapters/owntracks.py).
_OWNTRACKS_ROOT = "owntracks"
#: The benchmark's and the fault drill's load generator: one connection that plays a
#: whole fleet. Only the throw-away registries of ``actimesh bench`` and ``actimesh drill
#: --faults`` ever hold it.
LOADGEN_ACCOUNT = "svc-loadgen"
INTEGRATOR_PREFIX = "int-"
OPERATOR_PREFIX = "op-"

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
    #: A person running the mesh: alerts, activations and the dead letters.
    OPERATOR = "operator"
    LOADGEN = "loadgen"
    ADMIN = "admin"
    ADAPTER = "adapter"


@dataclass(frozen=True, slots=True)
class AclAccount:
    """A non-device MQTT account as the ACL sees it."""

    name: str
    role: AccountRole
    #: Integrators only: may also read every device's telemetry.
    telemetry: bool = False


@dataclass(frozen=True, slots=True)
class AclDevice:
    """A device account as the broker sees it."""

    device_id: str
    #: Disabled accounts are refused at login, and disconnected when disabled live.
    disabled: bool = False
    #: Its :class:`~actimesh.broker.messages.DeviceKind` value (None: unknown).
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class AclPolicy:
    """What the ACL depends on besides the accounts."""

    agency: str
    #: The device id dispatcher zones are raised under (``DispatchSettings.source_device``).
    dispatch_device: str
    #: The device kinds some rule lets raise a trigger (``Rule.senders``). A device of
    #: any other kind may not publish on its event topic at all: the broker drops a
    #: stolen camera's flood of events before the engine sees one. None: every kind may
    #: (tools that bring rules of their own).
    event_kinds: frozenset[str] | None = None

    def __post_init__(self) -> None:
        for what, value in (("agency", self.agency), ("dispatch device", self.dispatch_device)):
            if not is_identifier(value):
                raise ValueError(f"{what} {value!r} is not an identifier")

    def may_raise_events(self, kind: str | None) -> bool:
        """Whether a device of ``kind`` gets to publish on its event topic."""
        return self.event_kinds is None or (kind is not None and kind in self.event_kinds)

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{SCHEME_VERSION}/{self.agency}"


def _read(topic_filter: str) -> tuple[Acl, ...]:
    """Subscribe within ``topic_filter`` and receive what it matches."""
    return (Acl(AclType.SUBSCRIBE_WITHIN, topic_filter), Acl(AclType.RECEIVE, topic_filter))


def _write(topic_filter: str) -> tuple[Acl, ...]:
    return (Acl(AclType.SEND, topic_filter),)


def _device_acls(prefix: str, device_id: str, *, events: bool) -> tuple[Acl, ...]:
    own = f"{prefix}/dev/{device_id}"
    writes = [c for c in DEVICE_WRITE if events or c is not DeviceChannel.EVENT]
    acls = [a for c in writes for a in _write(f"{own}/{c.value}")]
    acls += [a for c in DEVICE_READ for a in _read(f"{own}/{c.value}")]
    # The engine's signed slow-down, the one fleet-wide topic a device reads.
    acls += _read(f"{prefix}/engine/slowdown")
    # The OwnTracks app logged in as this device: its location topic, any phone name.
    acls += _write(f"{_OWNTRACKS_ROOT}/{device_id}/+")
    return tuple(acls)


def _reader_grants(role: AccountRole, p: str, *, telemetry: bool) -> tuple[Acl, ...]:
    """An integrator's or operator's: read only, the feed and alerts; positions for an
    integrator granted them; the dead letters for an operator alone."""
    feed = (
        *_read(f"{p}/activations/#"),
        *_read(f"{p}/json/activations/#"),
        *_read(f"{p}/alerts/#"),
    )
    if role is AccountRole.OPERATOR:
        return (*feed, *_read(f"{p}/deadletter/#"))
    return (*feed, *_read(f"{p}/dev/+/telemetry")) if telemetry else feed


def _grants(  # noqa: PLR0911 - one return per role
    role: AccountRole, policy: AclPolicy, *, telemetry: bool = False
) -> tuple[Acl, ...]:
    p = policy.prefix
    dev = f"{p}/dev/+"
    if role is AccountRole.ENGINE:
        return (
            *(a for c in ("telemetry", "event", "presence", "ack") for a in _read(f"{dev}/{c}")),
            # The engines' share groups: this role alone may join them (trigger events,
            # and with geographic partitions the relay's share of raw telemetry).
            Acl(AclType.SUBSCRIBE_WITHIN, f"$share/+/{dev}/event"),
            Acl(AclType.SUBSCRIBE_WITHIN, f"$share/+/{dev}/telemetry"),
            *(a for c in ("cmd", "confirm") for a in _write(f"{dev}/{c}")),
            *_write(f"{p}/activations/#"),
            *_write(f"{p}/json/activations/#"),
            *_write(f"{p}/alerts/#"),
            *_write(f"{p}/deadletter/#"),
            *_write(f"{p}/engine/#"),
            # Geographic partitions: telemetry relayed between engines
            # (triggers/partitions.py), which only engines publish.
            *_read(f"{p}/engine/part/#"),
            *_read(f"{_OWNTRACKS_ROOT}/+/+"),
        )
    if role is AccountRole.DISPATCH:
        zone = f"{p}/dev/{policy.dispatch_device}"
        return (
            *(a for c in ("telemetry", "presence", "ack") for a in _read(f"{dev}/{c}")),
            *_read(f"{p}/activations/#"),
            *_read(f"{p}/alerts/#"),
            *_read(f"{p}/engine/+/status"),
            # Devices placed by the OwnTracks app: their locations, read like telemetry.
            *_read(f"{_OWNTRACKS_ROOT}/+/+"),
            # Dispatcher zones: the one device topic this account may publish on.
            *_write(f"{zone}/event"),
            *_read(f"{zone}/confirm"),
        )
    if role is AccountRole.MONITOR:
        return (
            *_read(f"{p}/activations/#"),
            *_read(f"{dev}/ack"),
            *_read(f"{p}/alerts/#"),
            *_read(f"{p}/deadletter/#"),
        )
    if role in (AccountRole.INTEGRATOR, AccountRole.OPERATOR):
        return _reader_grants(role, p, telemetry=telemetry)
    if role is AccountRole.ADAPTER:
        return (*_write(f"{dev}/telemetry"), *_write(f"{p}/deadletter/#"))
    if role is AccountRole.ADMIN:
        control = "$CONTROL/dynamic-security/#"
        return (*_write(control), *_read(control))
    # LOADGEN: the benchmark's helpers play every device and, for the broker-only
    # baseline, an engine of their own agency over one connection each: read and write
    # on every device topic of every agency. Wide on purpose and never in an operator's
    # registry (see LOADGEN_ACCOUNT).
    every = f"{ROOT}/{SCHEME_VERSION}/+/dev/#"
    return (*_read(every), *_write(every), Acl(AclType.SUBSCRIBE_WITHIN, f"$share/+/{every}"))


def _role_name(account: AclAccount) -> str:
    if account.role is AccountRole.INTEGRATOR and account.telemetry:
        return "integrator-telemetry"
    return account.role.value


def render_access(
    policy: AclPolicy, devices: Iterable[AclDevice], accounts: Iterable[AclAccount]
) -> Access:
    """Every account of ``devices`` and ``accounts`` with its client id and roles."""
    clients: list[AccessClient] = []
    roles: dict[str, Role] = {}
    for device in sorted(devices, key=lambda d: d.device_id):
        if not is_identifier(device.device_id):
            raise ValueError(f"device id {device.device_id!r} is not an identifier")
        role = f"dev-{device.device_id}"
        events = policy.may_raise_events(device.kind)
        roles[role] = Role(role, _device_acls(policy.prefix, device.device_id, events=events))
        clients.append(
            AccessClient(
                device.device_id,
                device_client_id(policy.agency, device.device_id),
                (role,),
                disabled=device.disabled,
            )
        )
    for account in sorted(accounts, key=lambda a: a.name):
        if not is_identifier(account.name):
            raise ValueError(f"account {account.name!r} is not an identifier")
        role = _role_name(account)
        telemetry = role == "integrator-telemetry"
        roles.setdefault(role, Role(role, _grants(account.role, policy, telemetry=telemetry)))
        # Integrators and operators connect with their account name; services with ids
        # of their own.
        named = account.role in (AccountRole.INTEGRATOR, AccountRole.OPERATOR)
        clientid = account.name if named else None
        clients.append(AccessClient(account.name, clientid, (role,)))
    return Access(tuple(clients), tuple(roles.values()))
