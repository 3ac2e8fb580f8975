"""What every device protocol adapter produces: one position fix of one device.

An adapter's parser turns its protocol's bytes into a :class:`Fix`; the fix becomes the
device's ordinary :class:`~actimesh.broker.messages.Telemetry` (:func:`telemetry_of`),
so the engine's intake validates, rate-limits and indexes it like any other: the
adapters add ways in, never a second place of validation.

The parsers refuse what they cannot read with a :class:`~actimesh.errors.PayloadError`
whose reason is one of :data:`REASONS` (dead-letter topics ``deadletter/<reason>``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import ValidationError

from actimesh.broker.codec import encode
from actimesh.broker.messages import DeviceState, Telemetry
from actimesh.errors import PayloadError

__all__ = ["MAX_ACCURACY_M", "REASONS", "Fix", "check_position", "telemetry_of"]

#: The largest accuracy a telemetry message carries (metres); worse is clamped to it.
MAX_ACCURACY_M = 100_000.0

#: Why an adapter refuses input (besides the codec's ``malformed``, ``invalid`` and
#: ``oversized``): the dead-letter reasons operators see.
REASONS = (
    "bad_checksum",  # an NMEA sentence whose checksum does not match
    "no_fix",  # the receiver says it has no position (RMC status V, GGA quality 0)
    "unauthorized",  # an HTTP request without the device's credentials
    "unregistered",  # a device id the adapter does not know
    "unsupported",  # a message type the adapter does not take (encrypted OwnTracks …)
    "over_rate",  # a source sending faster than its adapter's rate
)


@dataclass(frozen=True, slots=True)
class Fix:
    """One position of one device: UNIX seconds, degrees, metres (None: unknown),
    battery percent (None: not reported)."""

    ts: float
    lat: float
    lon: float
    acc: float | None = None
    batt: float | None = None


def check_position(lat: float, lon: float) -> None:
    """Refuse coordinates that are not finite or out of range (``invalid``)."""
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise PayloadError("invalid", "latitude and longitude must be finite numbers")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise PayloadError("invalid", f"position {lat!r}, {lon!r} is out of range")


def telemetry_of(fix: Fix, state: DeviceState = DeviceState.BUFFERING) -> bytes:
    """The msgpack telemetry a device with ``fix`` would publish itself. A tracker
    does not report a camera's state: ``buffering`` (on, not recording) by default.
    Accuracy worse than :data:`MAX_ACCURACY_M` is sent as that bound (it still says
    "far too coarse to rely on"); every other value is validated again by the engine."""
    acc = None if fix.acc is None else min(float(fix.acc), MAX_ACCURACY_M)
    batt = None if fix.batt is None else min(max(float(fix.batt), 0.0), 100.0)
    try:
        message = Telemetry(
            ts=float(fix.ts), state=state, lat=fix.lat, lon=fix.lon, acc=acc, batt=batt
        )
    except ValidationError as exc:
        raise PayloadError("invalid", f"not a valid telemetry: {exc.errors()[0]['msg']}") from None
    return encode(message)
