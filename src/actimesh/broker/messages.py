"""The payloads on the wire, version 1.

Each payload is a msgpack map validated by the pydantic model below: strict types (no
string-to-number coercion, no booleans as numbers), finite numbers within range, bounded
strings and arrays, unknown fields rejected, and a version field ``v``. The JSON Schema of
each model is what ``docs/asyncapi.yaml`` documents; a test keeps the two in step.

Times are UNIX seconds (UTC) as floats. Distances and accuracies are metres.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from actimesh.broker.topics import IDENTIFIER_PATTERN

__all__ = [
    "CAMERA_KINDS",
    "EVENT_TYPE_PATTERN",
    "MAX_SLOW_HEARTBEAT_S",
    "MESSAGE_TYPES",
    "Ack",
    "AckStatus",
    "Activation",
    "ActivationReason",
    "Alert",
    "AlertKind",
    "CameraActivation",
    "Command",
    "ConfirmStatus",
    "Confirmation",
    "DeadLetter",
    "DeviceKind",
    "DeviceState",
    "EngineStatus",
    "Event",
    "LeftOut",
    "LeftOutReason",
    "Message",
    "OfflineReason",
    "Presence",
    "SlowDown",
    "Telemetry",
    "UnitDuty",
    "activation_id",
]

EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

#: Latest plausible UNIX time (year 2100): anything later is a corrupt clock.
_MAX_TS = 4_102_444_800.0

Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN, max_length=64)]
EventTypeName = Annotated[str, Field(pattern=EVENT_TYPE_PATTERN, max_length=32)]
Timestamp = Annotated[float, Field(gt=0.0, le=_MAX_TS)]
Latitude = Annotated[float, Field(ge=-90.0, le=90.0)]
Longitude = Annotated[float, Field(ge=-180.0, le=180.0)]
Accuracy = Annotated[float, Field(ge=0.0, le=100_000.0)]
Metres = Annotated[float, Field(ge=0.0, le=100_000.0)]
PreRoll = Annotated[float, Field(ge=0.0, le=120.0)]
ShortText = Annotated[str, Field(max_length=256)]
#: An Ed25519 signature.
Signature = Annotated[
    bytes,
    Field(
        min_length=64,
        max_length=64,
        description="Ed25519 signature (msgpack bin, 64 bytes) by the engine's key over "
        "the msgpack array [bin 'actimesh-cmd-v1', agency, camera id, v, aid, eid, src, "
        "type, ets, pre, reason, dist or nil, ts, exp], every number but v a float 64: "
        "the exact bytes and a test vector are in docs/DISPATCH.md, 'Command signatures, "
        "byte for byte'",
    ),
]


class DeviceKind(StrEnum):
    """What a device is. Cameras record; gateways and CEWs raise trigger events."""

    BODY_CAM = "body_cam"
    DASH_CAM = "dash_cam"
    REAR_CAM = "rear_cam"
    GATEWAY = "gateway"
    CEW = "cew"
    HOLSTER = "holster"  # a holster sensor: raises holster_draw


CAMERA_KINDS = frozenset({DeviceKind.BODY_CAM, DeviceKind.DASH_CAM, DeviceKind.REAR_CAM})


class DeviceState(StrEnum):
    """Recording state a camera reports; non-cameras report ``buffering`` when on."""

    OFF = "off"
    BUFFERING = "buffering"
    RECORDING = "recording"


class UnitDuty(StrEnum):
    """A unit's dispatch status, as its vehicle gateway (or a CAD bridge) reports it."""

    AVAILABLE = "available"
    EN_ROUTE = "en_route"
    ON_SCENE = "on_scene"


class ActivationReason(StrEnum):
    """Why a camera was commanded."""

    PAIRED = "paired"
    PROXIMITY = "proximity"


class LeftOutReason(StrEnum):
    """Why a camera near an event was not commanded (the ledger's decision reason)."""

    #: Fresh fix, but farther than the radius (plus the margin, in ``inclusive`` mode).
    TOO_FAR = "too_far"
    #: Its fix is too old (or too far in the future) to say where it is.
    STALE = "stale"
    #: Switched off or gone within the last shift; its last fix was near.
    OFFLINE = "offline"
    #: A camera of a kind the event's rule does not start.
    KIND_NOT_IN_RULE = "kind_not_in_rule"


class AckStatus(StrEnum):
    """What a camera did with a command. A camera answers twice: ``received`` at once,
    then ``recording`` (with the pre-roll it kept) or ``refused``. A third answer,
    ``cancelled``, may follow within the camera's cancel window (10 s by default): the
    officer cancelled the recording this activation started from the buffer as a false
    activation. The recording is kept, marked cancelled; ``by`` names who cancelled it."""

    RECEIVED = "received"  # the command arrived; committing the buffer
    RECORDING = "recording"  # a recording now includes this activation
    REFUSED = "refused"  # the camera could not record (off, storage full …)
    CANCELLED = "cancelled"  # the officer cancelled it as a false activation (final)


class ConfirmStatus(StrEnum):
    """What the engine did with a trigger event, told to the device that raised it."""

    ACTIVATED = "activated"  # the activation is durable in the ledger
    REJECTED = "rejected"  # the event was refused (see detail); do not send it again


class OfflineReason(StrEnum):
    """Why a device went offline. A camera that lost its link still buffers and can be
    commanded (the broker holds the command); one that was switched off cannot."""

    CONNECTION_LOST = "connection_lost"  # the last will: the broker lost the device
    POWER_OFF = "power_off"  # the device said goodbye before switching off


class AlertKind(StrEnum):
    """Conditions that need a person's attention."""

    NO_ACK = "no_ack"  # a commanded camera has not acknowledged in time
    REFUSED = "refused"  # a camera refused an activation
    EXPIRED = "expired"  # a command expired without reaching its camera
    LEDGER = "ledger"  # an activation could not be written to the ledger
    STORM = "storm"  # a device's trigger events were refused as over its rate or a storm
    QUARANTINE = "quarantine"  # a device kept sending refused messages and was disabled


# Enum fields arrive from msgpack as plain strings: validate them by value (lax) while
# every other field stays strict (no "1" for 1, no true for 1.0).
Kind = Annotated[DeviceKind, Strict(False)]
State = Annotated[DeviceState, Strict(False)]
Duty = Annotated[UnitDuty, Strict(False)]
Reason = Annotated[ActivationReason, Strict(False)]
LeftOutWhy = Annotated[LeftOutReason, Strict(False)]
Status = Annotated[AckStatus, Strict(False)]
Confirmed = Annotated[ConfirmStatus, Strict(False)]
Offline = Annotated[OfflineReason, Strict(False)]
AlertName = Annotated[AlertKind, Strict(False)]


class Message(BaseModel):
    """Base of every payload: strict, immutable, closed."""

    model_config = ConfigDict(
        frozen=True, strict=True, extra="forbid", allow_inf_nan=False, use_enum_values=False
    )
    #: Short stable name used in docs, counters and the dead-letter reason.
    kind: ClassVar[str]
    v: Literal[1] = 1


class _Positioned(Message):
    lat: Latitude | None = None
    lon: Longitude | None = None
    acc: Accuracy | None = None

    @model_validator(mode="after")
    def _lat_lon_together(self) -> Self:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        return self

    @property
    def has_fix(self) -> bool:
        return self.lat is not None


class Telemetry(_Positioned):
    """A device's position fix and state: about once a second, or, with ``hb`` and
    ``db``, when it has moved, changed state or accuracy, and at least every ``hb`` s."""

    kind: ClassVar[str] = "telemetry"
    ts: Timestamp
    state: State
    batt: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    #: The unit's dispatch status, sent by a vehicle gateway that knows it (its MDT/CAD
    #: link); cameras leave it out.
    duty: Duty | None = None
    #: Motion-scaled reporting (docs/SCALING.md, "Telemetry that scales with motion"):
    #: the device promises to report again within ``hb`` seconds, and sooner if it moves
    #: more than ``db`` metres from this fix or its state or accuracy changes. Given
    #: together or not at all; a device without them reports about once a second.
    hb: (
        Annotated[
            float,
            Field(
                gt=0.0,
                le=300.0,
                description="Motion-scaled reporting: the device reports again within "
                "this many seconds (its heartbeat). Absent: a device that reports about "
                "once a second.",
            ),
        ]
        | None
    ) = None
    db: (
        Annotated[
            float,
            Field(
                ge=0.0,
                le=100.0,
                description="With hb: the dead-band in metres; the device reports before "
                "it moves farther than this from this fix.",
            ),
        ]
        | None
    ) = None
    #: Ground speed at the fix, metres a second (GPS Doppler). With ``hb``, the engine
    #: grows the fix's uncertainty by ``spd`` times its age, up to ``db``.
    spd: (
        Annotated[
            float,
            Field(
                ge=0.0,
                le=150.0,
                description="Ground speed at the fix, m/s. With hb, the engine widens the "
                "fix's uncertainty by spd times its age, up to db (db when spd is absent).",
            ),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _hb_db_together(self) -> Self:
        if (self.hb is None) != (self.db is None):
            raise ValueError("hb and db must be given together")
        return self


class Presence(Message):
    """Retained birth/death message; the broker publishes ``online: false`` as last will."""

    kind: ClassVar[str] = "presence"
    online: bool
    ts: Timestamp | None = None
    device_kind: Kind | None = None
    unit: Identifier | None = None
    paired: Annotated[tuple[Identifier, ...], Field(max_length=16)] = ()
    pre_roll: PreRoll | None = None
    #: With ``online: false``: why. Absent means connection lost.
    reason: Offline | None = None


class Event(_Positioned):
    """A trigger raised by a device (or by dispatch on behalf of a dispatcher)."""

    kind: ClassVar[str] = "event"
    eid: Identifier
    type: EventTypeName
    ts: Timestamp
    radius: Annotated[float, Field(gt=0.0, le=1_000.0)] | None = None
    by: ShortText | None = None


class Command(Message):
    """An activation command to one camera. The mesh only ever starts recordings: there
    is no field, value or other payload that stops one.

    ``sig`` is the engine's Ed25519 signature over the command bound to its agency and
    target camera (:mod:`actimesh.security.signing`); cameras refuse any command whose
    signature does not verify with the engine's public key.
    """

    kind: ClassVar[str] = "command"
    aid: Identifier
    eid: Identifier
    src: Identifier
    type: EventTypeName
    ets: Timestamp
    pre: PreRoll
    reason: Reason
    dist: Metres | None = None
    ts: Timestamp
    exp: Timestamp
    sig: Signature


class Ack(Message):
    """A camera's answer to a command.

    ``by`` (who cancelled) comes with ``status: cancelled`` and only with it; ``ts`` is
    then when the officer cancelled, and ``rec`` the recording that is kept, marked.
    """

    kind: ClassVar[str] = "ack"
    aid: Identifier
    status: Status
    pre_cov: PreRoll
    rec: Identifier | None = None
    ts: Timestamp
    detail: ShortText | None = None
    by: Annotated[str, Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _by_with_cancelled(self) -> Self:
        if (self.by is not None) != (self.status is AckStatus.CANCELLED):
            raise ValueError("by is given with status cancelled, and only with it")
        return self


class Confirmation(Message):
    """The engine's end-to-end answer to a trigger event, sent to the device that raised
    it once the activation is durable. The device re-sends the event until it gets one:
    broker acknowledgements alone do not survive a broker killed with ``kill -9``."""

    kind: ClassVar[str] = "confirmation"
    eid: Identifier
    status: Confirmed
    aid: Identifier | None = None
    cameras: Annotated[int, Field(ge=0)] = 0
    ts: Timestamp
    detail: ShortText | None = None


class Alert(Message):
    """Something dispatch and integrators must see, e.g. a camera that did not answer."""

    kind: ClassVar[str] = "alert"
    alert: AlertName
    ts: Timestamp
    aid: Identifier | None = None
    device: Identifier | None = None
    detail: ShortText | None = None


class CameraActivation(Message):
    """One camera of an activation and why it was commanded."""

    kind: ClassVar[str] = "camera_activation"
    id: Identifier
    device_kind: Kind
    reason: Reason
    dist: Metres | None = None
    #: Where the fix the engine judged put the camera (the ledger's decision row).
    lat: Latitude | None = None
    lon: Longitude | None = None


class LeftOut(Message):
    """One camera near an activation that was not commanded, and why.

    Every camera the engine found within the radius plus ``max_margin_m`` gets one, in
    either inclusion mode, so an integrator can tell a camera 5 cm outside the radius
    (``too_far``) from one whose fix was stale or that was switched off.
    """

    kind: ClassVar[str] = "left_out"
    id: Identifier
    device_kind: Kind | None = None
    reason: LeftOutWhy
    #: Metres from the event's position to the camera's (last) fix: any distance on
    #: the Earth, since a camera judged on its track may have been anywhere (a camera
    #: near now whose fix before the event was far away is still a decision to report).
    dist: Annotated[float, Field(ge=0.0, le=20_040_000.0)] | None = None
    #: Metres the inclusion policy added to the radius for this pair of fixes.
    margin: Metres | None = None
    #: Event time minus fix time, in seconds (negative: the fix is newer than the event).
    age: Annotated[float, Field(ge=-1_000_000.0, le=1_000_000.0)] | None = None
    #: Where that fix put the camera (the ledger's decision row).
    lat: Latitude | None = None
    lon: Longitude | None = None


class Activation(Message):
    """What the engine did about one trigger, for dispatch and integrators."""

    kind: ClassVar[str] = "activation"
    aid: Identifier
    eid: Identifier
    src: Identifier
    type: EventTypeName
    ets: Timestamp
    ts: Timestamp
    lat: Latitude | None = None
    lon: Longitude | None = None
    radius: Metres
    pre: PreRoll
    cameras: Annotated[tuple[CameraActivation, ...], Field(max_length=10_000)]
    #: How many cameras near the event were left out (``len(left_out)``).
    excluded: Annotated[int, Field(ge=0)]
    by: ShortText | None = None
    #: Every camera near the event that was not commanded, with why, sorted by id.
    left_out: Annotated[tuple[LeftOut, ...], Field(max_length=10_000)] = ()
    #: A follow-up activation (triggers/followup.py): the activation of the same
    #: trigger event that this one follows. It commands cameras whose fix was stale when
    #: the trigger was judged and whose next fix put them within the radius at the
    #: event's time. Readers older than this field refuse a record that has it.
    follows: Identifier | None = None


class DeadLetter(Message):
    """A rejected input, republished with the reason so operators can see it."""

    kind: ClassVar[str] = "deadletter"
    ts: Timestamp
    topic: Annotated[str, Field(max_length=512)]
    reason: Annotated[str, Field(pattern=r"^[a-z_]{1,40}$")]
    detail: Annotated[str, Field(max_length=1024)]
    size: Annotated[int, Field(ge=0)]
    head: Annotated[str, Field(max_length=128)]


#: The longest heartbeat a slow-down may ask for (Telemetry's ``hb`` bound).
MAX_SLOW_HEARTBEAT_S = 300.0


class SlowDown(Message):
    """The engine, overloaded, asks every device of the agency to report more slowly.

    Retained on ``engine/slowdown`` and signed with the engine's command key (the same
    key devices already trust), so a device believes only the engine. Everything that
    limits it is in the signed payload, never only in MQTT 5 properties (the cluster's
    listener speaks 3.1.1): ``exp`` ends it even if the retained copy outlives the
    engine, and ``seq`` orders it, so an older message replayed is refused. ``hb``
    absent clears it. A device applies ``hb`` to its heartbeat only: state changes,
    motion beyond the dead-band and trigger events go out at once as always
    (docs/SCALING.md, "The engine asks devices to slow down").
    """

    kind: ClassVar[str] = "slowdown"
    #: Strictly increasing per agency (the engine uses the milliseconds it was issued).
    seq: Annotated[int, Field(ge=0, le=2**53)]
    ts: Timestamp
    exp: Timestamp
    hb: (
        Annotated[
            float,
            Field(
                gt=0.0,
                le=MAX_SLOW_HEARTBEAT_S,
                description="The heartbeat, in seconds, devices may use until exp (never "
                "shorter than their own). Absent: the slow-down is cleared.",
            ),
        ]
        | None
    ) = None
    sig: Annotated[
        bytes,
        Field(
            min_length=64,
            max_length=64,
            description="Ed25519 signature (msgpack bin, 64 bytes) by the engine's "
            "command key over the msgpack array [bin 'actimesh-slow-v1', agency, v, seq, "
            "ts, exp, hb or nil], ts, exp and hb float 64 (docs/DISPATCH.md, 'Slow-down "
            "signatures')",
        ),
    ]

    @model_validator(mode="after")
    def _expires_after_issue(self) -> Self:
        if not self.exp > self.ts:
            raise ValueError("exp must be later than ts")
        return self


class EngineStatus(Message):
    """Retained engine liveness; the broker publishes ``online: false`` as last will.

    ``ttl``: an ``online: true`` status holds this many seconds after it is received
    unless renewed (the engine renews it well within). Where the bus has no will (a NATS
    cluster), an engine killed outright stops renewing it, and readers see it go stale.
    """

    kind: ClassVar[str] = "engine_status"
    online: bool
    engine: Identifier
    ts: Timestamp | None = None
    version: ShortText | None = None
    ttl: Annotated[float, Field(gt=0.0, le=86_400.0)] | None = None


#: Every payload model, by its ``kind`` name (the AsyncAPI message names).
MESSAGE_TYPES: dict[str, type[Message]] = {
    m.kind: m
    for m in (
        Telemetry,
        Presence,
        Event,
        Command,
        Ack,
        Confirmation,
        Activation,
        Alert,
        DeadLetter,
        EngineStatus,
        SlowDown,
    )
}


def activation_id(source: str, eid: str) -> str:
    """The activation id of a device's event: ``act-`` and the first 24 hex digits of the
    SHA-256 of ``source``, a NUL byte and ``eid``.

    Deterministic, so a redelivered event maps to the same activation and cameras (which
    dedupe by activation id) never record it twice; integrators can compute it too.
    """
    digest = hashlib.sha256(f"{source}\x00{eid}".encode()).hexdigest()
    return f"act-{digest[:24]}"
