"""decode_telemetry accepts and rejects exactly what decode(Telemetry, ...) does."""

from __future__ import annotations

import math
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker import codec
from actimesh.broker.codec import decode, decode_telemetry
from actimesh.broker.messages import Telemetry
from actimesh.errors import PayloadError

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-200, max_value=200),
    st.sampled_from(["off", "buffering", "recording", "OFF", ""]),
    st.binary(max_size=8),
)
keys = st.sampled_from(["v", "ts", "state", "lat", "lon", "acc", "batt", "x"])


def outcome(fn: Any, payload: bytes) -> Any:
    try:
        return fn(payload)
    except PayloadError as exc:
        return ("error", exc.reason)


def slow(payload: bytes) -> Any:
    msg = decode(Telemetry, payload)
    return msg.ts, msg.state, msg.lat, msg.lon, msg.acc


@given(st.dictionaries(keys, values, max_size=8))
def test_fast_path_agrees_with_the_model(body: dict[str, Any]) -> None:
    payload = msgpack.packb(body, use_bin_type=True)
    assert outcome(decode_telemetry, payload) == outcome(slow, payload)


@given(
    ts=st.floats(min_value=1e-3, max_value=4.1e9),
    lat=st.floats(min_value=-90, max_value=90),
    lon=st.floats(min_value=-180, max_value=180),
    acc=st.one_of(st.none(), st.floats(min_value=0, max_value=100_000)),
    state=st.sampled_from(["off", "buffering", "recording"]),
)
def test_well_formed_fixes_take_the_fast_path(
    ts: float, lat: float, lon: float, acc: float | None, state: str
) -> None:
    body = {"v": 1, "ts": ts, "state": state, "lat": lat, "lon": lon}
    if acc is not None:
        body["acc"] = acc
    payload = msgpack.packb(body)
    assert decode_telemetry(payload) == slow(payload)


def test_garbage_and_oversized_payloads_get_the_models_errors() -> None:
    assert outcome(decode_telemetry, b"\xc1") == ("error", "malformed")
    big = msgpack.packb({"v": 1, "pad": "x" * codec.MAX_PAYLOAD_BYTES})
    assert outcome(decode_telemetry, big) == ("error", "oversized")
    assert outcome(decode_telemetry, msgpack.packb({"v": 2, "ts": 1.0})) == (
        "error",
        "bad_version",
    )


def test_timestamp_bound_matches_the_model() -> None:
    bound = Telemetry.model_json_schema()["properties"]["ts"]["maximum"]
    assert bound == codec._MAX_TS
    assert not math.isnan(bound)
