"""Hostile-input fuzzing of the codec and the trigger engine's intake (``actimesh fuzz``).

Seeded, reproducible payloads are held to the contract of docs/FUZZING.md by two targets:

* **codec**: every payload is decoded as each inbound model (Telemetry, Presence, Event,
  Ack, and Command for the devices) and by ``decode_telemetry``. Each decode returns a
  model or raises a :class:`PayloadError` whose reason is one of ``codec.REASONS`` and
  whose text is one printable line of bounded length; ``decode_telemetry`` agrees with
  ``decode(Telemetry, …)``; an accepted model re-encodes to itself.
* **intake**: the same payloads, on device topics of every channel and on bad topics, go
  through a real :class:`~actimesh.triggers.engine.Engine` (real rules, index, storm
  control and a ledger on a temporary SQLite file; a recording stand-in for its MQTT
  link) the way its links hand them over. No exception may escape; each input is
  accepted, ignored or rejected as an oracle built from the codec and the topic scheme
  says (the engine may also refuse valid input by policy: sender, rate, storm); every
  rejection is counted in ``engine.stats.rejected`` and dead-lettered once; every control
  message is acknowledged once; what the engine publishes decodes; its state stays
  bounded; memory stops growing after warm-up; and afterwards a taser draw still
  activates every camera around it.

Case ``i`` of seed ``s`` has a ``Random`` of its own, so a finding is replayed with
``actimesh fuzz --seed s --replay i`` whatever the count of the run that found it.

Hypothesis drives the codec checks in the test suite (tests/test_fuzz.py) but not this
run: its recursive strategies made about 130 payloads a second on the project's 2-core
machine, the generators below about 30,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import struct
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import aiomqtt
import msgpack

from actimesh.broker.client import MqttLink
from actimesh.broker.codec import (
    MAX_ACTIVATION_BYTES,
    MAX_PAYLOAD_BYTES,
    REASONS,
    check_clock,
    decode,
    decode_telemetry,
    encode,
)
from actimesh.broker.messages import (
    Ack,
    Activation,
    Alert,
    Command,
    Confirmation,
    ConfirmStatus,
    DeadLetter,
    DeviceKind,
    DeviceState,
    Event,
    Message,
    Presence,
    Telemetry,
)
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.errors import PayloadError
from actimesh.geofence import InclusionPolicy
from actimesh.security.signing import CommandSigner
from actimesh.triggers.engine import Engine
from actimesh.triggers.fanout import activation_id
from actimesh.triggers.ledger import Ledger
from actimesh.triggers.rules import DEFAULT_RULES, RuleTable
from actimesh.triggers.settings import EngineSettings

__all__ = [
    "ENGINE_REASONS",
    "GENERATORS",
    "INBOUND",
    "Case",
    "CaseGenerator",
    "Finding",
    "FuzzReport",
    "FuzzSettings",
    "check_codec",
    "run_fuzz",
]

Target = Literal["codec", "intake", "all"]

#: The inbound payload models: the engine's intake and, for Command, the devices'.
INBOUND: tuple[type[Message], ...] = (Telemetry, Presence, Event, Ack, Command)
#: Reasons the engine adds to the codec's own: a foreign topic, a clock, an unknown rule.
ENGINE_REASONS = frozenset({"bad_topic", "bad_time", "future", "too_old", "unknown_event_type"})
_KNOWN_REASONS = REASONS | ENGINE_REASONS

#: The fuzz clock: case ``i`` is fed at ``EPOCH + i * STEP_S``. Deterministic, and slow
#: enough that commands expire and rate budgets refill during a run, as they would live.
EPOCH = 1_750_000_000.0
STEP_S = 0.01
AGENCY = "fuzz"
CENTER = (51.0447, -114.0719)
#: The fuzzed fleet. Device topics name only these: an unregistered id is the broker
#: ACL's to refuse, and the engine keeps a record of every device it hears from.
POOL: tuple[tuple[str, DeviceKind], ...] = (
    ("fz-bwc-1", DeviceKind.BODY_CAM),
    ("fz-bwc-2", DeviceKind.BODY_CAM),
    ("fz-bwc-3", DeviceKind.BODY_CAM),
    ("fz-dash-1", DeviceKind.DASH_CAM),
    ("fz-rear-1", DeviceKind.REAR_CAM),
    ("fz-gw-1", DeviceKind.GATEWAY),
    ("fz-cew-1", DeviceKind.CEW),
    ("fz-cew-2", DeviceKind.CEW),
)
_KINDS = dict(POOL)
_CAMERA_KINDS = (DeviceKind.BODY_CAM, DeviceKind.DASH_CAM, DeviceKind.REAR_CAM)
_CAMERAS = frozenset(d for d, k in POOL if k in _CAMERA_KINDS)
#: Event ids per device: most valid events are repeats, as on a real mesh.
_EIDS = 64
_ENGINE_CHANNELS = (
    DeviceChannel.TELEMETRY,
    DeviceChannel.EVENT,
    DeviceChannel.PRESENCE,
    DeviceChannel.ACK,
)
_HOME: dict[type[Message], DeviceChannel] = {
    Telemetry: DeviceChannel.TELEMETRY,
    Presence: DeviceChannel.PRESENCE,
    Event: DeviceChannel.EVENT,
    Ack: DeviceChannel.ACK,
}
#: A PayloadError is one line of at most this many characters (a dead letter's detail).
_MAX_ERROR_TEXT = 1024

# ---------------------------------------------------------------------------- raw msgpack
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


# fmt: off
_NAN_RAW = (
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # quiet NaN
    b"\xcb\xff\xf8\x00\x00\x00\x00\x00\x00",  # negative NaN
    b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x01",  # signalling NaN
    b"\xca\x7f\xc0\x00\x00",  # float32 NaN
    b"\xca\x7f\x80\x00\x00",  # float32 +inf
    b"\xca\xff\x80\x00\x00",  # float32 -inf
    _pack(math.inf), _pack(-math.inf), _pack(math.nan),
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
    "1750000000.0", "", "NaN", "true", "1", "0x1", b"", b"\x01", 0, 1, -1, 2**31, 0.0, -0.0,
    1e308, -1e308, 5e-324, True, False, None, (), (1.0,), {}, {"v": 1}, "x" * 70, "\u0000",
    [[[]]],
)
_INVALID_UTF8 = (
    b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    b"\xe2\x82", b"ok\x80", b"\xf8\x88\x80\x80\x80", b"taser_draw\xc3",
)
_ODD_KEYS = (
    "sender", "kind", "__class__", "model_config", "__proto__", "V", "v ", "", "\u0000",
    "a\nb", "\u202egnp.exe", "ts\x00", "x" * 300, "\U0001f600", "lat.lon",
)
#: Not identifiers; the first 13 are short enough for any topic.
_BAD_IDS = (
    "", "-a", "_a", "a b", "a/b", "+", "#", "x" * 65, "é", "a\u0000b", "..", "a\nb", "$SYS",
    "a" * 10_000, "\u202e", "fz-bwc-1 ",
)
_BAD_TYPES = (
    "", "Taser_draw", "taser-draw", "a" * 33, "taser_draw ", "0abc", "alien_landing",
    "TASER_DRAW", "taser_draw\x00",
)
_ENUM_JUNK = (
    "OFF", "", "recording ", "off\x00", "x" * 300, "Recording", "activated", "stop", "delete",
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
    -1e9, -86_400.0, -1801.0, -1800.5, -1799.5, -60.0, 0.0, 9.5, 10.5, 11.0, 3600.0, 1e6, 1e9,
)
_TS_ABSOLUTE = (0.0, -1.0, -0.0, 5e-324, 4_102_444_800.0, 4_102_444_800.001, 1e300)
_LIES = (
    b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xde\xff\xff", b"\xdc\x00\x10",
)
_BAD_KEYS = (
    b"\x01", b"\xc0", b"\xc4\x01v", b"\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", b"\x91\x01",
    b"\x80", b"\xc3",
)
_STRINGS = (
    "off", "buffering", "recording", "received", "refused", "taser_draw", "body_cam",
    "power_off", "fz-bwc-1", "e-1", "paired", "1",
)
_FLOAT32 = tuple(struct.pack(">Bf", 0xCA, v) for v in (1.5, -0.0, 3.4e38))
# fmt: on
_CONFUSERS = tuple(_pack(v) for v in _CONFUSED) + _FLOAT32
_FIELDS = {m: tuple(m.model_fields) for m in INBOUND}
_ALL_FIELDS = tuple(sorted({f for names in _FIELDS.values() for f in names}))


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True, slots=True)
class Case:
    """One fuzz input: where it goes and what it carries."""

    index: int
    generator: str
    #: The model the payload was made from (for random bytes, one picked at random).
    model: type[Message]
    #: The intake it goes to: telemetry to the telemetry handler, the rest to control.
    channel: DeviceChannel
    topic: bytes
    payload: bytes
    #: The fuzz clock when this case is fed to the engine.
    now: float

    @property
    def topic_text(self) -> str:
        return self.topic.decode(errors="replace")


@dataclass(slots=True)
class _Ctx:
    r: random.Random
    model: type[Message]
    base: dict[str, Any]
    now: float
    device: str

    def pairs(self) -> Pairs:
        return [(_pack(k), _pack(v)) for k, v in self.base.items()]

    def valid(self) -> bytes:
        return _pack(self.base)

    def field(self, names: tuple[str, ...] = ()) -> str:
        """One of ``names`` (any field when empty), preferring those the payload has."""
        present = [n for n in names if n in self.base] if names else list(self.base)
        if present:
            return self.r.choice(present)
        own = [n for n in names if n in _FIELDS[self.model]]
        return self.r.choice(own or list(_FIELDS[self.model]))

    def replace(self, name: str, value: bytes) -> bytes:
        """The payload with field ``name`` set to the raw msgpack ``value``."""
        key = _pack(name)
        return _join([*((k, v) for k, v in self.pairs() if k != key), (key, value)])


def _random_value(r: random.Random, depth: int = 0) -> Any:
    """A random msgpack value, recursive like hypothesis's ``st.recursive``."""
    leaves: tuple[Callable[[], Any], ...] = (
        lambda: None,
        lambda: r.random() < 0.5,
        lambda: r.choice((0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, r.randrange(2**64))),
        lambda: r.choice(
            (
                r.uniform(-200, 200),
                math.nan,
                math.inf,
                -math.inf,
                -0.0,
                5e-324,
                sys.float_info.max,
                EPOCH + r.uniform(-1e4, 1e4),
            )
        ),
        lambda: "".join(
            chr(r.choice((r.randrange(32, 127), r.randrange(0x80, 0x3000))))
            for _ in range(r.randrange(12))
        ),
        lambda: r.randbytes(r.randrange(20)),
        lambda: r.choice(_STRINGS),
    )
    pick = r.randrange(len(leaves) + (3 if depth < 3 else 0))
    if pick < len(leaves):
        return leaves[pick]()
    if pick == len(leaves):
        keys = _ALL_FIELDS + _ODD_KEYS[:6]
        return {r.choice(keys): _random_value(r, depth + 1) for _ in range(r.randrange(6))}
    return [_random_value(r, depth + 1) for _ in range(r.randrange(6))]


def _telemetry(r: random.Random, now: float, _device: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "ts": now - r.uniform(0, 2),
        "state": r.choice(("off", "buffering", "recording")),
    }
    if r.random() < 0.9:
        body |= _fix(r)
    if r.random() < 0.5:
        body["batt"] = r.uniform(0, 100)
    return body


def _fix(r: random.Random) -> dict[str, float]:
    return {
        "lat": CENTER[0] + r.uniform(-4e-5, 4e-5),
        "lon": CENTER[1] + r.uniform(-6e-5, 6e-5),
        "acc": r.uniform(0, 10),
    }


def _presence(r: random.Random, now: float, device: str) -> dict[str, Any]:
    kind = _KINDS.get(device, DeviceKind.BODY_CAM)
    body: dict[str, Any] = {
        "v": 1,
        "online": r.random() < 0.85,
        "ts": now,
        "device_kind": kind.value,
        "unit": "fz-unit-1",
        "pre_roll": 30.0,
    }
    if kind is DeviceKind.CEW:
        body["paired"] = ("fz-bwc-1",)
    if not body["online"]:
        body["reason"] = r.choice(("connection_lost", "power_off"))
    return body


def _event(r: random.Random, now: float, device: str) -> dict[str, Any]:
    types: tuple[str, ...] = ("taser_draw",)
    if device == "fz-gw-1":
        types = ("emergency_lights", "collision")
    if r.random() < 0.1:
        types = ("taser_draw", "emergency_lights", "collision", "dispatch_zone")
    body: dict[str, Any] = {
        "v": 1,
        "eid": f"fz-e{r.randrange(_EIDS)}",
        "type": r.choice(types),
        "ts": now - r.uniform(0, 30),
    }
    if r.random() < 0.5:
        body |= _fix(r)
    if r.random() < 0.2:
        body["radius"] = r.uniform(1, 50)
    if r.random() < 0.1:
        body["by"] = "dispatcher 12"
    return body


def _ack(r: random.Random, now: float, _device: str) -> dict[str, Any]:
    # Often an activation the engine made (ids are deterministic), so acks find deliveries.
    aid = activation_id(r.choice(POOL)[0], f"fz-e{r.randrange(_EIDS)}")
    status = r.choice(("received", "recording", "refused"))
    body: dict[str, Any] = {"v": 1, "aid": aid, "status": status, "pre_cov": 30.0, "ts": now}
    if status == "recording":
        body["rec"] = f"r-{r.randrange(1000)}"
    elif status == "refused":
        body["detail"] = r.choice(("storage full", "bad_signature: forged", "expired"))
    return body


def _command(r: random.Random, now: float, _device: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "aid": activation_id("fz-cew-1", "fz-e1"),
        "eid": "fz-e1",
        "src": "fz-cew-1",
        "type": "taser_draw",
        "ets": now - 1,
        "pre": 30.0,
        "reason": "proximity",
        "dist": r.uniform(0, 9),
        "ts": now,
        "exp": now + 300,
    }
    if "sig" in Command.model_fields:  # signed commands: 64 bytes of forged signature
        body["sig"] = r.randbytes(64)
    return body


_BASES: dict[type[Message], Callable[[random.Random, float, str], dict[str, Any]]] = {
    Telemetry: _telemetry,
    Presence: _presence,
    Event: _event,
    Ack: _ack,
    Command: _command,
}

# ---------------------------------------------------------------------------- generators
# Each makes one payload from a context: byte-level ones from the packed valid payload,
# structure-aware ones from its pairs, random ones from nothing.


def _g_valid(ctx: _Ctx) -> bytes:
    return ctx.valid()


def _g_random_bytes(ctx: _Ctx) -> bytes:
    low, high = ctx.r.choice(
        (
            (0, 0),
            (1, 8),
            (9, 64),
            (65, 1024),
            (1025, MAX_PAYLOAD_BYTES),
            (MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES + 8192),
        )
    )
    return ctx.r.randbytes(ctx.r.randint(low, high))


def _g_random_tail(ctx: _Ctx) -> bytes:
    head = ctx.r.choice((b"\x85", b"\xde\x00\x05", b"\x81\xa1v\x01", ctx.valid()[:12]))
    return head + ctx.r.randbytes(ctx.r.randrange(64))


def _g_bitflip(ctx: _Ctx) -> bytes:
    data = bytearray(ctx.valid())
    for _ in range(ctx.r.randint(1, 8)):
        data[ctx.r.randrange(len(data))] ^= 1 << ctx.r.randrange(8)
    return bytes(data)


def _g_truncate(ctx: _Ctx) -> bytes:
    data = ctx.valid()
    return data[: ctx.r.randrange(len(data))]


def _g_byte_edit(ctx: _Ctx) -> bytes:
    r = ctx.r
    data = bytearray(ctx.valid())
    for _ in range(r.randint(1, 4)):
        at = r.randrange(len(data) + 1)
        byte = r.choice((0x00, 0xFF, 0xC1, 0xC0, 0x7F, 0x80, 0xDC, 0xDF, 0xD9, 0xC7, 0x55))
        op = r.randrange(3)
        if op == 0 or at == len(data):
            data.insert(at, byte)
        elif op == 1:
            data[at] = byte
        else:
            del data[at]
    return bytes(data)


def _g_trailing(ctx: _Ctx) -> bytes:
    tail = ctx.r.choice((b"\x00", b"\xc0", ctx.r.randbytes(ctx.r.randint(1, 32)), ctx.valid()))
    return ctx.valid() + tail


def _g_splice(ctx: _Ctx) -> bytes:
    a = ctx.valid()
    b = _pack(_BASES[ctx.r.choice(INBOUND)](ctx.r, ctx.now, ctx.device))
    return a[: ctx.r.randrange(len(a) + 1)] + b[ctx.r.randrange(len(b) + 1) :]


def _g_length_lie(ctx: _Ctx) -> bytes:
    lie = ctx.r.choice(_LIES)
    if ctx.r.random() < 0.5:
        return lie + b"".join(k + v for k, v in ctx.pairs())
    return ctx.replace(ctx.field(), lie + ctx.r.randbytes(ctx.r.randrange(8)))


def _g_type_confusion(ctx: _Ctx) -> bytes:
    return ctx.replace(ctx.field(), ctx.r.choice(_CONFUSERS))


def _g_non_finite(ctx: _Ctx) -> bytes:
    names = ("ts", "lat", "lon", "acc", "batt", "radius", "pre", "pre_cov", "ets", "exp")
    return ctx.replace(ctx.field(names), ctx.r.choice(_NAN_RAW))


def _g_big_int(ctx: _Ctx) -> bytes:
    return ctx.replace(ctx.field(), ctx.r.choice(_BIG_INTS))


def _g_huge_string(ctx: _Ctx) -> bytes:
    r = ctx.r
    n = r.choice((256, 257, 1024, 4096, 15_000, MAX_PAYLOAD_BYTES + 1, 40_000))
    unit = r.choice((b"x", "é".encode(), b"\xf0\x9f\x98\x80"))
    value = _str_raw(unit * (n // len(unit) + 1))
    if r.random() < 0.3:  # as a key
        return _join([*ctx.pairs(), (value, b"\x01")])
    return ctx.replace(ctx.field(), value)


def _g_huge_array(ctx: _Ctx) -> bytes:
    r = ctx.r
    n = r.choice((17, 100, 2048, 2049, 15_000, 70_000))
    if r.random() < 0.2:
        value = _map_header(n) + b"".join(_pack(f"k{i}") + b"\x00" for i in range(min(n, 4000)))
    else:
        value = _array_header(n) + r.choice((b"\xc0", b"\x00", b"\x90", b"\xa1x")) * n
    return ctx.replace(ctx.field(("paired", "by", "eid", "state")), value)


def _g_deep_nesting(ctx: _Ctx) -> bytes:
    # Maps in maps as raw bytes: 10,000 levels is 30 KB (oversized), 5,000 fits 16 KiB.
    r = ctx.r
    depth = r.choice((2, 32, 512, 1023, 1024, 1025, 2000, 5000, 10_000))
    unit = r.choice((b"\x81\xa1k", b"\x91", b"\x81\xa1v", b"\x92\xc0"))
    nested = unit * depth + b"\xc0"
    if r.random() < 0.4:
        return nested  # the whole payload
    return ctx.replace(ctx.field(), nested)


def _g_duplicate_key(ctx: _Ctx) -> bytes:
    pairs = ctx.pairs()
    key, value = ctx.r.choice(pairs)
    other = ctx.r.choice((value, _pack(2), _pack(None), ctx.r.choice(_CONFUSERS)))
    at = ctx.r.randrange(len(pairs) + 1)
    return _join([*pairs[:at], (key, other), *pairs[at:]])


def _g_unknown_field(ctx: _Ctx) -> bytes:
    return ctx.replace(ctx.r.choice(_ODD_KEYS + _ALL_FIELDS), _pack(_random_value(ctx.r)))


def _g_missing_field(ctx: _Ctx) -> bytes:
    pairs = ctx.pairs()
    del pairs[ctx.r.randrange(len(pairs))]
    return _join(pairs)


def _g_timestamp(ctx: _Ctx) -> bytes:
    r = ctx.r
    near = ctx.now + r.choice(_TS_OFFSETS)
    value = r.choice((near, near, near, int(near), r.choice(_TS_ABSOLUTE)))
    names = tuple(n for n in ("ts", "ets", "exp") if n in _FIELDS[ctx.model])
    return ctx.replace(r.choice(names), _pack(value))


def _g_range(ctx: _Ctx) -> bytes:
    r = ctx.r
    name = r.choice([n for n in _RANGES if n in _FIELDS[ctx.model]] or ["lat"])
    if name not in ("lat", "lon") or r.random() < 0.3:
        return ctx.replace(name, _pack(r.choice(_RANGES[name])))
    other = "lon" if name == "lat" else "lat"  # keep the pair complete: one is off
    ctx.base = {**ctx.base, other: r.choice(_RANGES[other][:2])}
    return ctx.replace(name, _pack(r.choice(_RANGES[name])))


def _ext(r: random.Random) -> bytes:
    """An extension value: the timestamp type (-1) with valid and invalid sizes, or any."""
    code = r.choice((-1, -1, 0, 1, 5, 127, -128, r.randrange(-128, 128))) & 0xFF
    size = r.choice((0, 1, 2, 3, 4, 8, 12, 16, 17))
    data = r.randbytes(size)
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if size in fixed and r.random() < 0.7:
        return bytes((fixed[size], code)) + data
    if r.random() < 0.1:
        return b"\xc9\xff\xff\xff\xff" + bytes((code,)) + data  # claims 4 GiB
    return bytes((0xC7, size, code)) + data


def _g_ext(ctx: _Ctx) -> bytes:
    if ctx.r.random() < 0.2:
        return _ext(ctx.r)
    names = ("ts", "lat", "eid", "v", "state", "online", "aid", "type")
    return ctx.replace(ctx.field(names), _ext(ctx.r))


def _g_invalid_utf8(ctx: _Ctx) -> bytes:
    bad = _str_raw(ctx.r.choice(_INVALID_UTF8))
    if ctx.r.random() < 0.3:  # as a key
        return _join([*ctx.pairs(), (bad, b"\x01")])
    names = ("eid", "type", "state", "status", "aid", "unit", "by", "detail", "device_kind")
    return ctx.replace(ctx.field(names), bad)


def _g_non_map(ctx: _Ctx) -> bytes:
    pick = ctx.r.randrange(4)
    if pick == 0:  # the values alone, as an array (a "compact" encoding)
        return _array_header(len(ctx.base)) + b"".join(_pack(v) for v in ctx.base.values())
    if pick == 1:  # keys and values flattened into an array
        pairs = ctx.pairs()
        return _array_header(2 * len(pairs)) + b"".join(k + v for k, v in pairs)
    return _pack(ctx.r.choice((None, True, 1, -1, 1.5, "v", b"\x81\xa1v\x01", (1,), ())))


def _g_version(ctx: _Ctx) -> bytes:
    if ctx.r.random() < 0.2:
        return _join([p for p in ctx.pairs() if p[0] != _pack("v")])
    value = ctx.r.choice((0, 2, -1, 1.0, True, "1", b"1", None, 2**64 - 1, (1,), 1.0000001))
    return ctx.replace("v", _pack(value))


def _g_enum(ctx: _Ctx) -> bytes:
    names = ("state", "status", "reason", "device_kind", "online")
    return ctx.replace(ctx.field(names), _pack(ctx.r.choice(_ENUM_JUNK)))


def _g_identifier(ctx: _Ctx) -> bytes:
    r = ctx.r
    name = ctx.field(("eid", "aid", "src", "unit", "rec", "type", "paired"))
    value: Any = r.choice(_BAD_IDS)
    if name == "type":
        value = r.choice(_BAD_TYPES)
    elif name == "paired":
        value = r.choice(((r.choice(_BAD_IDS),), ("fz-bwc-1",) * 17, ("fz-bwc-1",) * 16))
    return ctx.replace(name, _pack(value))


def _g_bad_key(ctx: _Ctx) -> bytes:
    pairs = ctx.pairs()
    key = ctx.r.choice(_BAD_KEYS)
    if ctx.r.random() < 0.5:  # a real field name, sent as bin instead of str
        name, _ = pairs.pop(ctx.r.randrange(len(pairs)))
        key = b"\xc4" + bytes((len(name) - 1,)) + name[1:]
    return _join([*pairs, (key, b"\x01")])


def _g_random_map(ctx: _Ctx) -> bytes:
    r = ctx.r
    names = _FIELDS[ctx.model] if r.random() < 0.7 else _ALL_FIELDS
    body = {n: _random_value(r) for n in r.sample(names, r.randint(0, len(names)))}
    if r.random() < 0.7:
        body["v"] = 1
    if r.random() < 0.5:  # mostly valid, so the deeper checks are reached too
        body = {**ctx.base, **{k: v for k, v in body.items() if r.random() < 0.5}}
    return _pack(body)


def _g_random_value(ctx: _Ctx) -> bytes:
    return _pack(_random_value(ctx.r))


_STRUCTURAL: tuple[Callable[[_Ctx], bytes], ...] = (
    _g_type_confusion,
    _g_non_finite,
    _g_timestamp,
    _g_range,
    _g_unknown_field,
    _g_missing_field,
    _g_enum,
    _g_identifier,
    _g_version,
)


def _g_stacked(ctx: _Ctx) -> bytes:
    # Two or three structural mutations in a row, each on the previous one's output.
    payload = ctx.valid()
    for _ in range(ctx.r.randint(2, 3)):
        try:
            obj = msgpack.unpackb(payload, strict_map_key=False)
        except (ValueError, msgpack.UnpackException):
            return payload
        if not isinstance(obj, dict) or not obj:
            return payload
        ctx = _Ctx(ctx.r, ctx.model, obj, ctx.now, ctx.device)
        payload = ctx.r.choice(_STRUCTURAL)(ctx)
    return payload


#: Every generator by name, with its weight in the mix.
GENERATORS: dict[str, tuple[int, Callable[[_Ctx], bytes]]] = {
    "valid": (8, _g_valid),
    "random_bytes": (6, _g_random_bytes),
    "random_tail": (2, _g_random_tail),
    "bitflip": (8, _g_bitflip),
    "truncate": (4, _g_truncate),
    "byte_edit": (6, _g_byte_edit),
    "trailing": (3, _g_trailing),
    "splice": (3, _g_splice),
    "length_lie": (3, _g_length_lie),
    "type_confusion": (6, _g_type_confusion),
    "non_finite": (4, _g_non_finite),
    "big_int": (3, _g_big_int),
    "huge_string": (2, _g_huge_string),
    "huge_array": (2, _g_huge_array),
    "deep_nesting": (2, _g_deep_nesting),
    "duplicate_key": (4, _g_duplicate_key),
    "unknown_field": (4, _g_unknown_field),
    "missing_field": (4, _g_missing_field),
    "timestamp": (6, _g_timestamp),
    "range": (6, _g_range),
    "ext": (3, _g_ext),
    "invalid_utf8": (3, _g_invalid_utf8),
    "non_map": (2, _g_non_map),
    "version": (3, _g_version),
    "enum": (3, _g_enum),
    "identifier": (4, _g_identifier),
    "bad_key": (2, _g_bad_key),
    "random_map": (6, _g_random_map),
    "random_value": (2, _g_random_value),
    "stacked": (5, _g_stacked),
}
_NAMES = tuple(GENERATORS)
_CUM_WEIGHTS = tuple(
    float(sum(w for w, _ in list(GENERATORS.values())[: i + 1])) for i in range(len(GENERATORS))
)


class CaseGenerator:
    """Seeded cases: ``case(i)`` depends only on the seed and ``i``."""

    def __init__(self, seed: int, topics: Topics | None = None) -> None:
        self.seed = seed
        self.topics = topics or Topics(AGENCY)
        self._prefix = self.topics.prefix

    def case(self, index: int) -> Case:
        """The ``index``-th case."""
        r = random.Random((self.seed << 40) ^ index)
        now = EPOCH + index * STEP_S
        model = r.choice(INBOUND)
        device = r.choice(POOL)[0]
        if model is Event and r.random() < 0.8:  # mostly from devices the rules allow
            device = r.choice(("fz-cew-1", "fz-cew-2", "fz-gw-1"))
        name = r.choices(_NAMES, cum_weights=_CUM_WEIGHTS)[0]
        ctx = _Ctx(r, model, _BASES[model](r, now, device), now, device)
        payload = GENERATORS[name][1](ctx)
        channel = _HOME.get(model) or r.choice(_ENGINE_CHANNELS)
        if r.random() < 0.1:  # a payload of one kind on another kind's topic
            channel = r.choice(_ENGINE_CHANNELS)
        if r.random() < 0.05:
            topic = self._bad_topic(r, channel)
        else:
            topic = f"{self._prefix}/dev/{device}/{channel.value}".encode()
        return Case(index, name, model, channel, topic, payload, now)

    def _bad_topic(self, r: random.Random, channel: DeviceChannel) -> bytes:
        """Not a device topic of this agency, but one the link could hand over."""
        p, ch = self._prefix, channel.value
        topic = r.choice(
            (
                f"{p}/dev/{r.choice(_BAD_IDS[:13])}/{ch}",
                f"{p}/dev/{r.choice(_BAD_IDS[13:])}/{ch}",
                f"{p}/dev/fz-bwc-1/{r.choice(('EVENT', 'events', '', 'x', ch + '/x'))}",
                f"am/v1/other/dev/fz-bwc-1/{ch}",
                f"am/v2/{AGENCY}/dev/fz-bwc-1/{ch}",
                f"/{p}/dev/fz-bwc-1/{ch}",
                f"{p}/dev/fz-bwc-1/{ch}/",
                f"{p}/dev//{ch}",
                "$SYS/broker/uptime",
                f"{p}/dev",
                "x" * r.choice((1, 1000, 60_000)),
            )
        ).encode()
        if channel is not DeviceChannel.TELEMETRY:
            # A broker never delivers a topic with wildcards (aiomqtt cannot even hold one).
            return topic.replace(b"+", b"%").replace(b"#", b"%")
        if r.random() < 0.3:  # the telemetry reader takes raw bytes off the wire
            level = r.choice((b"\xff", b"+", b"#", b"\xc0\xaf", b"\x00", b""))
            topic = f"{p}/dev/".encode() + level + f"/{ch}".encode()
        return topic


# ---------------------------------------------------------------------------- findings


@dataclass(frozen=True, slots=True)
class Finding:
    """Something the contract forbids, with what it takes to reproduce it."""

    target: str
    problem: str
    detail: str
    index: int | None = None
    generator: str | None = None
    model: str | None = None
    topic: str | None = None
    payload_hex: str = ""

    @classmethod
    def of(cls, target: str, problem: str, detail: str, case: Case | None) -> Finding:
        if case is None:
            return cls(target, problem, detail)
        return cls(
            target,
            problem,
            detail,
            case.index,
            case.generator,
            case.model.kind,
            case.topic_text[:200],
            case.payload[:65_536].hex(),
        )

    def line(self, seed: int) -> str:
        text = f"{self.target}: {self.problem}: {self.detail}"
        if self.index is None:
            return text
        return (
            f"{text} (replay: actimesh fuzz --seed {seed} --replay {self.index}; "
            f"{self.generator} {self.model} on {self.topic})"
        )


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {str(exc)[:200]}{at}"


# ---------------------------------------------------------------------------- codec


def _unruly(exc: PayloadError) -> str | None:
    """What is wrong with a PayloadError's reason or text, if anything."""
    text = str(exc)
    if exc.reason not in REASONS:
        return f"reason {exc.reason!r} is not one of {sorted(REASONS)}"
    if not text.isprintable():
        return f"error text is not one printable line: {text[:120]!r}"
    if len(text) > _MAX_ERROR_TEXT:
        return f"error text is {len(text)} characters (limit {_MAX_ERROR_TEXT})"
    return None


def check_codec(payload: bytes) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Decode ``payload`` as every inbound model and by ``decode_telemetry``.

    Returns each model's outcome (``"ok"`` or the PayloadError reason) and the problems
    found, as ``(problem, detail)``: any other exception (``crash``), a reason outside
    the fixed set or an unruly error text (``bad_error``), a fast path that disagrees with
    the model (``disagree``), an accepted model that does not survive re-encoding
    (``round_trip``).
    """
    outcomes: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for model in INBOUND:
        try:
            msg = decode(model, payload)
        except PayloadError as exc:
            outcomes[model.kind] = exc.reason
            unruly = _unruly(exc)
            if unruly is not None:
                problems.append(("bad_error", f"{model.kind}: {unruly}"))
            continue
        except Exception as exc:  # noqa: BLE001 - any other exception is the finding
            outcomes[model.kind] = "crash"
            problems.append(("crash", f"decode({model.kind}): {_describe(exc)}"))
            continue
        outcomes[model.kind] = "ok"
        try:
            again = decode(model, encode(msg))
        except PayloadError as exc:
            problems.append(("round_trip", f"{model.kind}: re-encoded it is {exc}"))
        else:
            if again != msg:
                problems.append(("round_trip", f"{model.kind}: {msg!r} came back as {again!r}"))
    try:
        fast: object = "ok" if decode_telemetry(payload) else "?"
    except PayloadError as exc:
        fast = exc.reason
    except Exception as exc:  # noqa: BLE001
        fast = "crash"
        problems.append(("crash", f"decode_telemetry: {_describe(exc)}"))
    if fast != outcomes["telemetry"]:
        problems.append(("disagree", f"decode_telemetry: {fast}, decode: {outcomes['telemetry']}"))
    return outcomes, problems


# ---------------------------------------------------------------------------- intake


class _Clock:
    """The engine's clock during a fuzz run: set per case, never read from the wall."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


#: ("rejected", reason) | ("accepted", channel) | ("ignored", "") | ("crash", detail)
_Outcome = tuple[str, str]
_IGNORED: _Outcome = ("ignored", "")


def _check_output(head: str, tail: str, payload: bytes) -> str | None:
    """Decode what the engine published on ``{prefix}/{head}/{tail}``; the dead letter's
    reason, if it was one. Raises PayloadError (or ValueError) if it does not decode."""
    if head == "deadletter":
        letter = decode(DeadLetter, payload)
        if letter.reason != tail:
            raise PayloadError("invalid", f"reason {letter.reason} on topic {tail}")
        return tail
    if head == "dev" and tail.endswith("/cmd"):
        decode(Command, payload)
    elif head == "dev" and tail.endswith("/confirm"):
        decode(Confirmation, payload)
    elif head == "alerts":
        decode(Alert, payload)
    elif head == "activations":
        decode(Activation, payload, max_bytes=MAX_ACTIVATION_BYTES)
    elif head == "json":
        json.loads(payload)
    else:
        raise PayloadError("bad_topic", "not a topic the engine publishes on")
    return None


class _RecordingLink:
    """Stands in for the engine's control link: checks and counts what the engine
    publishes, and tracks which control messages it acknowledged."""

    def __init__(self, topics: Topics) -> None:
        self.prefix = topics.prefix + "/"
        self.published: Counter[str] = Counter()
        self.deadletters: Counter[str] = Counter()
        self.last_deadletter = ""
        self.bad_output: list[str] = []
        #: Control messages fed and not yet acknowledged. Bounded by the persister's
        #: backlog, where a set of every id ever fed would grow with the run.
        self.outstanding: set[int] = set()
        self.stray_acks = 0
        #: Commands and confirmations are kept for these activation and event ids only.
        self.watch: set[str] = set()
        self.commands: dict[str, set[str]] = {}
        self.confirmed: dict[str, str] = {}

    @property
    def current_client(self) -> aiomqtt.Client | None:
        return None

    def ack(self, message: aiomqtt.Message, _origin: aiomqtt.Client | None) -> bool:
        try:
            self.outstanding.remove(message.mid)
        except KeyError:  # acknowledged twice
            self.stray_acks += 1
        return True

    async def publish(self, topic: str, payload: bytes, **_options: Any) -> None:
        rest = topic.removeprefix(self.prefix)
        head, _, tail = rest.partition("/")
        self.published[head] += 1
        try:
            reason = _check_output(head, tail, payload)
        except (PayloadError, ValueError) as exc:
            if len(self.bad_output) < 20:
                self.bad_output.append(f"{topic}: {exc}")
            return
        if reason is not None:
            self.deadletters[reason] += 1
            self.last_deadletter = reason
        elif self.watch and head == "dev":
            self._keep(tail, payload)

    def _keep(self, tail: str, payload: bytes) -> None:
        device, _, channel = tail.partition("/")
        if channel == "cmd":
            command = decode(Command, payload)
            if command.aid in self.watch:
                self.commands.setdefault(command.aid, set()).add(device)
        elif channel == "confirm":
            confirmation = decode(Confirmation, payload)
            if confirmation.eid in self.watch:
                self.confirmed[confirmation.eid] = confirmation.status.value


class _EngineDriver:
    """A real engine, fed in-process as its MQTT links would feed it.

    The one place that reaches into the engine's private handlers and queues: the intake
    has no public seam yet (docs/FUZZING.md describes the one that would replace this).
    """

    def __init__(self, engine: Engine, link: _RecordingLink, clock: _Clock) -> None:
        self.engine = engine
        self.link = link
        self.clock = clock
        self.control_messages = 0

    async def feed(self, channel: DeviceChannel, topic: bytes, payload: bytes) -> None:
        if channel is DeviceChannel.TELEMETRY:
            await self.engine._on_telemetry([(topic, payload)])
            return
        self.control_messages += 1
        mid = self.control_messages
        self.link.outstanding.add(mid)
        message = aiomqtt.Message(topic.decode(), payload, 1, False, mid, None)
        await self.engine._on_control(message)

    def backlog(self) -> int:
        """Triggers and acknowledgements waiting for their ledger write."""
        return self.engine._persist.qsize() + self.engine._ack_rows.qsize()

    def idle(self) -> bool:
        """Every trigger and acknowledgement written, every control message acked."""
        return not self.backlog() and not self.link.outstanding

    async def catch_up(self, high: int = 256, low: int = 32) -> None:
        """Let the ledger writers catch up. A broker hands messages over no faster than
        the engine's loop takes them, and the writers run between; fed back to back,
        their queues would fill (up to 110,000 rows) and look like a leak."""
        await asyncio.sleep(0)
        if self.backlog() > high:
            while self.backlog() > low:  # noqa: ASYNC110 - the queues have no low-water event
                await asyncio.sleep(0.001)

    def sizes(self) -> dict[str, int]:
        e = self.engine
        return {
            "fleet": len(e.fleet),
            "index": len(e.index),
            "dedupe": len(e._seen),
            "durable": len(e._durable),
            "deliveries": len(e.deliveries),
            "held": len(e._held),
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The engine's own background tasks (persister, acks, deliveries, warm-up)."""
        e = self.engine
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(e._persister(), name="fuzz-persister"),
                tg.create_task(e._ack_writer(), name="fuzz-acks"),
                tg.create_task(e._track_deliveries(), name="fuzz-deliveries"),
                tg.create_task(e._warm_up(), name="fuzz-warm-up"),
            ]
            try:
                async with asyncio.timeout(10):
                    await e.warmed.wait()
                yield
            finally:
                for task in tasks:
                    task.cancel()


def _expect(case: Case, topics: Topics, rules: RuleTable, settings: EngineSettings) -> _Outcome:
    """What the engine must do with ``case``, from the codec and the topic scheme alone."""
    try:
        parsed = topics.parse_device(case.topic.decode())
    except UnicodeDecodeError:
        parsed = None
    telemetry = case.channel is DeviceChannel.TELEMETRY
    if parsed is None or (telemetry and parsed.channel is not DeviceChannel.TELEMETRY):
        return ("rejected", "bad_topic")
    if not telemetry and parsed.channel not in _ENGINE_CHANNELS[1:]:
        return _IGNORED  # commands and confirmations are not the engine's to read
    if parsed.channel is DeviceChannel.PRESENCE and not case.payload:
        return _IGNORED  # a cleared retained message
    age, skew = settings.max_event_age_s, settings.max_clock_skew_s
    try:
        if telemetry:
            check_clock(decode_telemetry(case.payload)[0], case.now, max_age_s=age, max_skew_s=skew)
        elif parsed.channel is DeviceChannel.EVENT:
            event = decode(Event, case.payload)
            check_clock(event.ts, case.now, max_age_s=age, max_skew_s=skew)
            if rules.get(event.type) is None:
                return ("rejected", "unknown_event_type")
        else:
            decode(Presence if parsed.channel is DeviceChannel.PRESENCE else Ack, case.payload)
    except PayloadError as exc:
        return ("rejected", exc.reason)
    return ("accepted", parsed.channel.value)


@dataclass(slots=True)
class _IntakeCounts:
    cases: int = 0
    control: int = 0
    seconds: float = 0.0
    #: What the oracle expected: rejection reasons, "accepted", "ignored".
    expected: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    ignored: int = 0
    #: Valid inputs the engine refused by policy (sender, rate limit, storm).
    policy: Counter[str] = field(default_factory=Counter)
    slowest_us: float = 0.0
    slowest_index: int | None = None


class _Intake:
    """Feeds cases to the engine and holds each outcome to :func:`_expect`."""

    def __init__(self, driver: _EngineDriver, seed: int, findings: list[Finding]) -> None:
        self.driver = driver
        self.engine = driver.engine
        self.seed = seed
        self.findings = findings
        self.counts = _IntakeCounts()

    def _find(self, problem: str, detail: str, case: Case | None = None) -> None:
        self.findings.append(Finding.of("intake", problem, detail, case))

    def _snapshot(self) -> tuple[int, int, int, int, int]:
        s = self.engine.stats
        return s.rejected.total(), s.telemetry, s.events, s.presence, s.acks

    async def feed(self, case: Case) -> None:
        """Feed one case and check what the engine did with it."""
        counts, link, e = self.counts, self.driver.link, self.engine
        try:
            expected = _expect(case, e.topics, e.rules, e.settings)
        except Exception as exc:  # noqa: BLE001 - the codec target reports this crash
            expected = ("crash", _describe(exc))
        self.driver.clock.now = case.now
        before, letters = self._snapshot(), link.deadletters.total()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(10):
                await self.driver.feed(case.channel, case.topic, case.payload)
        except TimeoutError:
            self._find("hang", "no answer within 10 s", case)
            return
        except Exception as exc:  # noqa: BLE001 - an escaped exception is the finding
            self._find("crash", _describe(exc), case)
            return
        finally:
            spent = (time.perf_counter() - started) * 1e6
            counts.seconds += spent / 1e6
            counts.cases += 1
            counts.control += case.channel is not DeviceChannel.TELEMETRY
            if spent > counts.slowest_us:
                counts.slowest_us, counts.slowest_index = spent, case.index
        observed = self._observed(before, self._snapshot())
        counts.expected[expected[1] if expected[0] == "rejected" else expected[0]] += 1
        if observed[0] == "rejected":
            counts.rejected[observed[1]] += 1
            if link.deadletters.total() != letters + 1 or link.last_deadletter != observed[1]:
                self._find("uncounted", "a rejection without exactly one dead letter", case)
        elif observed[0] == "accepted":
            counts.accepted[observed[1]] += 1
        else:
            counts.ignored += 1
        if observed == expected:
            return
        by_policy = observed[1] not in _KNOWN_REASONS and expected[0] == "accepted"
        if observed[0] == "rejected" and by_policy:
            counts.policy[observed[1]] += 1
            return
        self._find("mismatch", f"expected {expected}, engine did {observed}", case)

    def _observed(
        self, before: tuple[int, int, int, int, int], after: tuple[int, int, int, int, int]
    ) -> _Outcome:
        rejections = after[0] - before[0]
        if rejections > 1:
            return ("rejected", f"{rejections} rejections")
        if rejections == 1:
            return ("rejected", self.driver.link.last_deadletter or "?")
        channels = ("telemetry", "event", "presence", "ack")
        for channel, b, a in zip(channels, before[1:], after[1:], strict=True):
            if a != b:
                return ("accepted", channel)
        return _IGNORED

    async def settle(self, timeout: float) -> None:
        """Wait until every trigger is durable and every message acknowledged."""
        try:
            async with asyncio.timeout(timeout):
                while not self.driver.idle():  # noqa: ASYNC110 - nothing to wait on but state
                    await asyncio.sleep(0.01)
        except TimeoutError:
            self._find("hang", f"not settled after {timeout:.0f} s: {self.driver.sizes()}")

    def check_totals(self) -> None:
        """Every rejection counted by the engine and dead-lettered; every message acked."""
        stats, link = self.engine.stats, self.driver.link
        counted = +Counter(stats.rejected)
        if counted != +self.counts.rejected:
            self._find(
                "uncounted",
                f"engine counted {dict(counted)}, inputs rejected {dict(self.counts.rejected)}",
            )
        letters = link.deadletters + Counter({"(suppressed)": stats.deadletters_suppressed})
        if +letters != counted:
            self._find("uncounted", f"dead letters {dict(letters)}, rejections {dict(counted)}")
        if link.stray_acks or link.outstanding:
            self._find(
                "unacknowledged",
                f"{len(link.outstanding)} of "
                f"{self.driver.control_messages} control messages never acknowledged, "
                f"{link.stray_acks} acknowledged twice",
            )
        for problem in link.bad_output:
            self._find("bad_output", problem)

    def check_bounds(self, cases: int) -> dict[str, int]:
        """Engine state that must not grow with the number of hostile inputs."""
        sizes = self.driver.sizes()
        pool = len(POOL)
        # Each device's event ids, the final check's, and the few that mutations invent.
        limits = {
            "fleet": pool,
            "index": pool,
            "held": 0,
            "dedupe": pool * (_EIDS + 1) + cases // 100,
        }
        for name, limit in limits.items():
            if sizes[name] > limit:
                self._find("unbounded", f"{name} holds {sizes[name]:,} (bound {limit:,})")
        return sizes

    async def final_activation(self, timeout: float) -> dict[str, Any]:
        """Announce the fleet afresh; a taser draw must still activate its cameras."""
        driver, topics = self.driver, self.engine.topics
        driver.clock.now += 60.0  # fixes newer than any the fuzz left in the index
        now = driver.clock.now
        for device, kind in POOL:
            presence = Presence(
                online=True,
                ts=now,
                device_kind=kind,
                unit="fz-unit-1",
                paired=("fz-bwc-1",) if kind is DeviceKind.CEW else (),
            )
            fix = Telemetry(
                ts=now, state=DeviceState.BUFFERING, lat=CENTER[0], lon=CENTER[1], acc=1.0
            )
            await driver.feed(
                DeviceChannel.PRESENCE, topics.presence(device).encode(), encode(presence)
            )
            await driver.feed(
                DeviceChannel.TELEMETRY, topics.telemetry(device).encode(), encode(fix)
            )
        eid = f"final-{self.seed}"
        aid = activation_id("fz-cew-1", eid)
        driver.link.watch |= {aid, eid}
        event = Event(eid=eid, type="taser_draw", ts=now, lat=CENTER[0], lon=CENTER[1], acc=1.0)
        await driver.feed(DeviceChannel.EVENT, topics.event("fz-cew-1").encode(), encode(event))
        await self.settle(timeout)
        recorded = await self.engine.ledger.activation(aid) is not None
        commanded = driver.link.commands.get(aid, set())
        confirmed = driver.link.confirmed.get(eid)
        ok = recorded and commanded == _CAMERAS and confirmed == ConfirmStatus.ACTIVATED.value
        if not ok:
            self._find(
                "no_activation",
                f"after the fuzz a taser draw commanded "
                f"{sorted(commanded)}, in the ledger: {recorded}, confirmed: {confirmed}",
            )
        return {"ok": ok, "aid": aid, "commanded": sorted(commanded)}


# ---------------------------------------------------------------------------- run


@dataclass(frozen=True, slots=True)
class FuzzSettings:
    """One fuzz run."""

    count: int = 1_000_000
    seed: int = 0
    target: Target = "all"
    #: Cases before memory counts as warmed up (None: a tenth of the run, at least 2,000).
    warmup: int | None = None
    #: How much higher memory may peak in the second half after warm-up than the first.
    growth_limit_bytes: int = 16 * 2**20
    #: Measure Python allocations (precise, ~5x slower) instead of the process RSS.
    tracemalloc: bool = False
    #: Where the ledger goes (default: a temporary folder, removed afterwards).
    workdir: Path | None = None
    #: Run only this case, to reproduce a finding.
    replay: int | None = None
    #: How long the engine may take to write and acknowledge what it was fed.
    settle_s: float = 60.0


@dataclass(slots=True)
class FuzzReport:
    """What a fuzz run did and found."""

    settings: FuzzSettings
    elapsed_s: float = 0.0
    cases: int = 0
    generation_s: float = 0.0
    generators: Counter[str] = field(default_factory=Counter)
    codec_cases: int = 0
    codec_s: float = 0.0
    codec_outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    codec_slowest_us: float = 0.0
    codec_slowest_index: int | None = None
    intake: _IntakeCounts | None = None
    engine_rejected: dict[str, int] = field(default_factory=dict)
    deadletters: dict[str, int] = field(default_factory=dict)
    structures: dict[str, int] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    memory_method: str = "rss"
    #: ``(cases done, bytes)``: RSS or traced Python memory.
    memory_samples: list[tuple[int, int]] = field(default_factory=list)
    memory_growth: int = 0
    replayed: Case | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def memory_peak(self) -> int:
        return max((b for _, b in self.memory_samples), default=0)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        s = self.settings
        step = max(1, len(self.memory_samples) // 50)
        out: dict[str, Any] = {
            "ok": self.ok,
            "seed": s.seed,
            "count": s.count,
            "target": s.target,
            "cases": self.cases,
            "elapsed_s": round(self.elapsed_s, 3),
            "cases_per_s": round(_rate(self.cases, self.elapsed_s), 1),
            "generated_per_s": round(_rate(self.cases, self.generation_s), 1),
            "generators": dict(sorted(self.generators.items())),
            "memory": {
                "method": self.memory_method,
                "peak_bytes": self.memory_peak,
                "growth_bytes": self.memory_growth,
                "limit_bytes": s.growth_limit_bytes,
                "samples": self.memory_samples[::step],
            },
            "findings_total": len(self.findings),
            "findings": [dataclasses.asdict(f) for f in self.findings[:100]],
        }
        if self.codec_cases:
            out["codec"] = {
                "payloads": self.codec_cases,
                "decodes": self.codec_cases * (len(INBOUND) + 1),
                "seconds": round(self.codec_s, 3),
                "payloads_per_s": round(_rate(self.codec_cases, self.codec_s), 1),
                "slowest_us": round(self.codec_slowest_us, 1),
                "slowest_case": self.codec_slowest_index,
                "outcomes": {k: dict(sorted(v.items())) for k, v in self.codec_outcomes.items()},
            }
        if self.intake is not None:
            i = self.intake
            out["intake"] = {
                "inputs": i.cases,
                "control_messages": i.control,
                "seconds": round(i.seconds, 3),
                "inputs_per_s": round(_rate(i.cases, i.seconds), 1),
                "slowest_us": round(i.slowest_us, 1),
                "slowest_case": i.slowest_index,
                "expected": dict(sorted(i.expected.items())),
                "rejected": dict(sorted(i.rejected.items())),
                "policy_rejections": dict(sorted(i.policy.items())),
                "engine_stats_rejected": dict(sorted(self.engine_rejected.items())),
                "deadletters": dict(sorted(self.deadletters.items())),
                "accepted": dict(sorted(i.accepted.items())),
                "ignored": i.ignored,
                "engine_state": self.structures,
                "final_activation": self.final,
            }
        return out

    def lines(self) -> Iterator[str]:
        """The report as text, one line at a time."""
        s = self.settings
        yield (
            f"fuzz seed {s.seed}, target {s.target}: {self.cases:,} cases in "
            f"{self.elapsed_s:.1f} s ({_rate(self.cases, self.elapsed_s):,.0f}/s; "
            f"generated at {_rate(self.cases, self.generation_s):,.0f}/s)"
        )
        if self.replayed is not None:
            c = self.replayed
            yield f"case {c.index}: {c.generator} {c.model.kind} on {c.topic_text[:120]}"
            yield f"  payload ({len(c.payload)} bytes) {c.payload[:512].hex()}"
        if self.codec_cases:
            yield (
                f"codec: {self.codec_cases:,} payloads x {len(INBOUND) + 1} decoders, "
                f"{_rate(self.codec_cases, self.codec_s):,.0f} payloads/s, slowest "
                f"{self.codec_slowest_us:,.0f} µs (case {self.codec_slowest_index})"
            )
            for model, outcomes in self.codec_outcomes.items():
                yield f"  {model:<9} " + _counts(outcomes)
        if self.intake is not None:
            i = self.intake
            yield (
                f"intake: {i.cases:,} inputs ({i.control:,} control, "
                f"{i.cases - i.control:,} telemetry), {_rate(i.cases, i.seconds):,.0f}/s, "
                f"slowest {i.slowest_us:,.0f} µs (case {i.slowest_index})"
            )
            yield f"  accepted  {_counts(i.accepted)}; ignored {i.ignored:,}"
            yield f"  rejected  {_counts(i.rejected)}"
            if i.policy:
                yield f"  of which refused by policy: {_counts(i.policy)}"
            yield (
                f"  engine.stats.rejected {sum(self.engine_rejected.values()):,}, "
                f"dead letters {sum(self.deadletters.values()):,}"
            )
            yield f"  engine state after: {_counts(self.structures)}"
            verdict = "activated" if self.final.get("ok") else "FAILED"
            yield f"  final taser draw: {verdict} {', '.join(self.final.get('commanded', []))}"
        yield (
            f"memory ({self.memory_method}): peak {self.memory_peak / 2**20:.1f} MiB, "
            f"second half of the run vs first {self.memory_growth / 2**20:+.2f} MiB "
            f"(limit {s.growth_limit_bytes / 2**20:.0f} MiB)"
        )
        yield f"findings: {len(self.findings):,}" if self.findings else "findings: none"
        for finding in self.findings[:20]:
            yield f"  {finding.line(s.seed)}"
            if finding.payload_hex:
                yield f"    payload {finding.payload_hex[:160]}"


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def _counts(counts: Counter[str] | dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "none"


def _rss() -> int:
    try:
        with Path("/proc/self/statm").open("rb") as statm:
            return int(statm.read().split()[1]) * 4096
    except OSError:  # not Linux: the peak so far is all there is
        import resource  # noqa: PLC0415

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _growth(samples: list[tuple[int, int]], warmup: int) -> int:
    """How much higher memory peaked in the second half after warm-up than the first."""
    after = [b for n, b in samples if n >= warmup]
    if len(after) < 4:
        return 0
    half = len(after) // 2
    return max(after[half:]) - max(after[:half])


@contextlib.contextmanager
def _quiet_engine(findings: list[Finding]) -> Iterator[None]:
    """Each rejection logs a warning; a million of them would bury the report. Errors
    the engine logs (a failure it caught) are findings."""

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if len(findings) < 1000:
                findings.append(Finding("intake", "logged_error", record.getMessage()[:300]))

    logger = logging.getLogger("actimesh")
    saved = logger.level, logger.propagate
    handler = Catch(logging.ERROR)
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _scratch(stack: contextlib.ExitStack, workdir: Path | None) -> Path:
    if workdir is not None:
        return workdir
    # The ledger is scratch: in RAM when there is a tmpfs, so fsyncs do not set the pace.
    shm = Path("/dev/shm")  # noqa: S108
    where = str(shm) if shm.is_dir() else None
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fuzz-", dir=where)))


async def run_fuzz(
    settings: FuzzSettings, progress: Callable[[int, float], None] | None = None
) -> FuzzReport:
    """Run the fuzz ``settings`` describe; ``progress(cases_done, seconds)`` now and then."""
    method = "tracemalloc" if settings.tracemalloc else "rss"
    report = FuzzReport(settings, memory_method=method)
    with contextlib.ExitStack() as stack:
        workdir = _scratch(stack, settings.workdir)
        if settings.tracemalloc:
            tracemalloc.start()
            stack.callback(tracemalloc.stop)
        stack.enter_context(_quiet_engine(report.findings))
        await _run(settings, report, workdir, progress)
    return report


async def _run(
    settings: FuzzSettings,
    report: FuzzReport,
    workdir: Path,
    progress: Callable[[int, float], None] | None,
) -> None:
    topics = Topics(AGENCY)
    generator = CaseGenerator(settings.seed, topics)
    codec = settings.target in ("codec", "all")
    indexes = range(settings.count) if settings.replay is None else [settings.replay]
    warmup = settings.warmup if settings.warmup is not None else max(2000, len(indexes) // 10)
    sample_every = max(100, len(indexes) // 500)
    report.codec_outcomes = {m.kind: Counter() for m in INBOUND} if codec else {}

    def memory() -> int:
        return tracemalloc.get_traced_memory()[0] if settings.tracemalloc else _rss()

    clock = _Clock(EPOCH)
    async with Ledger(workdir / "ledger.sqlite3") as ledger:
        link = _RecordingLink(topics)
        # Every rejection dead-lettered (none suppressed) so each one is seen; commands
        # expire within the run, so delivery tracking has to let go of them.
        engine_settings = EngineSettings(
            deadletters_per_s=1e12, warmup_s=0.01, command_expiry_s=30.0
        )
        engine = Engine(
            topics=topics,
            broker_host="127.0.0.1",
            broker_port=1,  # never connected: its links do not run
            ledger=ledger,
            rules=DEFAULT_RULES,
            policy=InclusionPolicy(),
            signer=CommandSigner.generate(),
            settings=engine_settings,
            clock=clock,
        )
        engine.ctl = cast("MqttLink", link)
        driver = _EngineDriver(engine, link, clock)
        intake = None
        if settings.target in ("intake", "all"):
            intake = _Intake(driver, settings.seed, report.findings)
        started = time.perf_counter()
        async with driver.running():
            for n, index in enumerate(indexes):
                t0 = time.perf_counter()
                case = generator.case(index)
                report.generation_s += time.perf_counter() - t0
                report.generators[case.generator] += 1
                if codec:
                    _codec_case(case, report)
                if intake is not None:
                    await intake.feed(case)
                    if n % 64 == 0:  # let the persister, ack writer and tracker run
                        await driver.catch_up()
                if n % sample_every == 0:
                    report.memory_samples.append((n, memory()))
                    if progress is not None:
                        progress(n, time.perf_counter() - started)
                if settings.replay is not None:
                    report.replayed = case
            report.cases = len(indexes)
            report.memory_samples.append((report.cases, memory()))
            if intake is not None:
                await intake.settle(settings.settle_s)
                intake.check_totals()
                report.structures = intake.check_bounds(report.cases)
                report.final = await intake.final_activation(settings.settle_s)
                report.intake = intake.counts
                report.engine_rejected = dict(engine.stats.rejected)
                report.deadletters = dict(link.deadletters)
        report.elapsed_s = time.perf_counter() - started
    report.memory_growth = _growth(report.memory_samples, warmup)
    if settings.replay is None and report.memory_growth > settings.growth_limit_bytes:
        report.findings.append(
            Finding(
                "memory",
                "growth",
                f"peak grew "
                f"{report.memory_growth / 2**20:.1f} MiB after warm-up (limit "
                f"{settings.growth_limit_bytes / 2**20:.0f} MiB)",
            )
        )


def _codec_case(case: Case, report: FuzzReport) -> None:
    started = time.perf_counter()
    outcomes, problems = check_codec(case.payload)
    spent = time.perf_counter() - started
    report.codec_s += spent
    report.codec_cases += 1
    if spent * 1e6 > report.codec_slowest_us:
        report.codec_slowest_us, report.codec_slowest_index = spent * 1e6, case.index
    for kind, outcome in outcomes.items():
        report.codec_outcomes[kind][outcome] += 1
    for problem, detail in problems:
        report.findings.append(Finding.of("codec", problem, detail, case))
