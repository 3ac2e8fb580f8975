"""msgpack encoding and validated decoding of the wire payloads.

Decoding never trusts its input: the size is checked before anything is parsed, the
msgpack parser runs with small container limits (so a hostile payload cannot make it
allocate much or recurse deeply), extension types are refused, and the result must
validate against the payload model. Every failure is a :class:`PayloadError` with a
stable ``reason`` code that the engine counts and dead-letters.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import msgpack
from pydantic import ValidationError

from actimesh.broker.messages import DeviceState, Message, Telemetry
from actimesh.errors import PayloadError

__all__ = [
    "MAX_ACTIVATION_BYTES",
    "MAX_PAYLOAD_BYTES",
    "check_clock",
    "decode",
    "decode_telemetry",
    "encode",
    "hex_head",
]

#: Device payloads are a few hundred bytes; anything over 16 KiB is hostile or broken.
MAX_PAYLOAD_BYTES = 16 * 1024
#: Activation records name every commanded camera, so they may be larger.
MAX_ACTIVATION_BYTES = 1024 * 1024

M = TypeVar("M", bound=Message)


def _refuse_ext(code: int, _data: bytes) -> Any:
    raise PayloadError("malformed", f"msgpack extension type {code} is not allowed")


def _unpack(payload: bytes, max_bytes: int) -> Any:
    return msgpack.unpackb(
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
        raise PayloadError("bad_version", f"version {version!r} is not supported (expected 1)")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise PayloadError(
            "invalid", f"{model.kind}: {where}: {first['msg']} ({exc.error_count()} errors)"
        ) from exc


#: What :func:`decode_telemetry` returns: ``(ts, state, lat, lon, acc)``.
TelemetryFix = tuple[float, DeviceState, float | None, float | None, float | None]

_TELEMETRY_KEYS = frozenset(Telemetry.model_fields)
_STATES = {state.value: state for state in DeviceState}
_MAX_TS = 4_102_444_800.0  # messages.Timestamp's bound; a test keeps the two in step


def decode_telemetry(payload: bytes) -> TelemetryFix:
    """``decode(Telemetry, payload)`` for the telemetry hot path, without the model.

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
            ):
                return ts, _STATES[state], lat, lon, acc
    msg = decode(Telemetry, payload)
    return msg.ts, msg.state, msg.lat, msg.lon, msg.acc


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
