"""The protocols target: the device-protocol parsers (adapters/) on hostile input.

Each case picks a parser (OwnTracks JSON, an NMEA sentence, an OsmAnd query string, a
Traccar Client JSON body), starts from a published sample, and breaks it one way or
several: bit flips, cuts, splices, random bytes, a field given a hostile value
(NaN, 1e999, huge numbers, strings, nesting, control characters …). NMEA sentences are
signed again after most edits, so their checksum passes and the fields' own checks are
what is tested. The contract, as for the codec: each parser returns or raises a
:class:`~actimesh.errors.PayloadError` whose reason is one of :data:`PROTOCOL_REASONS`
and whose text is one printable line of at most 1,024 characters; a fix it accepts is
finite, in range, and becomes a valid telemetry (or is refused as ``invalid``).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

from actimesh.adapters import (
    Fix,
    NmeaAssembler,
    nmea_checksum,
    parse_osmand,
    parse_osmand_json,
    parse_owntracks,
    telemetry_of,
)
from actimesh.errors import PayloadError
from actimesh.fuzz._findings import _describe
from actimesh.fuzz._scenario import EPOCH

__all__ = ["PARSERS", "PROTOCOL_REASONS", "ProtocolChecker", "protocol_case"]

#: Every reason a protocol parser may give.
PROTOCOL_REASONS = frozenset(
    {"malformed", "invalid", "oversized", "unsupported", "bad_checksum", "no_fix", "unauthorized"}
)
_MAX_ERROR_TEXT = 1024

_SAMPLES: dict[str, tuple[bytes, ...]] = {
    "owntracks": (
        b'{"_type":"location","acc":12,"batt":92,"conn":"w","doze":false,'
        b'"lat":50.9326135,"lon":6.9464344,"tid":"et","tst":1489529135}',
        b'{"_type":"location","tid":"JJ","lat":48.85833,"lon":2.29513,"tst":1455959765,'
        b'"acc":65,"vel":0,"t":"u","inregions":["Home"]}',
        b'{"_type":"lwt","tst":1380738247}',
    ),
    "nmea": (
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
        b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
        b"$GNRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*49",
        b"$GNGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,*45",
        b"$GPGSV,2,1,08,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45*75",
    ),
    "osmand_query": (
        b"id=car-12&timestamp=1733500000&lat=51.0447&lon=-114.0719&speed=0.0&bearing=0.0"
        b"&altitude=1045.0&accuracy=4.5&batt=87.0",
        b"deviceid=car-12&location=51.0447,-114.0719&timestamp=2024-12-06T15:46:40Z&hdop=1.2",
    ),
    "osmand_json": (
        b'{"location":{"timestamp":"2024-12-06T15:46:40.000Z","coords":{"latitude":51.0447,'
        b'"longitude":-114.0719,"accuracy":4.5,"speed":0,"heading":-1,"altitude":1045},'
        b'"battery":{"level":0.87,"is_charging":false}},"device_id":"car-12"}',
    ),
}
#: The parsers, in report order.
PARSERS = tuple(_SAMPLES)

_HOSTILE = (
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1e308",
    "-0",
    "0",
    "",
    "999999999999999999999999",
    "1" + "0" * 400,
    "4.9e-324",
    "null",
    "true",
    '"51.0"',
    "[]",
    "{}",
    "[[[[]]]]",
    '"\\u0000"',
    "9" * 5000,
    "-91",
    "181",
    "0x1F",
    "1_000",
    " 1",
    "١٢٣",
    "\x00",
    "\x7f",
    "\u00e9",
)


def _flip(r: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(r.randint(1, 4)):
        if out:
            out[r.randrange(len(out))] ^= 1 << r.randrange(8)
    return bytes(out)


def _cut(r: random.Random, data: bytes) -> bytes:
    return data[: r.randrange(len(data) + 1)]


def _random_bytes(r: random.Random, _data: bytes) -> bytes:
    return r.randbytes(r.choice((0, 1, 8, 80, 200, 5000)))


def _splice(r: random.Random, data: bytes) -> bytes:
    other = r.choice([s for group in _SAMPLES.values() for s in group])
    return data[: r.randrange(len(data) + 1)] + other[r.randrange(len(other) + 1) :]


def _edit(r: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(r.randint(1, 6)):
        at = r.randrange(len(out) + 1)
        choice = r.random()
        if choice < 0.4 and out:
            del out[min(at, len(out) - 1)]
        elif choice < 0.8:
            out[at:at] = bytes([r.choice(b',.*$-+eE0123456789"{}[]:&=\r\n\x00\xff')])
        else:
            out[at:at] = r.choice(_HOSTILE).encode()
    return bytes(out)


def _field(r: random.Random, data: bytes, parser: str) -> bytes:
    """One field given a hostile value, in the protocol's own syntax."""
    hostile = r.choice(_HOSTILE)
    if parser == "nmea":
        body = data[1:].partition(b"*")[0].decode("ascii", "replace").split(",")
        body[r.randrange(len(body))] = hostile
        return ",".join(body).encode("utf-8", "replace")  # signed again by the caller
    if parser == "osmand_query":
        pairs = parse_qsl(data.decode(), keep_blank_values=True)
        at = r.randrange(len(pairs))
        pairs[at] = (pairs[at][0], hostile)
        return urlencode(pairs).encode()
    try:
        value = json.loads(hostile)
    except ValueError:
        value = hostile
    obj = json.loads(data)
    target = obj
    if parser == "osmand_json" and r.random() < 0.7:
        target = obj["location"]["coords"] if r.random() < 0.7 else obj["location"]
    target[r.choice(list(target))] = value
    return json.dumps(obj).encode()


def _nested(r: random.Random, data: bytes) -> bytes:
    depth = r.choice((10, 1000, 100_000))
    return b"[" * depth + data + b"]" * depth


_MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "flip": _flip,
    "cut": _cut,
    "random_bytes": _random_bytes,
    "splice": _splice,
    "edit": _edit,
    "nested": _nested,
}


def _sign(body: bytes) -> bytes:
    return b"$" + body + b"*" + f"{nmea_checksum(body):02X}".encode()


def protocol_case(seed: int, index: int) -> tuple[str, str, bytes]:
    """(parser, mutation, payload) of the ``index``-th protocol case of ``seed``."""
    r = random.Random(f"protocols:{seed}:{index}")
    parser = r.choice(PARSERS)
    data = r.choice(_SAMPLES[parser])
    mutation = r.choice(("valid", "field", "field", "field", *_MUTATIONS))
    if mutation == "valid":
        return parser, mutation, data
    if mutation == "field":
        data = _field(r, data, parser)
        return parser, mutation, _sign(data) if parser == "nmea" and r.random() < 0.9 else data
    data = _MUTATIONS[mutation](r, data)
    if parser == "nmea" and data.startswith(b"$") and b"*" in data and r.random() < 0.5:
        data = _sign(data[1:].rpartition(b"*")[0])
    return parser, mutation, data


class ProtocolChecker:
    """Runs each parser on a payload and says what the contract forbids in the outcome.

    The NMEA assembler is one for the run, as for one modem's stream: its memory of the
    last date and HDOP is exercised too."""

    def __init__(self) -> None:
        self._nmea = NmeaAssembler(clock=lambda: EPOCH)

    def _parse(self, parser: str, payload: bytes) -> Fix | None:
        if parser == "owntracks":
            return parse_owntracks(payload)
        if parser == "nmea":
            return self._nmea.feed(payload)
        if parser == "osmand_query":
            text = payload.decode("utf-8", "replace")
            return parse_osmand(dict(parse_qsl(text, max_num_fields=64)))[1]
        return parse_osmand_json(payload)[1]

    def check(self, parser: str, payload: bytes) -> tuple[str, list[tuple[str, str]]]:
        """The outcome (``ok``, ``none`` or the refusal's reason) and the problems."""
        try:
            fix = self._parse(parser, payload)
        except PayloadError as exc:
            return exc.reason, _unruly(parser, exc)
        except Exception as exc:  # noqa: BLE001 - any other exception is the finding
            # parse_qsl's own limit (more than 64 fields) is the listener's 400, not a crash.
            if parser == "osmand_query" and "Max number of fields" in str(exc):
                return "oversized", []
            return "crash", [("crash", f"{parser}: {_describe(exc)}")]
        if fix is None:
            return "none", []
        return "ok", _fix_problems(parser, fix)


def _unruly(parser: str, exc: PayloadError) -> list[tuple[str, str]]:
    text = str(exc)
    if exc.reason not in PROTOCOL_REASONS:
        return [("bad_error", f"{parser}: reason {exc.reason!r}")]
    if not text.isprintable() or len(text) > _MAX_ERROR_TEXT:
        return [("bad_error", f"{parser}: error text {text[:120]!r}")]
    return []


def _fix_problems(parser: str, fix: Fix) -> list[tuple[str, str]]:
    """What is wrong with a fix a parser accepted, if anything."""
    problems = []
    if not (
        math.isfinite(fix.lat)
        and math.isfinite(fix.lon)
        and -90 <= fix.lat <= 90
        and -180 <= fix.lon <= 180
        and math.isfinite(fix.ts)
        and (fix.acc is None or (math.isfinite(fix.acc) and fix.acc >= 0))
    ):
        problems.append(("bad_fix", f"{parser}: accepted {fix!r}"[:300]))
    try:
        telemetry_of(fix)
    except PayloadError as exc:
        if exc.reason != "invalid":
            problems.append(("bad_error", f"{parser}: telemetry refused as {exc.reason}"))
    except Exception as exc:  # noqa: BLE001 - any other exception is the finding
        problems.append(("crash", f"{parser}: telemetry_of: {_describe(exc)}"))
    return problems
