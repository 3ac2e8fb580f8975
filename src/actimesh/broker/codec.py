"""msgpack encoding and validated decoding of the wire payloads.

Decoding never trusts its input: the size is checked before anything is parsed, the
msgpack parser runs with small container limits (so a hostile payload cannot make it
allocate much or recurse deeply), extension types and repeated keys are refused, and
the result must validate against the payload model. Every failure is a
:class:`PayloadError` whose ``reason`` is one of :data:`REASONS` (the engine counts and
dead-letters by it) and whose detail is one printable line of bounded length, whatever
the payload held. ``actimesh fuzz`` (:mod:`actimesh.fuzz`) holds the codec to that.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import msgpack
from pydantic import ValidationError

from actimesh.broker.messages import DeadLetter, DeviceState, Message, Telemetry, UnitDuty
from actimesh.errors import PayloadError

__all__ = [
    "MAX_ACTIVATION_BYTES",
    "MAX_PAYLOAD_BYTES",
    "REASONS",
    "check_clock",
    "deadletter",
    "decode",
    "decode_telemetry",
    "decode_telemetry_report",
    "encode",
    "hex_head",
]

#: Device payloads are a few hundred bytes; anything over 16 KiB is hostile or broken.
MAX_PAYLOAD_BYTES = 16 * 1024
#: Activation records name every commanded camera, so they may be larger.
MAX_ACTIVATION_BYTES = 1024 * 1024

#: Every ``reason`` :func:`decode` and :func:`decode_telemetry` raise.
REASONS = frozenset({"oversized", "malformed", "bad_version", "invalid"})

M = TypeVar("M", bound=Message)

#: Longest field path quoted in a PayloadError: unknown keys can be 16 KiB long.
_MAX_WHERE = 64


def _refuse_ext(code: int, _data: bytes) -> Any:
    raise PayloadError("malformed", f"msgpack extension type {code} is not allowed")


def _declared_size(payload: bytes) -> int:
    """How many entries the top-level map header of ``payload`` declares (-1: no map)."""
    first = payload[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F
    if first == 0xDE:
        return int.from_bytes(payload[1:3], "big")
    if first == 0xDF:
        return int.from_bytes(payload[1:5], "big")
    return -1


def _printable(text: str, limit: int = _MAX_WHERE) -> str:
    """``text`` cut to ``limit`` characters, control and format characters escaped, so a
    hostile field name can neither forge log lines nor bloat the dead-letter detail."""
    if len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _shown(value: Any) -> str:
    """A hostile value as a short safe string. Never ``repr`` of a container: msgpack
    nests 1,000 levels deep, and ``repr`` of that raises RecursionError."""
    if value is None or type(value) in (bool, int, float):
        return repr(value)
    if type(value) is str:
        return _printable(repr(value[:_MAX_WHERE]))
    return f"of type {type(value).__name__}"


def _unpack(payload: bytes, max_bytes: int) -> Any:
    obj = msgpack.unpackb(
        payload,
        raw=False,
        strict_map_key=True,
        use_list=False,
        ext_hook=_refuse_ext,
        max_str_len=max_bytes,
        max_bin_len=max_bytes,
        max_array_len=max(1024, max_bytes // 8),
        max_map_len=256,
        max_ext_len=0,
    )
    # Parsers disagree on a repeated key (first wins here, last wins elsewhere): a payload
    # that means one thing to the engine and another to an integrator is refused. Only
    # the top level is checked, where it costs a header read: no inbound payload has a
    # map inside it (the models refuse one), and a hook on every map costs a third of
    # the telemetry hot path.
    if type(obj) is dict and len(obj) != _declared_size(payload):
        raise PayloadError("malformed", "the msgpack map repeats a key")
    return obj


def encode(message: Message) -> bytes:
    """Serialise a payload to msgpack (optional fields left out when unset)."""
    packed: bytes = msgpack.packb(message.model_dump(exclude_none=True), use_bin_type=True)
    return packed


def decode(model: type[M], payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> M:
    """Parse and validate ``payload`` as ``model``; raise PayloadError on any defect."""
    if len(payload) > max_bytes:
        raise PayloadError("oversized", f"{len(payload)} bytes is over the {max_bytes} limit")
    try:
        obj = _unpack(payload, max_bytes)
    except PayloadError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise PayloadError("malformed", f"not valid msgpack ({type(exc).__name__})") from exc
    if not isinstance(obj, dict):
        raise PayloadError("malformed", f"expected a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version != 1:  # True == 1 and 1.0 == 1 in Python
        raise PayloadError(
            "bad_version", f"version {_shown(version)} is not supported (expected 1)"
        )
    try:
        return model.model_validate(obj)
    except RecursionError as exc:
        # Validating an enum field calls the Enum class, whose error message is the
        # value's repr: for a container nested ~1,000 deep that recursion overflows.
        raise PayloadError("invalid", f"{model.kind}: a value is nested too deeply") from exc
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = _printable(".".join(str(part) for part in first["loc"])) or "payload"
        raise PayloadError(
            "invalid", f"{model.kind}: {where}: {first['msg']} ({exc.error_count()} errors)"
        ) from exc


#: What :func:`decode_telemetry` returns: ``(ts, state, lat, lon, acc)``.
TelemetryFix = tuple[float, DeviceState, float | None, float | None, float | None]
#: What :func:`decode_telemetry_report` returns: ``(ts, state, lat, lon, acc, motion)``,
#: ``motion`` being ``(hb, db, spd)`` or None for a 1 Hz device (no ``hb``).
TelemetryReport = tuple[
    float,
    DeviceState,
    float | None,
    float | None,
    float | None,
    tuple[float, float, float | None] | None,
]

_TELEMETRY_KEYS = frozenset(Telemetry.model_fields)
_STATES = {state.value: state for state in DeviceState}
_DUTIES = frozenset(duty.value for duty in UnitDuty)
_MAX_TS = 4_102_444_800.0  # messages.Timestamp's bound; a test keeps the two in step


def decode_telemetry(payload: bytes) -> TelemetryFix:
    """``decode(Telemetry, payload)`` for the telemetry hot path, without the model:
    the fix and state of :func:`decode_telemetry_report`."""
    ts, state, lat, lon, acc, _motion = decode_telemetry_report(payload)
    return ts, state, lat, lon, acc


def decode_telemetry_report(payload: bytes) -> TelemetryReport:
    """``decode(Telemetry, payload)`` for the telemetry hot path, without the model,
    with the reporting mode: ``(hb, db, spd)``, or None for a device that reports about
    once a second.

    Accepts and rejects exactly what :func:`decode` does (a property test compares the
    two): the common, well-formed shape (float numbers, a known state, nothing extra) is
    checked here directly, several times faster than pydantic, and anything else is
    handed to :func:`decode`, which accepts it or raises the precise PayloadError.
    """
    if len(payload) <= MAX_PAYLOAD_BYTES:
        try:
            obj = _unpack(payload, MAX_PAYLOAD_BYTES)
        except (PayloadError, ValueError, TypeError, msgpack.UnpackException, RecursionError):
            obj = None
        if type(obj) is dict and obj.keys() <= _TELEMETRY_KEYS:
            get = obj.get
            v, ts, state = get("v"), get("ts"), get("state")
            lat, lon, acc, batt = get("lat"), get("lon"), get("acc"), get("batt")
            hb, db, spd, duty = get("hb"), get("db"), get("spd"), get("duty")
            # Chained comparisons are False for NaN, so NaN falls through to decode().
            if (
                type(v) is int
                and v == 1
                and type(ts) is float
                and 0.0 < ts <= _MAX_TS
                and type(state) is str
                and state in _STATES
                and (
                    (lat is None and lon is None)
                    or (
                        type(lat) is float
                        and type(lon) is float
                        and -90.0 <= lat <= 90.0
                        and -180.0 <= lon <= 180.0
                    )
                )
                and (acc is None or (type(acc) is float and 0.0 <= acc <= 100_000.0))
                and (batt is None or (type(batt) is float and 0.0 <= batt <= 100.0))
                and (
                    (hb is None and db is None)
                    or (
                        type(hb) is float
                        and type(db) is float
                        and 0.0 < hb <= 300.0
                        and 0.0 <= db <= 100.0
                    )
                )
                and (spd is None or (type(spd) is float and 0.0 <= spd <= 150.0))
                and (duty is None or (type(duty) is str and duty in _DUTIES))
            ):
                if hb is None or db is None:
                    return ts, _STATES[state], lat, lon, acc, None
                return ts, _STATES[state], lat, lon, acc, (hb, db, spd)
    msg = decode(Telemetry, payload)
    if msg.hb is None or msg.db is None:
        return msg.ts, msg.state, msg.lat, msg.lon, msg.acc, None
    return msg.ts, msg.state, msg.lat, msg.lon, msg.acc, (msg.hb, msg.db, msg.spd)


def check_clock(ts: float, now: float, *, max_age_s: float, max_skew_s: float) -> None:
    """Reject timestamps too far in the past or the future of ``now``."""
    if not math.isfinite(ts):  # models already refuse this; kept for direct callers
        raise PayloadError("bad_time", "timestamp is not finite")
    if ts > now + max_skew_s:
        raise PayloadError("future", f"timestamp is {ts - now:.1f} s in the future")
    if ts < now - max_age_s:
        raise PayloadError("too_old", f"timestamp is {now - ts:.1f} s old (max {max_age_s:.0f})")


def hex_head(payload: bytes, limit: int = 64) -> str:
    """The first ``limit`` bytes in hex, for dead-letter reports."""
    return payload[:limit].hex()


def deadletter(ts: float, origin: str, payload: bytes, exc: PayloadError) -> bytes:
    """The encoded :class:`DeadLetter` for refused input from ``origin`` (a topic or an
    adapter's peer), cut to the message's limits."""
    letter = DeadLetter(
        ts=ts,
        topic=origin[:512],
        reason=exc.reason,
        detail=exc.detail[:1024],
        size=len(payload),
        head=hex_head(payload),
    )
    return encode(letter)
