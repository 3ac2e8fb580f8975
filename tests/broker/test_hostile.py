"""Hostile payloads, one class at a time: each is a PayloadError with a known reason.

The fuzzer (tests/test_fuzz.py, ``actimesh fuzz``) throws a million of these at random;
these tests pin each class down by name, for every inbound model, so a regression names
the class it broke.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import pytest

from actimesh.broker.codec import MAX_PAYLOAD_BYTES, REASONS, check_clock, decode, decode_telemetry
from actimesh.broker.messages import Ack, Command, Event, Message, Presence, Telemetry
from actimesh.errors import PayloadError

NOW = 1_750_000_000.0

VALID: dict[type[Message], dict[str, Any]] = {
    Telemetry: {
        "v": 1,
        "ts": NOW,
        "state": "buffering",
        "lat": 51.04,
        "lon": -114.07,
        "acc": 4.0,
        "batt": 80.0,
    },
    Presence: {
        "v": 1,
        "online": True,
        "ts": NOW,
        "device_kind": "body_cam",
        "unit": "car-1",
        "paired": ("car-1-dash",),
        "pre_roll": 30.0,
    },
    Event: {
        "v": 1,
        "eid": "e-1",
        "type": "taser_draw",
        "ts": NOW,
        "lat": 51.04,
        "lon": -114.07,
        "acc": 3.0,
        "radius": 9.144,
        "by": "cew",
    },
    Ack: {
        "v": 1,
        "aid": "act-1",
        "status": "recording",
        "pre_cov": 30.0,
        "rec": "r-1",
        "ts": NOW,
        "detail": "ok",
    },
    Command: {
        "v": 1,
        "aid": "act-1",
        "eid": "e-1",
        "src": "cew-1",
        "type": "taser_draw",
        "ets": NOW,
        "pre": 30.0,
        "reason": "proximity",
        "dist": 5.0,
        "ts": NOW,
        "exp": NOW + 300,
    },
}
if "sig" in Command.model_fields:
    VALID[Command]["sig"] = bytes(64)
MODELS = list(VALID)
POSITIONED = [Telemetry, Event]
by_model = pytest.mark.parametrize("model", MODELS, ids=lambda m: m.kind)


def packed(model: type[Message], **changes: Any) -> bytes:
    body = {**VALID[model], **changes}
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def raw_map(*pairs: tuple[bytes, bytes]) -> bytes:
    """A map from already-packed keys and values, in order (repeats and all)."""
    assert len(pairs) < 16
    return bytes((0x80 | len(pairs),)) + b"".join(k + v for k, v in pairs)


def pairs_of(model: type[Message], **changes: Any) -> list[tuple[bytes, bytes]]:
    body = {**VALID[model], **changes}
    return [(msgpack.packb(k), msgpack.packb(v, use_bin_type=True)) for k, v in body.items()]


def reject(model: type[Message], payload: bytes) -> PayloadError:
    """The PayloadError ``payload`` raises, after checking its reason and one-line text."""
    with pytest.raises(PayloadError) as info:
        decode(model, payload)
    error = info.value
    assert error.reason in REASONS
    assert str(error).isprintable()  # one line, no control characters
    assert len(str(error)) <= 1024
    if model is Telemetry:  # the telemetry fast path agrees
        with pytest.raises(PayloadError) as fast:
            decode_telemetry(payload)
        assert fast.value.reason == error.reason
    return error


@by_model
def test_valid_samples_decode(model: type[Message]) -> None:
    assert isinstance(decode(model, packed(model)), model)


# ---------------------------------------------------------------------- malformed msgpack


@by_model
@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # the one byte msgpack never uses
        b"\x85\xa1v",  # a map that promises five pairs and ends
        b"\xdf\xff\xff\xff\xff\xa1v\x01",  # a map that claims 4 billion pairs
        b"\xdb\xff\xff\xff\xff" + b"x" * 10,  # a str that claims 4 GiB
        b"\xd9\x05abc",  # a str shorter than its header
        b"\x81\xa1v\xcb\x3f\xf0",  # a float cut short
    ],
    ids=[
        "empty",
        "never-used-byte",
        "truncated",
        "map-length-lie",
        "str-length-lie",
        "short-str",
        "short-float",
    ],
)
def test_malformed_msgpack_is_malformed(model: type[Message], payload: bytes) -> None:
    assert reject(model, payload).reason == "malformed"


@by_model
def test_truncated_valid_payload_is_malformed_at_every_cut(model: type[Message]) -> None:
    payload = packed(model)
    for cut in range(len(payload)):
        assert reject(model, payload[:cut]).reason == "malformed", cut


@by_model
@pytest.mark.parametrize(
    "value",
    [b"\xa2\xff\xfe", b"\xa2\xc0\xaf", b"\xa3\xed\xa0\x80", b"\xa2\xe2\x82"],
    ids=["ff-fe", "overlong", "surrogate", "cut-sequence"],
)
def test_invalid_utf8_in_a_string_is_malformed(model: type[Message], value: bytes) -> None:
    key, _ = next(p for p in pairs_of(model) if p[0] != msgpack.packb("v"))
    pairs = [(k, value if k == key else v) for k, v in pairs_of(model)]
    assert reject(model, raw_map(*pairs)).reason == "malformed"


@by_model
def test_repeated_key_is_malformed(model: type[Message]) -> None:
    # First-wins and last-wins parsers would read "v" differently: refused outright.
    pairs = pairs_of(model)
    again = (msgpack.packb("v"), msgpack.packb(2))
    error = reject(model, raw_map(*pairs[:3], again, *pairs[3:]))
    assert error.reason == "malformed"
    assert "repeats a key" in error.detail
    same = raw_map(*pairs, pairs[0])  # even with the same value
    assert reject(model, same).reason == "malformed"


@by_model
@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b"\xc4\x01v", "invalid"),  # bin: the parser allows it, the model does not
        (b"\x01", "malformed"),
        (b"\xc0", "malformed"),
        (b"\xcb" + struct.pack(">d", 1.0), "malformed"),
        (b"\x91\x01", "malformed"),
    ],
    ids=["bin", "int", "nil", "float", "array"],
)
def test_key_that_is_not_a_string_is_rejected(
    model: type[Message], key: bytes, reason: str
) -> None:
    assert reject(model, raw_map(*pairs_of(model), (key, b"\x01"))).reason == reason


@by_model
@pytest.mark.parametrize(
    "value",
    [
        b"\xd4\x05\x00",  # fixext 1, type 5
        b"\xc7\x00\x05",  # ext 8, empty
        b"\xd6\xff\x00\x00\x00\x01",  # the timestamp extension, 32-bit
        b"\xd7\xff" + bytes(8),  # the timestamp extension, 64-bit
        b"\xc7\x0c\xff" + bytes(12),  # the timestamp extension, 96-bit
        b"\xd5\xff\x00\x00",  # a timestamp of an impossible size
        b"\xc7\x10\x01" + b"\xff" * 16,  # a 128-bit "bignum"
        b"\xc9\xff\xff\xff\xff\x01",  # ext 32 claiming 4 GiB
    ],
    ids=[
        "fixext",
        "empty-ext",
        "timestamp32",
        "timestamp64",
        "timestamp96",
        "bad-timestamp",
        "bignum",
        "ext-length-lie",
    ],
)
def test_extension_types_are_malformed(model: type[Message], value: bytes) -> None:
    pairs = [(k, value if k == msgpack.packb("ts") else v) for k, v in pairs_of(model)]
    if msgpack.packb("ts") not in dict(pairs):
        pairs.append((msgpack.packb("ts"), value))
    assert reject(model, raw_map(*pairs)).reason == "malformed"


# ---------------------------------------------------------------------- trailing bytes


@by_model
@pytest.mark.parametrize("tail", [b"\x00", b"\xc0", b"\xc1", b"garbage"], ids=repr)
def test_trailing_bytes_after_a_valid_object_are_malformed(
    model: type[Message], tail: bytes
) -> None:
    assert reject(model, packed(model) + tail).reason == "malformed"


@by_model
def test_two_valid_objects_back_to_back_are_malformed(model: type[Message]) -> None:
    assert reject(model, packed(model) * 2).reason == "malformed"


# ---------------------------------------------------------------------- non-map top level


@by_model
@pytest.mark.parametrize(
    "value", [None, True, 1, -1, 1.5, "v", b"\x81", (), (1, "taser_draw")], ids=repr
)
def test_non_map_top_level_is_malformed(model: type[Message], value: object) -> None:
    error = reject(model, msgpack.packb(value, use_bin_type=True))
    assert error.reason == "malformed"
    assert "expected a msgpack map" in error.detail


@by_model
def test_values_as_an_array_are_malformed(model: type[Message]) -> None:
    as_array = msgpack.packb(list(VALID[model].values()), use_bin_type=True)
    assert reject(model, as_array).reason == "malformed"


# ---------------------------------------------------------------------- wrong types


@by_model
@pytest.mark.parametrize(
    "value",
    ["1750000000.0", b"\x01", True, None, [1.0], {"x": 1}, "", 2**64 - 1],
    ids=["str", "bin", "bool", "nil", "array", "map", "empty-str", "uint64-max"],
)
def test_wrong_type_in_each_field_is_invalid(model: type[Message], value: object) -> None:
    for name, good in VALID[model].items():
        optional = not model.model_fields[name].is_required()
        if name == "v" or type(value) is type(good) or (value is None and optional):
            continue  # nil means "unset": fine where the field is optional
        error = reject(model, packed(model, **{name: value}))
        assert error.reason == "invalid", (name, error)


@by_model
@pytest.mark.parametrize("value", [0, 2, -1, 1.0, True, "1", b"1", None, (1,)], ids=repr)
def test_wrong_version_is_bad_version(model: type[Message], value: object) -> None:
    assert reject(model, packed(model, v=value)).reason == "bad_version"


def test_strings_are_not_coerced_to_numbers_or_enums() -> None:
    assert reject(Telemetry, packed(Telemetry, lat="51.04")).reason == "invalid"
    assert reject(Telemetry, packed(Telemetry, state="BUFFERING")).reason == "invalid"
    assert reject(Telemetry, packed(Telemetry, state=1)).reason == "invalid"


# ---------------------------------------------------------------------- NaN and infinity


@by_model
@pytest.mark.parametrize(
    "raw",
    [
        msgpack.packb(math.nan),
        msgpack.packb(math.inf),
        msgpack.packb(-math.inf),
        b"\xcb\xff\xf8\x00\x00\x00\x00\x00\x00",  # negative NaN
        b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x01",  # signalling NaN
        b"\xca\x7f\xc0\x00\x00",  # float32 NaN
        b"\xca\x7f\x80\x00\x00",  # float32 infinity
    ],
    ids=["nan", "inf", "-inf", "negative-nan", "signalling-nan", "f32-nan", "f32-inf"],
)
def test_nan_and_infinity_are_invalid_in_every_number(model: type[Message], raw: bytes) -> None:
    numbers = [k for k, v in VALID[model].items() if type(v) is float]
    assert numbers
    for name in numbers:
        key = msgpack.packb(name)
        pairs = [(k, raw if k == key else v) for k, v in pairs_of(model)]
        error = reject(model, raw_map(*pairs))
        assert error.reason == "invalid", name
        assert f"{name}:" in error.detail


# ---------------------------------------------------------------------- out-of-range positions


@pytest.mark.parametrize("model", POSITIONED, ids=lambda m: m.kind)
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lat": 91.0}, "lat"),
        ({"lat": -90.0000001}, "lat"),
        ({"lon": 181.0}, "lon"),
        ({"lon": -180.0000001}, "lon"),
        ({"acc": -1.0}, "acc"),
        ({"acc": -1e-9}, "acc"),
        ({"acc": 100_000.1}, "acc"),
        ({"lat": 1e300}, "lat"),
    ],
    ids=[
        "lat-91",
        "lat-below-90",
        "lon-181",
        "lon-below-180",
        "negative-acc",
        "acc-minus-tiny",
        "acc-too-big",
        "lat-huge",
    ],
)
def test_out_of_range_position_is_invalid(
    model: type[Message], changes: dict[str, float], field: str
) -> None:
    error = reject(model, packed(model, **changes))
    assert error.reason == "invalid"
    assert f"{model.kind}: {field}:" in error.detail


@pytest.mark.parametrize("model", POSITIONED, ids=lambda m: m.kind)
def test_the_edges_of_the_globe_are_valid(model: type[Message]) -> None:
    for lat, lon in ((90.0, 180.0), (-90.0, -180.0), (0.0, -0.0)):
        assert isinstance(decode(model, packed(model, lat=lat, lon=lon, acc=0.0)), model)


@pytest.mark.parametrize("model", POSITIONED, ids=lambda m: m.kind)
def test_half_a_position_is_invalid(model: type[Message]) -> None:
    body = {k: v for k, v in VALID[model].items() if k != "lon"}
    error = reject(model, msgpack.packb(body))
    assert error.reason == "invalid"
    assert "lat and lon must be given together" in error.detail


def test_other_ranges_are_invalid() -> None:
    assert reject(Telemetry, packed(Telemetry, batt=100.01)).reason == "invalid"
    assert reject(Event, packed(Event, radius=0.0)).reason == "invalid"
    assert reject(Event, packed(Event, radius=1000.5)).reason == "invalid"
    assert reject(Ack, packed(Ack, pre_cov=120.1)).reason == "invalid"
    assert reject(Command, packed(Command, pre=-0.1)).reason == "invalid"
    assert reject(Presence, packed(Presence, pre_roll=121.0)).reason == "invalid"


# ---------------------------------------------------------------------- huge strings, arrays


@pytest.mark.parametrize(
    ("model", "field", "limit"),
    [
        (Event, "eid", 64),
        (Event, "type", 32),
        (Event, "by", 256),
        (Ack, "detail", 256),
        (Presence, "unit", 64),
        (Command, "aid", 64),
    ],
)
def test_string_over_its_limit_is_invalid(model: type[Message], field: str, limit: int) -> None:
    assert isinstance(decode(model, packed(model, **{field: "a" * limit})), model)
    error = reject(model, packed(model, **{field: "a" * (limit + 1)}))
    assert error.reason == "invalid"
    assert field in error.detail


@by_model
def test_huge_string_within_the_size_limit_is_invalid(model: type[Message]) -> None:
    # 15,000 characters fit the 16 KiB limit: parsed, then refused by the model.
    name = next(k for k, v in VALID[model].items() if isinstance(v, str))
    assert reject(model, packed(model, **{name: "x" * 15_000})).reason == "invalid"


@by_model
def test_huge_string_over_the_size_limit_is_oversized(model: type[Message]) -> None:
    assert reject(model, packed(model, x="x" * 20_000)).reason == "oversized"


def test_array_over_its_limit_is_invalid() -> None:
    paired = tuple(f"cam-{i}" for i in range(16))
    assert decode(Presence, packed(Presence, paired=paired)).paired == paired
    error = reject(Presence, packed(Presence, paired=(*paired, "cam-16")))
    assert error.reason == "invalid"
    assert "paired" in error.detail


@by_model
@pytest.mark.parametrize("n", [2049, 15_000], ids=["2049", "15000"])
def test_huge_array_is_malformed(model: type[Message], n: int) -> None:
    # Over the parser's container limit (2,048): refused before anything is built.
    assert reject(model, packed(model, paired=[None] * n)).reason == "malformed"


@by_model
def test_huge_map_is_malformed(model: type[Message]) -> None:
    assert reject(model, packed(model, x={f"k{i}": 0 for i in range(257)})).reason == "malformed"


# ---------------------------------------------------------------------- deep nesting


@by_model
@pytest.mark.parametrize("depth", [1025, 5000], ids=["1025", "5000"])
@pytest.mark.parametrize("unit", [b"\x81\xa1k", b"\x91"], ids=["maps", "arrays"])
def test_deep_nesting_beyond_the_parser_stack_is_malformed(
    model: type[Message], depth: int, unit: bytes
) -> None:
    assert reject(model, unit * depth + b"\xc0").reason == "malformed"


@by_model
def test_maps_nested_10000_deep_are_oversized(model: type[Message]) -> None:
    payload = b"\x81\xa1k" * 10_000 + b"\xc0"  # 30,001 bytes
    assert reject(model, payload).reason == "oversized"


@by_model
@pytest.mark.parametrize("field", ["v", "ts", "state", "status", "reason", "device_kind"])
def test_value_nested_just_under_the_parser_stack_is_rejected(
    model: type[Message], field: str
) -> None:
    # 1,000 levels parse; the version check and enum validation used to repr such a value
    # and overflow Python's recursion limit (RecursionError escaped decode: a crash).
    nested = b"\x91" * 1000 + b"\x01"
    pairs = [(k, v) for k, v in pairs_of(model) if k != msgpack.packb(field)]
    error = reject(model, raw_map(*pairs, (msgpack.packb(field), nested)))
    assert error.reason in ({"bad_version"} if field == "v" else {"invalid"})


# ---------------------------------------------------------------------- unknown fields


@by_model
@pytest.mark.parametrize(
    "name", ["sender", "kind", "__class__", "model_config", "V", "v ", "", "stop"], ids=repr
)
def test_unknown_field_is_invalid(model: type[Message], name: str) -> None:
    error = reject(model, packed(model, **{name: 1}))
    assert error.reason == "invalid"
    assert "Extra inputs are not permitted" in error.detail


@by_model
@pytest.mark.parametrize(
    "name",
    ["x\nWARNING forged log line", "\u202eexe.gnp", "a\x00b", "x" * 5000, "\x1b[31mred"],
    ids=["newline", "bidi", "nul", "long", "ansi"],
)
def test_hostile_field_name_cannot_forge_or_bloat_the_error(
    model: type[Message], name: str
) -> None:
    error = reject(model, packed(model, **{name: 1}))  # reject() checks one bounded line
    assert error.reason == "invalid"
    assert len(error.detail) < 200


def test_hostile_version_value_is_shown_short_and_safe() -> None:
    error = reject(Event, packed(Event, v="1\nINFO all good" + "x" * 5000))
    assert error.reason == "bad_version"
    assert len(error.detail) < 200


# ---------------------------------------------------------------------- timestamps far off


@by_model
@pytest.mark.parametrize(
    "ts",
    [0.0, -1.0, -0.0, 4_102_444_800.001, 1e300, 2**64 - 1, -(2**63)],
    ids=["zero", "negative", "negative-zero", "after-2100", "1e300", "uint64-max", "int64-min"],
)
def test_timestamp_outside_any_plausible_clock_is_invalid(model: type[Message], ts: float) -> None:
    name = "ts"
    assert reject(model, packed(model, **{name: ts})).reason == "invalid"


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(-86_400.0, "too_old"), (-1800.5, "too_old"), (3600.0, "future"), (10.5, "future")],
)
def test_timestamp_far_from_now_is_refused_by_the_clock_check(offset: float, reason: str) -> None:
    # Within the model's bounds, so decode accepts it; the engine's clock check does not.
    event = decode(Event, packed(Event, ts=NOW + offset))
    with pytest.raises(PayloadError) as info:
        check_clock(event.ts, NOW, max_age_s=1800, max_skew_s=10)
    assert info.value.reason == reason


def test_timestamp_just_within_the_window_is_accepted() -> None:
    for offset in (-1799.5, 0.0, 9.5):
        check_clock(NOW + offset, NOW, max_age_s=1800, max_skew_s=10)


# ---------------------------------------------------------------------- oversized


@by_model
@pytest.mark.parametrize("size", [MAX_PAYLOAD_BYTES + 1, 100_000, 1_000_000])
def test_oversized_payload_is_refused_before_parsing(model: type[Message], size: int) -> None:
    valid = packed(model)
    payload = valid + b"\x00" * (size - len(valid))  # a valid start, then too much
    error = reject(model, payload)
    assert error.reason == "oversized"
    assert f"{size} bytes" in error.detail


@by_model
def test_payload_of_exactly_the_limit_is_parsed(model: type[Message]) -> None:
    padding = MAX_PAYLOAD_BYTES - len(packed(model, x=""))
    payload = packed(model, x="x" * (padding - 2))  # str8 header -> str16 header
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert reject(model, payload).reason == "invalid"  # parsed: "x" is an unknown field
