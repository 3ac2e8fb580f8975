"""OwnTracks: the phone app's MQTT ``location`` messages, read by the engine's intake.

The app publishes JSON on ``owntracks/<user>/<device>`` (its ``pubTopicBase``,
``owntracks/%u/%d``), with ``%u`` its MQTT username. An officer's phone logs in to the
broker with the registry account of the device it tracks, so the ``<user>`` level *is*
the device id: the broker lets each device account publish on ``owntracks/<its id>/+``
only (security/acl.py), exactly as it pins ``am/v1/<agency>/dev/<its id>/telemetry``.
The ``<device>`` level (the phone's name) is not used.

A ``location`` is a fix (``lat``, ``lon``, ``tst`` seconds, ``acc`` metres, ``batt``
percent; see https://owntracks.org/booklet/tech/json/); ``lwt`` (the broker's last will
for the app) is accepted and ignored; every other ``_type`` on that topic is refused as
``unsupported``, and so is an ``encrypted`` payload (the engine holds no app's key).
Fields the engine does not use (``vel``, ``tid``, ``conn``, ``inregions`` …) are allowed,
since the apps add new ones; the ones it uses are checked strictly (numbers, not strings
or booleans; finite; in range).
"""

from __future__ import annotations

import json
import math

from actimesh.adapters.fix import Fix, check_position
from actimesh.broker.topics import is_identifier
from actimesh.errors import PayloadError

__all__ = [
    "OWNTRACKS_FILTER",
    "OWNTRACKS_MAX_BYTES",
    "OWNTRACKS_ROOT",
    "owntracks_device",
    "owntracks_topic",
    "parse_owntracks",
]

OWNTRACKS_ROOT = "owntracks"
#: What the engine subscribes to: every user's every device, one level each.
OWNTRACKS_FILTER = f"{OWNTRACKS_ROOT}/+/+"
#: A location is about 300 bytes; a card with a picture is what would be large.
OWNTRACKS_MAX_BYTES = 4096
_HEAD = f"{OWNTRACKS_ROOT}/".encode()


def owntracks_topic(device_id: str, phone: str = "phone") -> str:
    """The topic the app of ``device_id`` publishes locations on."""
    return f"{OWNTRACKS_ROOT}/{device_id}/{phone}"


def owntracks_device(topic: bytes) -> str:
    """The device id an OwnTracks topic names (its user level); ``bad_topic`` if it is
    not ``owntracks/<device id>/<phone>``."""
    parts = topic[len(_HEAD) :].split(b"/") if topic.startswith(_HEAD) else []
    if len(parts) == 2:
        try:
            device_id = parts[0].decode()
        except UnicodeDecodeError:
            device_id = ""
        if is_identifier(device_id) and parts[1]:
            return device_id
    raise PayloadError("bad_topic", "not an owntracks/<device id>/<phone> topic")


def _number(obj: dict[str, object], key: str, *, required: bool) -> float | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    # bool is an int in Python: "lat": true is not a latitude.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError("invalid", f"location: {key} must be a number, got {value!r}"[:200])
    try:
        number = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        number = math.inf
    if not math.isfinite(number):
        raise PayloadError("invalid", f"location: {key} must be finite")
    return number


def parse_owntracks(payload: bytes) -> Fix | None:
    """The fix of an OwnTracks ``location`` payload; None for ``lwt`` (nothing to do).

    Raises :class:`~actimesh.errors.PayloadError` (``oversized``, ``malformed``,
    ``invalid``, ``unsupported``) for anything else.
    """
    if len(payload) > OWNTRACKS_MAX_BYTES:
        raise PayloadError(
            "oversized", f"{len(payload)} bytes is over the {OWNTRACKS_MAX_BYTES} limit"
        )
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("malformed", f"not valid JSON ({type(exc).__name__})") from None
    if type(obj) is not dict:
        raise PayloadError("malformed", f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("_type")
    if kind == "lwt":
        return None
    if kind != "location":
        shown = kind if isinstance(kind, str) else type(kind).__name__
        raise PayloadError("unsupported", f"OwnTracks _type {shown!r:.40} is not taken here")
    lat, lon, tst = (_number(obj, key, required=True) or 0.0 for key in ("lat", "lon", "tst"))
    check_position(lat, lon)
    if tst <= 0:
        raise PayloadError("invalid", f"location: tst {tst!r} is not a UNIX time")
    acc = _number(obj, "acc", required=False)
    if acc is not None and acc < 0:
        raise PayloadError("invalid", f"location: acc {acc!r} is negative")
    batt = _number(obj, "batt", required=False)
    if batt is not None and not 0 <= batt <= 100:
        batt = None  # some phones report -1 for "unknown": not worth refusing a fix for
    return Fix(ts=tst, lat=lat, lon=lon, acc=acc, batt=batt)
