"""The generators that make one hostile payload each, and :class:`CaseGenerator`, which
picks one per case from a ``Random`` seeded by the run's seed and the case index."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack

from actimesh.broker.codec import (
    MAX_PAYLOAD_BYTES,
)
from actimesh.broker.messages import (
    Event,
)
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.fuzz._cases import _BASES, Case, _Ctx, _random_value
from actimesh.fuzz._msgpack import (
    _ALL_FIELDS,
    _BAD_IDS,
    _BAD_KEYS,
    _BAD_TYPES,
    _BIG_INTS,
    _CONFUSERS,
    _ENUM_JUNK,
    _FIELDS,
    _INVALID_UTF8,
    _LIES,
    _NAN_RAW,
    _ODD_KEYS,
    _RANGES,
    _TS_ABSOLUTE,
    _TS_OFFSETS,
    _array_header,
    _join,
    _map_header,
    _pack,
    _str_raw,
)
from actimesh.fuzz._scenario import _ENGINE_CHANNELS, _HOME, AGENCY, EPOCH, INBOUND, POOL, STEP_S

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
