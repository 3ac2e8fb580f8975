"""NMEA 0183 position sentences, as in-car modems and GNSS receivers stream them.

Two sentences carry what the engine needs, from any constellation's talker (``GP`` GPS,
``GN`` multi-GNSS, ``GL``, ``GA``, ``GB``/``BD``, ``GQ``)::

    $GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A
    $GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47

* **RMC** (recommended minimum): UTC time, status (``A`` valid, ``V`` no fix), position,
  and the **date**, which no other of the two carries.
* **GGA** (fix data): UTC time, position, fix quality (0: none) and **HDOP**.

Every sentence must end in its checksum (``*`` and two hex digits, the XOR of every
byte between ``$`` and ``*``); one without, or with a wrong one, is refused
(``bad_checksum``): a line garbled on a serial link must not move a camera. Other
sentence types (GSV, GSA, VTG …) are ignored and counted.

**Accuracy from HDOP.** A receiver's horizontal error is about HDOP times its user
equivalent range error (UERE); this takes :data:`HDOP_FACTOR_M` = 5 m (a consumer
receiver's 1-sigma UERE), so HDOP 0.9 is reported as 4.5 m. An operator with better or
worse receivers sets ``[adapters.nmea] hdop_factor_m``. A device that sends RMC only
(no HDOP) reports no accuracy, as a device that does not know it.

**Timestamps from the sentence.** Time of day comes from the sentence, the date from the
last RMC (a GGA just after midnight gets the next day). Before any RMC, a GGA is dated
with the adapter's clock: the UTC day that puts its time of day nearest to now.

One fix per epoch (time of day): a receiver sends RMC and GGA for the same second, in
either order; the first with a usable position is published, with the latest HDOP.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass

from actimesh.adapters.fix import Fix, check_position
from actimesh.errors import PayloadError

__all__ = [
    "HDOP_FACTOR_M",
    "NMEA_MAX_LINE",
    "TALKERS",
    "Gga",
    "NmeaAssembler",
    "Rmc",
    "nmea_checksum",
    "parse_sentence",
]

#: Metres of horizontal error per unit of HDOP (see the module docstring).
HDOP_FACTOR_M = 5.0
#: NMEA 0183 allows 82 characters with ``$`` and CR LF; some receivers exceed it a bit.
NMEA_MAX_LINE = 120
#: Talker ids of satellite positioning systems.
TALKERS = frozenset({"GP", "GN", "GL", "GA", "GB", "BD", "GQ"})
#: An HDOP older than this (sentence time) is not used for a new fix.
_HDOP_FRESH_S = 10.0
_DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Rmc:
    """A valid RMC: seconds since UTC midnight, UTC date, degrees."""

    time_s: float
    date: dt.date
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Gga:
    """A GGA with a fix: seconds since UTC midnight, degrees, HDOP (None: empty)."""

    time_s: float
    lat: float
    lon: float
    hdop: float | None


def nmea_checksum(body: bytes) -> int:
    """The XOR of ``body`` (the bytes between ``$`` and ``*``)."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def _time_of_day(text: str) -> float:
    if len(text) < 6 or not text[:6].isdigit():
        raise PayloadError("invalid", f"time {text!r:.20} is not hhmmss")
    hours, minutes = int(text[0:2]), int(text[2:4])
    try:
        seconds = float(text[4:])
    except ValueError:
        raise PayloadError("invalid", f"time {text!r:.20} is not hhmmss.ss") from None
    if hours > 23 or minutes > 59 or not 0 <= seconds < 61:
        raise PayloadError("invalid", f"time {text!r:.20} is out of range")
    return hours * 3600 + minutes * 60 + seconds


def _date(text: str) -> dt.date:
    if len(text) != 6 or not text.isdigit():
        raise PayloadError("invalid", f"date {text!r:.20} is not ddmmyy")
    day, month, year = int(text[0:2]), int(text[2:4]), int(text[4:6])
    # Two-digit years: NMEA 0183 has no century; receivers of the 1980s-90s are gone.
    year += 2000 if year < 80 else 1900
    try:
        return dt.date(year, month, day)
    except ValueError:
        raise PayloadError("invalid", f"date {text!r} is not a calendar date") from None


def _coordinate(value: str, hemisphere: str, *, degree_digits: int) -> float:
    """``ddmm.mmmm`` (or ``dddmm.mmmm``) and ``N``/``S`` (``E``/``W``) in degrees."""
    head = value.split(".", 1)[0]
    if len(head) != degree_digits + 2 or not head.isdigit():
        raise PayloadError("invalid", f"coordinate {value!r:.20} is not (d)ddmm.mmmm")
    try:
        minutes = float(value[degree_digits:])
    except ValueError:
        raise PayloadError("invalid", f"coordinate {value!r:.20} is not a number") from None
    if not (math.isfinite(minutes) and minutes < 60):
        raise PayloadError("invalid", f"coordinate {value!r:.20} has minutes out of range")
    degrees = int(value[:degree_digits]) + minutes / 60
    signs = ("N", "S") if degree_digits == 2 else ("E", "W")
    if hemisphere not in signs:
        raise PayloadError("invalid", f"hemisphere {hemisphere!r:.5} is not {' or '.join(signs)}")
    return -degrees if hemisphere == signs[1] else degrees


def _position(fields: list[str], at: int) -> tuple[float, float]:
    lat = _coordinate(fields[at], fields[at + 1], degree_digits=2)
    lon = _coordinate(fields[at + 2], fields[at + 3], degree_digits=3)
    check_position(lat, lon)
    return lat, lon


def _fields(line: bytes) -> list[str]:
    """The comma-separated fields of a checked sentence (the address first)."""
    if len(line) > NMEA_MAX_LINE:
        raise PayloadError("oversized", f"{len(line)} bytes is over the {NMEA_MAX_LINE} limit")
    line = line.rstrip(b"\r\n")
    if not line.startswith(b"$"):
        raise PayloadError("malformed", "an NMEA sentence starts with '$'")
    body, star, tail = line[1:].rpartition(b"*")
    if not star or len(tail) != 2:
        raise PayloadError("bad_checksum", "the sentence has no *hh checksum")
    try:
        given = int(tail, 16)
    except ValueError:
        raise PayloadError("bad_checksum", f"checksum {tail!r} is not hex") from None
    if nmea_checksum(body) != given:
        raise PayloadError(
            "bad_checksum", f"checksum is {nmea_checksum(body):02X}, the sentence says {given:02X}"
        )
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise PayloadError("malformed", "an NMEA sentence is printable ASCII") from None
    if not text.isprintable():
        raise PayloadError("malformed", "an NMEA sentence is printable ASCII")
    return text.split(",")


def parse_sentence(line: bytes) -> Rmc | Gga | None:
    """An RMC or GGA with a position; None for a checked sentence of another type.

    Raises :class:`~actimesh.errors.PayloadError`: ``oversized``, ``malformed``,
    ``bad_checksum``, ``invalid`` (a field out of range), ``no_fix`` (RMC status ``V``
    or mode ``N``, GGA quality 0, or empty position fields).
    """
    fields = _fields(line)
    address = fields[0]
    if len(address) != 5 or address[:2] not in TALKERS or address[2:] not in ("RMC", "GGA"):
        return None
    if address[2:] == "RMC":
        if len(fields) < 10:
            raise PayloadError("invalid", f"RMC has {len(fields)} fields, at least 10 expected")
        mode = fields[12] if len(fields) > 12 else ""
        if fields[2] != "A" or mode == "N" or not fields[3]:
            raise PayloadError("no_fix", "RMC status says no valid fix")
        lat, lon = _position(fields, 3)
        return Rmc(_time_of_day(fields[1]), _date(fields[9]), lat, lon)
    if len(fields) < 9:
        raise PayloadError("invalid", f"GGA has {len(fields)} fields, at least 9 expected")
    if fields[6] in ("", "0") or not fields[2]:
        raise PayloadError("no_fix", "GGA fix quality says no fix")
    if not fields[6].isdigit():
        raise PayloadError("invalid", f"GGA fix quality {fields[6]!r:.10} is not a digit")
    lat, lon = _position(fields, 2)
    hdop = None
    if fields[8]:
        try:
            hdop = float(fields[8])
        except ValueError:
            raise PayloadError("invalid", f"HDOP {fields[8]!r:.20} is not a number") from None
        if not (math.isfinite(hdop) and 0 <= hdop <= 100):
            raise PayloadError("invalid", f"HDOP {fields[8]!r:.20} is out of range")
    return Gga(_time_of_day(fields[1]), lat, lon, hdop)


def _midnight(date: dt.date) -> float:
    return dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp()


class NmeaAssembler:
    """One source's sentences in, at most one :class:`Fix` per epoch out.

    Holds the last RMC date and the last HDOP of one receiver, so use one per device.
    """

    def __init__(self, *, hdop_factor_m: float = HDOP_FACTOR_M, clock: Callable[[], float]) -> None:
        self._factor = hdop_factor_m
        self._clock = clock
        self._date: float | None = None  # UNIX time of the last RMC's midnight
        self._hdop: tuple[float, float] | None = None  # (when, HDOP)
        self._last_ts: float | None = None
        #: Checked sentences of types not used (GSV, VTG …).
        self.ignored = 0

    def feed(self, line: bytes) -> Fix | None:
        """The fix ``line`` completes, or None. Raises what :func:`parse_sentence` does."""
        sentence = parse_sentence(line)
        if sentence is None:
            self.ignored += 1
            return None
        if isinstance(sentence, Rmc):
            self._date = _midnight(sentence.date)
            ts = self._date + sentence.time_s
        else:
            ts = self._dated(sentence.time_s)
            if sentence.hdop is not None:
                self._hdop = (ts, sentence.hdop)
        if ts == self._last_ts:
            return None  # this epoch's fix has gone out with its other sentence
        self._last_ts = ts
        acc = None
        if self._hdop is not None and abs(ts - self._hdop[0]) <= _HDOP_FRESH_S:
            acc = self._hdop[1] * self._factor
        return Fix(ts=ts, lat=sentence.lat, lon=sentence.lon, acc=acc)

    def _dated(self, time_s: float) -> float:
        """UNIX time of a GGA's time of day: on the last RMC's date (the next day if it
        is much earlier in the day: midnight passed), else the clock's nearest day."""
        if self._date is not None:
            ts = self._date + time_s
            if self._last_ts is not None and ts < self._last_ts - _DAY_S / 2:
                ts += _DAY_S
            return ts
        now = self._clock()
        midnight = now - now % _DAY_S
        candidates = (midnight - _DAY_S + time_s, midnight + time_s, midnight + _DAY_S + time_s)
        return min(candidates, key=lambda ts: abs(ts - now))
