"""Raw msgpack, byte by byte, and the hostile values the generators put into payloads."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack

from actimesh.fuzz._scenario import INBOUND

# Structure-aware generators work on a payload's (packed key, packed value) pairs, so
# that bytes a packer would never write (repeated keys, bad UTF-8, lying lengths, odd
# NaNs) can be put anywhere.

Pairs = list[tuple[bytes, bytes]]


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _header(n: int, fix: int, codes: tuple[int, int]) -> bytes:
    if n < 16:
        return bytes((fix | n,))
    if n < 0x10000:
        return bytes((codes[0],)) + n.to_bytes(2, "big")
    return bytes((codes[1],)) + n.to_bytes(4, "big")


def _map_header(n: int) -> bytes:
    return _header(n, 0x80, (0xDE, 0xDF))


def _array_header(n: int) -> bytes:
    return _header(n, 0x90, (0xDC, 0xDD))


def _str_raw(data: bytes) -> bytes:
    """A msgpack str holding ``data`` as it is (valid UTF-8 or not)."""
    n = len(data)
    if n < 32:
        return bytes((0xA0 | n,)) + data
    if n < 0x100:
        return b"\xd9" + bytes((n,)) + data
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big") + data
    return b"\xdb" + n.to_bytes(4, "big") + data


def _join(pairs: Pairs) -> bytes:
    return _map_header(len(pairs)) + b"".join(k + v for k, v in pairs)


_NAN_RAW = (
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # quiet NaN
    b"\xcb\xff\xf8\x00\x00\x00\x00\x00\x00",  # negative NaN
    b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x01",  # signalling NaN
    b"\xca\x7f\xc0\x00\x00",  # float32 NaN
    b"\xca\x7f\x80\x00\x00",  # float32 +inf
    b"\xca\xff\x80\x00\x00",  # float32 -inf
    _pack(math.inf),
    _pack(-math.inf),
    _pack(math.nan),
)
_BIG_INTS = (
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # 2**64 - 1
    b"\xcf\x80\x00\x00\x00\x00\x00\x00\x00",  # 2**63
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # -2**63
    b"\xd3\x7f\xff\xff\xff\xff\xff\xff\xff",  # 2**63 - 1
    b"\xcf" + b"\xff" * 16,  # a "128-bit integer": msgpack has none, 8 bytes trail
    b"\xc7\x10\x01" + b"\xff" * 16,  # a bignum as an extension type
    b"\xd3\xff\xff\xff\xff\xff\xff\xff\xff",  # -1 in 64 bits
    b"\xd0\x80",  # -128 in 8 bits
)
_CONFUSED: tuple[Any, ...] = (
    "1750000000.0",
    "",
    "NaN",
    "true",
    "1",
    "0x1",
    b"",
    b"\x01",
    0,
    1,
    -1,
    2**31,
    0.0,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    True,
    False,
    None,
    (),
    (1.0,),
    {},
    {"v": 1},
    "x" * 70,
    "\u0000",
    [[[]]],
)
_INVALID_UTF8 = (
    b"\xff",
    b"\xfe\xff",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"ok\x80",
    b"\xf8\x88\x80\x80\x80",
    b"taser_draw\xc3",
)
_ODD_KEYS = (
    "sender",
    "kind",
    "__class__",
    "model_config",
    "__proto__",
    "V",
    "v ",
    "",
    "\u0000",
    "a\nb",
    "\u202egnp.exe",
    "ts\x00",
    "x" * 300,
    "\U0001f600",
    "lat.lon",
)
#: Not identifiers; the first 13 are short enough for any topic.
_BAD_IDS = (
    "",
    "-a",
    "_a",
    "a b",
    "a/b",
    "+",
    "#",
    "x" * 65,
    "é",
    "a\u0000b",
    "..",
    "a\nb",
    "$SYS",
    "a" * 10_000,
    "\u202e",
    "fz-bwc-1 ",
)
_BAD_TYPES = (
    "",
    "Taser_draw",
    "taser-draw",
    "a" * 33,
    "taser_draw ",
    "0abc",
    "alien_landing",
    "TASER_DRAW",
    "taser_draw\x00",
)
_ENUM_JUNK = (
    "OFF",
    "",
    "recording ",
    "off\x00",
    "x" * 300,
    "Recording",
    "activated",
    "stop",
    "delete",
)
_RANGES: dict[str, tuple[float, ...]] = {
    "lat": (90.0, -90.0, 90.0000001, -90.0000001, 91.0, -91.0, 1e9, -0.0),
    "lon": (180.0, -180.0, 180.0000001, -180.0000001, 181.0, -181.0, 360.0),
    "acc": (0.0, -0.0, -1e-9, -1.0, 100_000.0, 100_000.1, 1e300),
    "batt": (100.0, 100.01, -0.01, 0.0),
    "radius": (0.0, 1e-9, 1000.0, 1000.0001, -9.144),
    "pre": (120.0, 120.1, -0.1),
    "pre_cov": (120.0, 120.1, -0.1),
    "pre_roll": (120.0, 121.0),
    "dist": (100_000.0, 100_000.1, -1.0),
}
_TS_OFFSETS = (
    -1e9,
    -86_400.0,
    -1801.0,
    -1800.5,
    -1799.5,
    -60.0,
    0.0,
    9.5,
    10.5,
    11.0,
    3600.0,
    1e6,
    1e9,
)
_TS_ABSOLUTE = (0.0, -1.0, -0.0, 5e-324, 4_102_444_800.0, 4_102_444_800.001, 1e300)
_LIES = (
    b"\xdf\xff\xff\xff\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\xc9\xff\xff\xff\xff\x01",
    b"\xde\xff\xff",
    b"\xdc\x00\x10",
)
_BAD_KEYS = (
    b"\x01",
    b"\xc0",
    b"\xc4\x01v",
    b"\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00",
    b"\x91\x01",
    b"\x80",
    b"\xc3",
)
_STRINGS = (
    "off",
    "buffering",
    "recording",
    "received",
    "refused",
    "taser_draw",
    "body_cam",
    "power_off",
    "fz-bwc-1",
    "e-1",
    "paired",
    "1",
)
_FLOAT32 = tuple(struct.pack(">Bf", 0xCA, v) for v in (1.5, -0.0, 3.4e38))
_CONFUSERS = tuple(_pack(v) for v in _CONFUSED) + _FLOAT32
_FIELDS = {m: tuple(m.model_fields) for m in INBOUND}
_ALL_FIELDS = tuple(sorted({f for names in _FIELDS.values() for f in names}))
