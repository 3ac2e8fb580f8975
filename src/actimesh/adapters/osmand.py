"""The OsmAnd protocol (Traccar Client, OsmAnd, many in-car routers) over HTTP.

A device reports a fix as query parameters, by ``GET`` or ``POST``::

    GET /?id=car-12&lat=51.0447&lon=-114.0719&timestamp=1733500000&accuracy=4.5

or as a form body (``application/x-www-form-urlencoded``) with the same names, or as
the JSON body newer Traccar Client versions send::

    {"device_id": "car-12", "location": {"timestamp": "2024-12-06T15:46:40Z",
     "coords": {"latitude": 51.0447, "longitude": -114.0719, "accuracy": 4.5},
     "battery": {"level": 0.8}}}

Names taken: ``id`` (or ``deviceid``), ``lat`` and ``lon`` (or ``location=lat,lon``),
``timestamp`` (UNIX seconds, milliseconds, or ISO 8601 UTC), ``accuracy`` in metres
(else ``hdop`` times ``hdop_factor_m``), ``batt`` percent. Everything else (``speed``,
``bearing``, ``altitude`` …) is accepted and not used. A fix without a timestamp is
refused: a router that buffered its fixes in a tunnel would otherwise place a car where
it was minutes ago, as if it were there now.

**Who is calling.** HTTP Basic authentication with the device's own broker account
(username: device id; password: the one ``actimesh devices add`` printed), checked
against the registry's hash. The device id is the username; an ``id`` parameter, if
sent, must be the same. So one device's credentials can move that device only, as on
MQTT. Without credentials: 401 (and a ``WWW-Authenticate`` challenge).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from actimesh.adapters.fix import Fix, check_position
from actimesh.adapters.nmea import HDOP_FACTOR_M
from actimesh.adapters.sink import FixSink
from actimesh.broker.topics import is_identifier
from actimesh.errors import PayloadError

__all__ = [
    "OSMAND_MAX_BODY",
    "DeviceAuth",
    "basic_credentials",
    "create_osmand_app",
    "parse_osmand",
    "parse_osmand_json",
]

#: A report is a few hundred bytes; anything much larger is not one.
OSMAND_MAX_BODY = 4096
_PROTOCOL = "osmand"


class DeviceAuth(Protocol):
    """Checks a device's own password (the registry does: ``Registry.check_password``)."""

    async def check(self, device_id: str, password: str) -> bool: ...


def _number(params: Mapping[str, str], key: str) -> float | None:
    text = params.get(key)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise PayloadError("invalid", f"{key} {text!r:.40} is not a number") from None
    if not math.isfinite(value):
        raise PayloadError("invalid", f"{key} must be finite")
    return value


def _timestamp(text: str) -> float:
    """UNIX seconds or milliseconds, or ISO 8601 (UTC when it names no zone)."""
    try:
        value = float(text)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text.replace(" ", "T", 1))
        except ValueError:
            raise PayloadError(
                "invalid", f"timestamp {text!r:.40} is neither UNIX time nor ISO 8601"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()
    if not math.isfinite(value) or value <= 0:
        raise PayloadError("invalid", f"timestamp {text!r:.40} is not a UNIX time")
    # Traccar Client sends milliseconds in some versions: 1e11 s is the year 5138.
    return value / 1000 if value > 1e11 else value


def parse_osmand(
    params: Mapping[str, str], *, hdop_factor_m: float = HDOP_FACTOR_M
) -> tuple[str | None, Fix]:
    """The device id a report names (None: none named) and its fix.

    Raises :class:`~actimesh.errors.PayloadError` (``invalid``) for a missing or bad
    position or timestamp.
    """
    device_id = params.get("id") or params.get("deviceid") or None
    lat, lon = _number(params, "lat"), _number(params, "lon")
    if (lat is None or lon is None) and params.get("location"):
        parts = params["location"].split(",")
        if len(parts) != 2:
            raise PayloadError("invalid", "location must be lat,lon")
        lat, lon = _number({"v": parts[0]}, "v"), _number({"v": parts[1]}, "v")
    if lat is None or lon is None:
        raise PayloadError("invalid", "lat and lon (or location=lat,lon) are required")
    check_position(lat, lon)
    stamp = params.get("timestamp")
    if not stamp:
        raise PayloadError("invalid", "timestamp is required (the time of the fix)")
    acc = _number(params, "accuracy")
    if acc is None:
        hdop = _number(params, "hdop")
        acc = None if hdop is None else hdop * hdop_factor_m
    if acc is not None and not 0 <= acc < math.inf:
        raise PayloadError("invalid", f"accuracy {acc!r} is not a distance in metres")
    batt = _number(params, "batt")
    if batt is not None and not 0 <= batt <= 100:
        batt = None
    return device_id, Fix(ts=_timestamp(stamp), lat=lat, lon=lon, acc=acc, batt=batt)


def parse_osmand_json(body: bytes) -> tuple[str | None, Fix]:
    """Traccar Client's JSON report (see the module docstring), as :func:`parse_osmand`."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("malformed", f"not valid JSON ({type(exc).__name__})") from None
    location = obj.get("location") if isinstance(obj, dict) else None
    coords = location.get("coords") if isinstance(location, dict) else None
    if not isinstance(obj, dict) or not isinstance(location, dict) or not isinstance(coords, dict):
        raise PayloadError("malformed", "expected {device_id, location: {timestamp, coords}}")
    battery = location.get("battery")
    level = battery.get("level") if isinstance(battery, dict) else None
    params: dict[str, str] = {}
    for key, value in (
        ("id", obj.get("device_id")),
        ("lat", coords.get("latitude")),
        ("lon", coords.get("longitude")),
        ("accuracy", coords.get("accuracy")),
        ("timestamp", location.get("timestamp")),
        # Traccar Client reports the level as a fraction of 1.
        ("batt", level * 100 if isinstance(level, (int, float)) else None),
    ):
        if isinstance(value, bool) or (
            value is not None and not isinstance(value, (str, int, float))
        ):
            raise PayloadError("invalid", f"{key} must be a string or a number")
        if value is not None:
            params[key] = str(value)
    return parse_osmand(params)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(username, password) of an ``Authorization: Basic`` header, or None."""
    if header is None or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def create_osmand_app(
    *, auth: DeviceAuth, sink: FixSink, hdop_factor_m: float = HDOP_FACTOR_M
) -> Starlette:
    """The OsmAnd listener's ASGI app: ``GET``/``POST /`` (also any path: some clients
    append one), authenticated, each fix handed to ``sink``."""

    async def report(request: Request) -> Response:
        origin = f"{_PROTOCOL}://{request.client.host if request.client else '?'}"
        creds = basic_credentials(request.headers.get("authorization"))
        if creds is None or not is_identifier(creds[0]):
            sink.reject(origin, b"", PayloadError("unauthorized", "no Basic credentials"))
            return PlainTextResponse(
                "unauthorized: send the device id and its password (HTTP Basic)\n",
                401,
                {"WWW-Authenticate": 'Basic realm="actimesh"'},
            )
        device_id, password = creds
        origin = f"{_PROTOCOL}://{device_id}@{origin.removeprefix(_PROTOCOL + '://')}"
        if not await auth.check(device_id, password):
            sink.reject(origin, b"", PayloadError("unauthorized", "wrong device id or password"))
            return PlainTextResponse("unauthorized: wrong device id or password\n", 401)
        body = b""
        try:
            if request.method == "POST":
                body = await _body(request)
            fix = _parse_request(request, body, device_id, hdop_factor_m)
        except PayloadError as exc:
            sink.reject(origin, body or str(request.url.query).encode(), exc)
            status = {"unauthorized": 403, "oversized": 413}.get(exc.reason, 400)
            return PlainTextResponse(f"{exc.reason}: {exc.detail}\n", status)
        if not sink.submit(_PROTOCOL, device_id, fix, origin):
            return PlainTextResponse("not accepted now: try again later\n", 429)
        return PlainTextResponse("OK\n")

    routes = [Route("/", report, methods=["GET", "POST"])]
    routes.append(Route("/{path:path}", report, methods=["GET", "POST"]))
    return Starlette(routes=routes)


def _parse_request(request: Request, body: bytes, device_id: str, hdop_factor_m: float) -> Fix:
    """The fix of a report from ``device_id`` (query, form or JSON body)."""
    params = dict(request.query_params)
    if body and request.headers.get("content-type", "").startswith("application/json"):
        named, fix = parse_osmand_json(body)
    else:
        if body:
            params.update(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=64))
        named, fix = parse_osmand(params, hdop_factor_m=hdop_factor_m)
    if named is not None and named != device_id:
        raise PayloadError("unauthorized", f"id {named!r:.64} is not the account's")
    return fix


async def _body(request: Request) -> bytes:
    """The request body, refused as ``oversized`` beyond :data:`OSMAND_MAX_BODY`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > OSMAND_MAX_BODY:
            raise PayloadError("oversized", f"a report is at most {OSMAND_MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
