"""The codec: every payload round-trips, and every defect is a PayloadError with a reason."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker.codec import (
    MAX_ACTIVATION_BYTES,
    MAX_PAYLOAD_BYTES,
    check_clock,
    decode,
    encode,
    hex_head,
)
from actimesh.broker.messages import (
    EVENT_TYPE_PATTERN,
    MESSAGE_TYPES,
    Ack,
    AckStatus,
    Activation,
    ActivationReason,
    Alert,
    AlertKind,
    CameraActivation,
    Command,
    Confirmation,
    ConfirmStatus,
    DeadLetter,
    DeviceKind,
    DeviceState,
    EngineStatus,
    Event,
    Message,
    Presence,
    SlowDown,
    Telemetry,
)
from actimesh.broker.topics import IDENTIFIER_PATTERN
from actimesh.errors import PayloadError

NOW = 1_750_000_000.0

SAMPLES: dict[str, Message] = {
    "confirmation": Confirmation(
        eid="e-1", status=ConfirmStatus.ACTIVATED, aid="act-1", cameras=3, ts=NOW
    ),
    "alert": Alert(alert=AlertKind.NO_ACK, ts=NOW, aid="act-1", device="bc-1", detail="5 s"),
    "telemetry": Telemetry(
        ts=NOW, state=DeviceState.RECORDING, lat=51.5007, lon=-0.1246, acc=4.5, batt=87.0
    ),
    "presence": Presence(
        online=True,
        ts=NOW,
        device_kind=DeviceKind.BODY_CAM,
        unit="car-17",
        paired=("car-17-dash", "cew-7"),
        pre_roll=30.0,
    ),
    "event": Event(
        eid="e-1", type="taser_draw", ts=NOW, lat=51.5, lon=-0.12, acc=3.0, radius=9.144
    ),
    "command": Command(
        aid="a-1",
        eid="e-1",
        src="cew-7",
        type="taser_draw",
        ets=NOW,
        pre=30.0,
        reason=ActivationReason.PROXIMITY,
        dist=6.2,
        ts=NOW + 0.01,
        exp=NOW + 300,
        sig=bytes(range(64)),  # the codec carries it; security/signing.py checks it
    ),
    "ack": Ack(aid="a-1", status=AckStatus.RECORDING, pre_cov=30.0, rec="r-9", ts=NOW + 0.2),
    "activation": Activation(
        aid="a-1",
        eid="e-1",
        src="cew-7",
        type="taser_draw",
        ets=NOW,
        ts=NOW + 0.01,
        lat=51.5,
        lon=-0.12,
        radius=9.144,
        pre=30.0,
        cameras=(
            CameraActivation(
                id="bc-1", device_kind=DeviceKind.BODY_CAM, reason=ActivationReason.PAIRED
            ),
            CameraActivation(
                id="bc-2",
                device_kind=DeviceKind.BODY_CAM,
                reason=ActivationReason.PROXIMITY,
                dist=6.2,
            ),
        ),
        excluded=1,
        by="dispatcher 12",
    ),
    "deadletter": DeadLetter(
        ts=NOW, topic="am/v1/metro/dev/bc-1/event", reason="too_old", detail="…", size=42, head="82"
    ),
    "engine_status": EngineStatus(online=True, engine="engine-1", ts=NOW, version="0.1.0"),
    "slowdown": SlowDown(seq=1, ts=NOW, exp=NOW + 120, hb=30.0, sig=bytes(64)),
}
EVENT: dict[str, Any] = {"v": 1, "eid": "e-1", "type": "taser_draw", "ts": NOW}


def _reject(payload: bytes, model: type[Message] = Event) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        decode(model, payload)
    return info.value


def _reject_event(**changes: Any) -> PayloadError:
    fields = {**EVENT, **changes}
    return _reject(msgpack.packb({k: v for k, v in fields.items() if v is not _MISSING}))


_MISSING = object()


# ---------------------------------------------------------------------- round trips


def test_samples_cover_every_message_type() -> None:
    assert set(SAMPLES) == set(MESSAGE_TYPES)
    for kind, sample in SAMPLES.items():
        assert type(sample) is MESSAGE_TYPES[kind]


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_message_type_round_trips(kind: str) -> None:
    # Enum values travel as plain strings and come back as the enum members.
    sample = SAMPLES[kind]
    limit = MAX_ACTIVATION_BYTES if kind == "activation" else MAX_PAYLOAD_BYTES
    assert decode(type(sample), encode(sample), max_bytes=limit) == sample


def test_minimal_payloads_round_trip() -> None:
    for sample in (
        Presence(online=False),
        Event(eid="e", type="manual", ts=NOW),
        EngineStatus(online=False, engine="engine-1"),
    ):
        assert decode(type(sample), encode(sample)) == sample


def test_encode_leaves_unset_fields_out() -> None:
    assert msgpack.unpackb(encode(Event(eid="e", type="manual", ts=NOW))) == {
        "v": 1,
        "eid": "e",
        "type": "manual",
        "ts": NOW,
    }


def test_explicit_nil_means_unset() -> None:
    decoded = decode(Event, msgpack.packb({**EVENT, "radius": None, "by": None}))
    assert decoded == Event(eid="e-1", type="taser_draw", ts=NOW)


def test_integer_is_accepted_where_a_float_is_expected() -> None:
    # Other msgpack encoders pack 1750000000.0 as an integer.
    assert decode(Event, msgpack.packb({**EVENT, "ts": int(NOW)})).ts == NOW


# ---------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"\x82\xa1v", msgpack.packb(EVENT) + b"\x00"],
    ids=["empty", "reserved-byte", "truncated", "trailing-data"],
)
def test_malformed_msgpack_is_rejected(payload: bytes) -> None:
    assert _reject(payload).reason == "malformed"


@pytest.mark.parametrize("value", [[1, 2], "text", 7, None, b"bytes"])
def test_non_map_is_rejected(value: object) -> None:
    error = _reject(msgpack.packb(value, use_bin_type=True))
    assert error.reason == "malformed"
    assert "expected a msgpack map" in error.detail


def test_non_string_keys_are_rejected() -> None:
    fields: dict[Any, Any] = {**EVENT, 1: "x"}
    assert _reject(msgpack.packb(fields)).reason == "malformed"


@pytest.mark.parametrize("version", [2, 0, "1", None, _MISSING])
def test_wrong_version_is_rejected(version: object) -> None:
    assert _reject_event(v=version).reason == "bad_version"


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_must_be_the_integer_one(version: object) -> None:
    assert _reject_event(v=version).reason == "bad_version"


@pytest.mark.parametrize("field", ["eid", "type", "ts"])
def test_missing_field_is_rejected(field: str) -> None:
    error = _reject_event(**{field: _MISSING})
    assert error.reason == "invalid"
    assert f"event: {field}: Field required" in error.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ts", "1750000000.0"),  # no string-to-number coercion
        ("ts", True),  # no booleans as numbers
        ("lat", False),
        ("radius", "9"),
        ("eid", 12),
        ("eid", b"e-1"),  # bin is not str
        ("type", ["taser_draw"]),
    ],
)
def test_wrong_type_is_rejected(field: str, value: object) -> None:
    changes: dict[str, object] = {field: value}
    if field == "lat":
        changes["lon"] = 0.0
    error = _reject(msgpack.packb({**EVENT, **changes}, use_bin_type=True))
    assert error.reason == "invalid"
    assert f"event: {field}:" in error.detail


def test_bool_for_number_is_rejected_in_integer_fields() -> None:
    payload = encode(SAMPLES["deadletter"])
    fields = msgpack.unpackb(payload)
    error = _reject(msgpack.packb({**fields, "size": True}), DeadLetter)
    assert error.reason == "invalid"
    assert "size" in error.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [("ts", math.nan), ("ts", math.inf), ("lat", math.nan), ("lon", -math.inf)],
)
def test_non_finite_numbers_are_rejected(field: str, value: float) -> None:
    changes: dict[str, object] = {"lat": 1.0, "lon": 1.0} if field in ("lat", "lon") else {}
    error = _reject_event(**{**changes, field: value})
    assert error.reason == "invalid"
    assert f"{field}: Input should be a finite number" in error.detail


@pytest.mark.parametrize(
    ("lat", "lon", "field"),
    [(90.01, 0.0, "lat"), (-91.0, 0.0, "lat"), (0.0, 180.5, "lon"), (0.0, -181.0, "lon")],
)
def test_out_of_range_position_is_rejected(lat: float, lon: float, field: str) -> None:
    error = _reject_event(lat=lat, lon=lon)
    assert error.reason == "invalid"
    assert f"event: {field}:" in error.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [("ts", 0.0), ("ts", 5_000_000_000.0), ("radius", 0.0), ("radius", 1000.5), ("acc", -1.0)],
)
def test_out_of_range_numbers_are_rejected(field: str, value: float) -> None:
    assert _reject_event(**{field: value}).reason == "invalid"


@pytest.mark.parametrize(
    ("field", "value"),
    [("eid", "has space"), ("eid", "x" * 65), ("type", "Taser"), ("by", "x" * 257)],
)
def test_bad_strings_are_rejected(field: str, value: str) -> None:
    assert _reject_event(**{field: value}).reason == "invalid"


def test_unknown_field_is_rejected() -> None:
    error = _reject_event(sender="bc-2")  # identity is in the topic, never the payload
    assert error.reason == "invalid"
    assert "sender: Extra inputs are not permitted" in error.detail


@pytest.mark.parametrize("half", [{"lat": 51.5}, {"lon": -0.12}, {"lat": 51.5, "lon": None}])
def test_lat_without_lon_is_rejected(half: dict[str, float | None]) -> None:
    error = _reject_event(**half)
    assert error.reason == "invalid"
    assert "lat and lon must be given together" in error.detail


def test_oversized_payload_is_rejected_before_parsing() -> None:
    # Not even valid msgpack: the size check comes first.
    error = _reject(b"\xc1" * (MAX_PAYLOAD_BYTES + 1))
    assert error.reason == "oversized"
    assert str(MAX_PAYLOAD_BYTES) in error.detail


@pytest.mark.parametrize(
    ("size", "reason"), [(MAX_PAYLOAD_BYTES, "malformed"), (MAX_PAYLOAD_BYTES + 1, "oversized")]
)
def test_size_limit_is_inclusive(size: int, reason: str) -> None:
    header = msgpack.packb(b"x" * size, use_bin_type=True)
    blob = msgpack.packb(b"x" * (size - (len(header) - size)), use_bin_type=True)
    assert len(blob) == size
    assert _reject(blob).reason == reason  # at the limit it is parsed: not a map


def test_activation_limit_is_larger() -> None:
    payload = encode(SAMPLES["deadletter"]) + b" " * MAX_PAYLOAD_BYTES
    assert _reject(payload, DeadLetter).reason == "oversized"
    with pytest.raises(PayloadError) as info:
        decode(DeadLetter, payload, max_bytes=MAX_ACTIVATION_BYTES)
    assert info.value.reason == "malformed"  # trailing data, not size


@pytest.mark.parametrize("depth", [200, 5000])
def test_deeply_nested_arrays_are_rejected(depth: int) -> None:
    nested = b"\x91" * depth + b"\x00"  # [[[...[0]...]]]
    assert _reject(nested).reason == "malformed"


def test_deep_nesting_inside_a_field_is_rejected() -> None:
    head = msgpack.packb({**EVENT, "by": 0})[:-1]  # the map up to the value of "by"
    error = _reject(head + b"\x91" * 5000 + b"\x00")
    assert error.reason == "malformed"


def test_huge_array_is_rejected() -> None:
    payload = msgpack.packb({**EVENT, "by": [0] * 4000})
    assert _reject(payload).reason == "malformed"


@pytest.mark.parametrize(
    "value",
    [msgpack.ExtType(5, b""), msgpack.ExtType(5, b"abc"), msgpack.Timestamp(1, 0)],
    ids=["ext-empty", "ext-data", "timestamp-ext"],
)
def test_extension_types_are_rejected(value: object) -> None:
    error = _reject(msgpack.packb({**EVENT, "ts": value}))
    assert error.reason == "malformed"


def test_extension_type_is_named_in_the_reason() -> None:
    error = _reject(msgpack.packb({**EVENT, "ts": msgpack.ExtType(5, b"")}))
    assert "extension type 5" in error.detail


def test_payload_error_reads_as_one_line() -> None:
    error = _reject_event(lat=91.0, lon=200.0, eid="bad id")
    assert str(error) == f"{error.reason}: {error.detail}"
    assert "\n" not in str(error)
    assert "(3 errors)" in error.detail


# ---------------------------------------------------------------------- clock


def test_clock_within_bounds_is_accepted() -> None:
    check_clock(NOW - 59, NOW, max_age_s=60, max_skew_s=5)
    check_clock(NOW + 4.9, NOW, max_age_s=60, max_skew_s=5)


def test_clock_in_the_future_is_rejected() -> None:
    with pytest.raises(PayloadError) as info:
        check_clock(NOW + 10, NOW, max_age_s=60, max_skew_s=5)
    assert info.value.reason == "future"
    assert "10.0 s in the future" in info.value.detail


def test_clock_too_old_is_rejected() -> None:
    with pytest.raises(PayloadError) as info:
        check_clock(NOW - 61, NOW, max_age_s=60, max_skew_s=5)
    assert info.value.reason == "too_old"
    assert "61.0 s old (max 60)" in info.value.detail


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf])
def test_non_finite_clock_is_rejected(ts: float) -> None:
    with pytest.raises(PayloadError) as info:
        check_clock(ts, NOW, max_age_s=60, max_skew_s=5)
    assert info.value.reason == "bad_time"


def test_hex_head_is_bounded() -> None:
    assert hex_head(b"\x01\xff" * 100, limit=3) == "01ff01"
    assert hex_head(b"") == ""


# ---------------------------------------------------------------------- properties


def _floats(low: float, high: float, *, exclude_min: bool = False) -> st.SearchStrategy[float]:
    return st.floats(
        min_value=low,
        max_value=high,
        exclude_min=exclude_min,
        allow_nan=False,
        allow_infinity=False,
    )


identifiers = st.from_regex(IDENTIFIER_PATTERN, fullmatch=True)
event_types = st.from_regex(EVENT_TYPE_PATTERN, fullmatch=True)
timestamps = _floats(0.0, 4_102_444_800.0, exclude_min=True)
fixes: st.SearchStrategy[dict[str, float]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"lat": _floats(-90.0, 90.0), "lon": _floats(-180.0, 180.0)},
        optional={"acc": _floats(0.0, 100_000.0)},
    ),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    fields = draw(
        st.fixed_dictionaries(
            {"eid": identifiers, "type": event_types, "ts": timestamps},
            optional={
                "radius": _floats(0.0, 1_000.0, exclude_min=True),
                "by": st.text(max_size=256),
            },
        )
    )
    return Event.model_validate({**fields, **draw(fixes)})


@st.composite
def telemetry(draw: st.DrawFn) -> Telemetry:
    fields = draw(
        st.fixed_dictionaries(
            {"ts": timestamps, "state": st.sampled_from(DeviceState)},
            optional={"batt": _floats(0.0, 100.0)},
        )
    )
    return Telemetry.model_validate({**fields, **draw(fixes)})


@given(events())
def test_any_valid_event_round_trips(event: Event) -> None:
    assert decode(Event, encode(event)) == event


@given(telemetry())
def test_any_valid_telemetry_round_trips(sample: Telemetry) -> None:
    assert decode(Telemetry, encode(sample)) == sample


message_models = st.sampled_from(sorted(MESSAGE_TYPES.values(), key=lambda m: m.kind))


@given(message_models, st.binary(max_size=MAX_PAYLOAD_BYTES + 64))
def test_random_bytes_raise_only_payload_errors(model: type[Message], payload: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode(model, payload)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=80)
    | st.binary(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(st.text(max_size=12) | st.integers(0, 9), inner, max_size=8)
    ),
    max_leaves=40,
)
field_names = st.sampled_from(
    sorted({name for model in MESSAGE_TYPES.values() for name in model.model_fields})
)


@given(
    message_models,
    st.dictionaries(field_names, msgpack_values, max_size=14),
    st.sampled_from([1, 2, None]),
)
def test_random_maps_raise_only_payload_errors(
    model: type[Message], fields: dict[str, Any], version: int | None
) -> None:
    payload = msgpack.packb({**fields, "v": version}, use_bin_type=True)
    try:
        decoded = decode(model, payload, max_bytes=MAX_ACTIVATION_BYTES)
    except PayloadError:
        return
    assert isinstance(decoded, model)
