"""The HTTP API's request and response bodies: pydantic models at the edge.

Requests are closed (unknown fields rejected) and bounded like the wire payloads; the
OpenAPI document at ``/openapi.json`` is generated from these models.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from actimesh.broker.messages import EVENT_TYPE_PATTERN
from actimesh.broker.topics import IDENTIFIER_PATTERN

__all__ = [
    "AckOut",
    "ActivationDetail",
    "ActivationPage",
    "ActivationSummary",
    "ApiError",
    "AtEventFrom",
    "CameraOutcome",
    "DeliveryOut",
    "DeliveryStatus",
    "DeviceOut",
    "DispatcherAck",
    "Health",
    "LoginRequest",
    "NoteOut",
    "NoteRequest",
    "Outcome",
    "Replay",
    "ReplayDevice",
    "SessionOut",
    "TokenCreate",
    "TokenCreated",
    "TokenOut",
    "TrackOut",
    "UserCreate",
    "UserCreated",
    "UserOut",
    "UserUpdate",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookOut",
    "Workflow",
    "ZoneAccepted",
    "ZoneRequest",
]

EventType = Annotated[str, Field(pattern=EVENT_TYPE_PATTERN, max_length=32)]
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN, max_length=64)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ApiError(_Out):
    """Every 4xx and 5xx body: one line saying what is wrong and how to fix it."""

    error: str


class DeviceOut(_Out):
    """A device as the dispatch sees it now."""

    id: str
    kind: str | None
    unit: str | None
    paired: list[str]
    online: bool
    state: str | None = Field(description="What the device last reported")
    status: str = Field(description="Map colour: recording, buffering or offline")
    lat: float | None
    lon: float | None
    acc: float | None
    fix_ts: float | None
    stale: bool = Field(description="The fix is older than the engine's freshness limit")
    batt: float | None
    pre_roll: float | None
    last_seen: float
    call_sign: str | None = Field(default=None, description="Radio call sign, from the registry")
    officer: str | None = Field(
        default=None, description="Who carries or drives it, from the registry"
    )
    duty: str | None = Field(
        default=None,
        description="available, en_route or on_scene, as the unit's gateway reports it",
    )


class Outcome(StrEnum):
    """What became of one camera considered for an activation."""

    RECORDING = "recording"
    REFUSED = "refused"
    #: The camera got the command but has not said it records (yet).
    ACKNOWLEDGED = "acknowledged"
    NO_ACK = "no_ack"
    PENDING = "pending"
    NOT_COMMANDED = "not_commanded"
    #: Recorded, then cancelled by the officer on the camera as a false activation
    #: (the recording is kept, marked; the ledger has a ``false_activation`` record).
    CANCELLED = "cancelled"


class ActivationSummary(_Out):
    """One activation from the ledger, with its camera counts."""

    aid: str
    src: str
    eid: str
    type: str
    event_ts: float
    received_ts: float
    decided_ts: float
    lat: float | None
    lon: float | None
    acc: float | None
    position_source: str
    radius_m: float
    pre_roll_s: float
    initiated_by: str | None
    engine: str
    commanded: int
    recording: int
    refused: int


class ActivationPage(_Out):
    items: list[ActivationSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page"
    )


class AckOut(_Out):
    device_id: str
    status: str
    pre_cov_s: float
    recording: str | None
    device_ts: float
    received_ts: float
    detail: str | None


class AtEventFrom(StrEnum):
    """Where a camera's position at the event comes from."""

    #: The ledger's decision row: the fix the engine judged.
    LEDGER = "ledger"
    #: The dispatch's recent tracks (a decision row from before positions were kept).
    TRACKS = "tracks"


class CameraOutcome(_Out):
    """One camera considered for an activation: the engine's decision and its result."""

    device_id: str
    device_kind: str | None
    commanded: bool
    reason: str = Field(description="paired, proximity, or why it was left out")
    distance_m: float | None
    margin_m: float | None
    fix_age_s: float | None
    acc_m: float | None
    outcome: Outcome
    pre_roll_covered_s: float | None
    recording_id: str | None
    ack_latency_s: float | None = Field(description="From the engine's decision to the ack")
    detail: str | None
    call_sign: str | None = Field(default=None, description="From the registry")
    officer: str | None = Field(default=None, description="From the registry")
    at_event: tuple[float, float] | None = Field(
        default=None,
        description="[lat, lon] of the camera at the event: the fix the engine judged, from "
        "the ledger's decision row; for a row written before the ledger kept positions, "
        "from the dispatch's recent tracks (null once older than their horizon)",
    )
    at_event_from: AtEventFrom | None = Field(
        default=None, description="Where ``at_event`` comes from (null when it is null)"
    )


class ActivationDetail(ActivationSummary):
    """One activation with every camera's outcome and every acknowledgement."""

    rule: dict[str, Any]
    cameras: list[CameraOutcome]
    acks: list[AckOut]
    gps_margin_m: float | None = Field(
        default=None, description="The widest GPS margin the inclusion policy in force adds"
    )
    effective_radius_m: float | None = Field(
        default=None,
        description="radius_m plus gps_margin_m: the farthest a camera may be included",
    )


class DispatcherAck(_Out):
    """A dispatcher's acknowledgement of an incident or of one of its alerts (ledger
    record ``dispatch_ack``)."""

    aid: str
    alert_id: str | None = Field(description="The alert acknowledged; null for the incident")
    by: str
    ts: float
    seq: int = Field(description="The ledger record")


class NoteOut(_Out):
    """A dispatcher's note on an incident (ledger record ``incident_note``)."""

    aid: str
    by: str
    ts: float
    text: str
    seq: int


class Workflow(_Out):
    """What dispatchers did about an incident, from the ledger, oldest first."""

    aid: str
    acks: list[DispatcherAck]
    notes: list[NoteOut]


class NoteRequest(_In):
    text: str = Field(min_length=1, max_length=2000)

    @field_validator("text")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(c) < 32 and c not in "\n\t" for c in value):
            raise ValueError("text: control characters other than newline and tab")
        return value


class TrackOut(_Out):
    """A device's recent fixes, oldest first: ``[ts, lat, lon, acc, state]`` each."""

    device_id: str
    points: list[tuple[float, float, float, float | None, str | None]]


class ReplayDevice(TrackOut):
    call_sign: str | None
    officer: str | None
    kind: str | None
    commanded: bool
    reason: str
    at_event: tuple[float, float] | None = Field(
        default=None,
        description="[lat, lon] of the camera at the event, as in the activation's detail",
    )
    at_event_from: AtEventFrom | None = None


class Replay(_Out):
    """An incident from ``start`` (30 s before the event) to ``end``: each camera's
    fixes and recording state from the dispatch's recent tracks, and the ledger's
    acknowledgements (with their ``received_ts``) to place on the same time line."""

    aid: str
    start: float
    event_ts: float
    end: float
    lat: float | None
    lon: float | None
    radius_m: float
    effective_radius_m: float
    devices: list[ReplayDevice]
    acks: list[AckOut]
    tracked_since: float | None = Field(
        description="The oldest fix the dispatch still holds; before it a replay has no movement"
    )


class ZoneRequest(_In):
    """A dispatcher-initiated activation: every camera within ``radius_m`` of a point."""

    lat: float = Field(ge=-90.0, le=90.0)
    lon: float = Field(ge=-180.0, le=180.0)
    radius_m: float = Field(gt=0.0, le=1000.0, description="Capped by the engine's rule")
    dispatcher: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The person a token (a CAD bridge, say) acts for. The ledger's "
        "initiated_by is always the authenticated caller: `kim`, or `Dispatcher Kim via "
        "token:cad` when a token names the dispatcher",
    )
    call_id: Identifier | None = Field(
        default=None,
        description="The CAD call id. Repeating a request with the same call id is "
        "harmless: it maps to the same activation.",
    )

    @field_validator("dispatcher")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text (no control characters)")
        return value


class ZoneAccepted(_Out):
    aid: str = Field(description="The activation id the engine will use")
    eid: str
    source: str
    status_url: str
    activation: dict[str, Any] | None = Field(
        default=None, description="The live activation, when `wait` was given and it arrived"
    )


class WebhookCreate(_In):
    """Register a receiver for activations."""

    url: str = Field(min_length=8, max_length=2048, description="http:// or https:// URL")
    description: str = Field(default="", max_length=256)
    event_types: list[EventType] = Field(
        default_factory=list, max_length=32, description="Only these trigger types; [] = all"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit  # noqa: PLC0415 - validator-local helper

        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials; the HMAC signature authenticates")
        if port == 0:
            raise ValueError("has port 0")
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        return value


class WebhookOut(_Out):
    id: str
    url: str
    description: str
    event_types: list[str]
    created_ts: float
    pending: int
    delivered: int
    failed: int


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="HMAC-SHA256 key for the X-Actimesh-Signature-256 header. Shown once."
    )


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class DeliveryOut(_Out):
    delivery_id: str = Field(description="Stable across retries: dedupe on it")
    endpoint_id: str
    aid: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    created_ts: float
    next_attempt_ts: float | None
    last_attempt_ts: float | None
    delivered_ts: float | None
    last_status: int | None = Field(description="HTTP status of the last attempt")
    last_error: str | None


class Health(_Out):
    """Status for load balancers; the details only for authenticated callers."""

    status: str = Field(description="ok, or degraded with the reasons")
    reasons: list[str]
    version: str
    agency: str | None = None
    mqtt_connected: bool | None = None
    mqtt_listener: str | None = Field(
        default=None,
        description="host:port of the MQTT listener activations are read from (on a "
        "cluster, the node the dispatch is on now), or tried next while disconnected",
    )
    engines: list[dict[str, Any]] | None = None
    devices: dict[str, int] | None = None
    clients: int | None = None
    webhooks: dict[str, int] | None = None


# ---------------------------------------------------------------------- accounts
UserName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._@-]*$")]


class LoginRequest(_In):
    """``POST /api/v1/session``."""

    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class SessionOut(_Out):
    """Who the caller is. ``csrf_token`` goes in ``X-CSRF-Token`` on every change a
    logged-in page makes (not needed with a bearer token)."""

    authenticated: bool
    user: str | None = None
    role: str | None = None
    via: str | None = Field(default=None, description="session (browser login) or token")
    telemetry: bool = False
    csrf_token: str | None = None
    idle_timeout_s: float | None = None


class UserOut(_Out):
    name: str
    role: str
    created_ts: float
    password_ts: float
    disabled: bool
    disabled_ts: float | None


class UserCreate(_In):
    name: UserName
    role: str = Field(pattern="^(dispatcher|admin)$")
    password: str | None = Field(
        default=None, min_length=12, max_length=1024, description="Default: generated"
    )


class UserCreated(UserOut):
    password: str | None = Field(description="The generated password, shown once")


class UserUpdate(_In):
    disabled: bool | None = None
    reset_password: bool = Field(
        default=False, description="Generate a new password (shown once); ends their sessions"
    )


class TokenOut(_Out):
    id: str = Field(description="The token's first characters: tells tokens apart")
    name: str
    role: str
    telemetry: bool
    created_ts: float
    created_by: str
    expires_ts: float | None
    revoked_ts: float | None
    last_used_ts: float | None
    state: str = Field(description="active, expired or revoked")


class TokenCreate(_In):
    name: UserName
    role: str = Field(pattern="^(integrator|dispatcher|admin)$")
    telemetry: bool = Field(default=False, description="An integrator may read positions")
    expires_days: float | None = Field(default=None, gt=0, le=3650)


class TokenCreated(TokenOut):
    token: str = Field(description="Send as `Authorization: Bearer <token>`. Shown once.")
