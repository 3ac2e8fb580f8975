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

from actimesh.broker.messages import Message
from actimesh.errors import PayloadError

__all__ = [
    "MAX_ACTIVATION_BYTES",
    "MAX_PAYLOAD_BYTES",
    "check_clock",
    "decode",
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


def encode(message: Message) -> bytes:
    """Serialise a payload to msgpack (optional fields left out when unset)."""
    packed: bytes = msgpack.packb(message.model_dump(exclude_none=True), use_bin_type=True)
    return packed


def decode(model: type[M], payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> M:
    """Parse and validate ``payload`` as ``model``; raise PayloadError on any defect."""
    if len(payload) > max_bytes:
        raise PayloadError("oversized", f"{len(payload)} bytes is over the {max_bytes} limit")
    try:
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
