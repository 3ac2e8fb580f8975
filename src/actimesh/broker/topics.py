"""The topic scheme: the one place that knows how actimesh names MQTT topics.

Every topic starts with a version and the agency, so two agencies (or two schemes) can
share a broker, and a device's identity is a topic level of its own so that a broker ACL
can pin each device to its topics with ``pattern write am/v1/+/dev/%u/telemetry``::

    am/v1/{agency}/dev/{device}/telemetry   device -> engine   position, accuracy, state
    am/v1/{agency}/dev/{device}/event       device -> engine   trigger events (taser draw …)
    am/v1/{agency}/dev/{device}/presence    device -> all      retained; last will = offline
    am/v1/{agency}/dev/{device}/cmd         engine -> device   activation commands
    am/v1/{agency}/dev/{device}/ack         device -> engine   command acknowledgements
    am/v1/{agency}/dev/{device}/confirm     engine -> device   trigger event made durable
    am/v1/{agency}/activations/{event_type} engine -> integrators, dispatch
    am/v1/{agency}/json/activations/{event_type}  the same records as JSON
    am/v1/{agency}/alerts/{kind}            engine -> dispatch: e.g. a camera did not answer
    am/v1/{agency}/deadletter/{reason}      engine -> operators: rejected input, with why
    am/v1/{agency}/engine/{engine}/status   engine -> all      retained; last will = offline
    am/v1/{agency}/engine/slowdown          engine -> devices  retained; signed: report slower

The topic is the source of truth for *who* sent a message: payloads never name their own
sender, so a device cannot claim to be another one without also being allowed to publish
on that device's topics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "IDENTIFIER_PATTERN",
    "SCHEME_VERSION",
    "DeviceChannel",
    "DeviceTopic",
    "Topics",
    "device_client_id",
    "is_identifier",
    "mqtt_client_id",
]

SCHEME_VERSION = "v1"
ROOT = "am"

#: Agency, device and engine identifiers: safe as one topic level and as a file name.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
# Kept in step with messages.EVENT_TYPE_PATTERN and DeadLetter.reason (tested).
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_REASON = re.compile(r"^[a-z_]{1,40}$")


def is_identifier(value: str) -> bool:
    """True when ``value`` may be used as an agency, device or engine id."""
    return _IDENTIFIER.fullmatch(value) is not None


class DeviceChannel(StrEnum):
    """The per-device topics."""

    TELEMETRY = "telemetry"
    EVENT = "event"
    PRESENCE = "presence"
    COMMAND = "cmd"
    ACK = "ack"
    CONFIRM = "confirm"


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed per-device topic."""

    device_id: str
    channel: DeviceChannel


#: What stands for a ``.`` in an MQTT client id. Never in an identifier (so the mapping
#: is one-to-one), not a wildcard in MQTT or NATS, and accepted by both brokers.
CLIENT_ID_DOT = "~"


def mqtt_client_id(name: str) -> str:
    """``name`` (made of identifiers) as an MQTT client id every broker accepts.

    A NATS server refuses a client id with a ``.`` in it (it must be a valid NATS name),
    and agency and device ids may hold one: each ``.`` becomes ``~``. Identifiers never
    hold a ``~``, so two names never share a client id, and the length is unchanged.
    """
    return name.replace(".", CLIENT_ID_DOT)


def device_client_id(agency: str, device_id: str) -> str:
    """The one MQTT client id device ``device_id`` of ``agency`` may connect with (the
    broker binds it to the account: security/acl.py): ``<agency>-<device>``, each ``.``
    written ``~`` (:func:`mqtt_client_id`), so ``cam.7`` of ``demo`` is ``demo-cam~7``."""
    return mqtt_client_id(f"{agency}-{device_id}")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one agency."""

    agency: str

    def __post_init__(self) -> None:
        if not is_identifier(self.agency):
            raise ValueError(f"agency {self.agency!r} must match {IDENTIFIER_PATTERN}")

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{SCHEME_VERSION}/{self.agency}"

    # ----------------------------------------------------------------- per device
    def device(self, device_id: str, channel: DeviceChannel) -> str:
        if not is_identifier(device_id):
            raise ValueError(f"device id {device_id!r} must match {IDENTIFIER_PATTERN}")
        return f"{self.prefix}/dev/{device_id}/{channel.value}"

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.TELEMETRY)

    def event(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.EVENT)

    def presence(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.PRESENCE)

    def command(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.COMMAND)

    def ack(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.ACK)

    def confirm(self, device_id: str) -> str:
        return self.device(device_id, DeviceChannel.CONFIRM)

    def all_devices(self, channel: DeviceChannel) -> str:
        """Wildcard filter for one channel of every device."""
        return f"{self.prefix}/dev/+/{channel.value}"

    def parse_device(self, topic: str) -> DeviceTopic | None:
        """Parse a per-device topic of this agency, or None if it is not one."""
        head = f"{self.prefix}/dev/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2 or not is_identifier(rest[0]):
            return None
        try:
            channel = DeviceChannel(rest[1])
        except ValueError:
            return None
        return DeviceTopic(device_id=rest[0], channel=channel)

    # ----------------------------------------------------------------- fleet-wide
    def activations(self, event_type: str) -> str:
        if not _EVENT_TYPE.fullmatch(event_type):
            raise ValueError(f"event type {event_type!r} must match {_EVENT_TYPE.pattern}")
        return f"{self.prefix}/activations/{event_type}"

    @property
    def all_activations(self) -> str:
        return f"{self.prefix}/activations/#"

    def activations_json(self, event_type: str) -> str:
        """The JSON mirror of :meth:`activations`, for integrators without msgpack."""
        return f"{self.prefix}/json/{self.activations(event_type)[len(self.prefix) + 1 :]}"

    def alerts(self, kind: str) -> str:
        if not _REASON.fullmatch(kind):
            raise ValueError(f"alert kind {kind!r} must match {_REASON.pattern}")
        return f"{self.prefix}/alerts/{kind}"

    @property
    def all_alerts(self) -> str:
        return f"{self.prefix}/alerts/#"

    def shared(self, group: str, topic_filter: str) -> str:
        """An MQTT v5 shared subscription: each message goes to one member of ``group``."""
        if not is_identifier(group):
            raise ValueError(f"share group {group!r} must match {IDENTIFIER_PATTERN}")
        return f"$share/{group}/{topic_filter}"

    def deadletter(self, reason: str) -> str:
        if not _REASON.fullmatch(reason):
            raise ValueError(f"dead-letter reason {reason!r} must match {_REASON.pattern}")
        return f"{self.prefix}/deadletter/{reason}"

    @property
    def all_deadletters(self) -> str:
        return f"{self.prefix}/deadletter/#"

    def slowdown(self) -> str:
        """The engine's signed, retained request to devices to report more slowly
        (messages.SlowDown). One level below ``engine/``, so no engine id (a topic level
        of its own, ``engine/{id}/status``) can ever name it."""
        return f"{self.prefix}/engine/slowdown"

    def engine_status(self, engine_id: str) -> str:
        if not is_identifier(engine_id):
            raise ValueError(f"engine id {engine_id!r} must match {IDENTIFIER_PATTERN}")
        return f"{self.prefix}/engine/{engine_id}/status"
