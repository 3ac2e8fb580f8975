"""decode_telemetry accepts and rejects exactly what decode(Telemetry, ...) does."""

from __future__ import annotations

import math
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker import codec
from actimesh.broker.codec import decode, decode_telemetry, decode_telemetry_report
from actimesh.broker.messages import Telemetry
from actimesh.errors import PayloadError

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-200, max_value=200),
    st.sampled_from(["off", "buffering", "recording", "OFF", ""]),
    st.sampled_from(["available", "en_route", "on_scene", "a\n"]),
    st.binary(max_size=8),
    st.dictionaries(st.text(max_size=2), st.integers(min_value=-9, max_value=9), max_size=1),
)
# Every field of the model (a new one included without editing this list) and one more.
keys = st.sampled_from([*Telemetry.model_fields, "x"])


def outcome(fn: Any, payload: bytes) -> Any:
    try:
        return fn(payload)
    except PayloadError as exc:
        return ("error", exc.reason)


def slow(payload: bytes) -> Any:
    msg = decode(Telemetry, payload)
    return msg.ts, msg.state, msg.lat, msg.lon, msg.acc


def slow_report(payload: bytes) -> Any:
    msg = decode(Telemetry, payload)
    motion = None if msg.hb is None else (msg.hb, msg.db, msg.spd)
    return msg.ts, msg.state, msg.lat, msg.lon, msg.acc, motion


@given(st.dictionaries(keys, values, max_size=8))
def test_fast_path_agrees_with_the_model(body: dict[str, Any]) -> None:
    payload = msgpack.packb(body, use_bin_type=True)
    assert outcome(decode_telemetry, payload) == outcome(slow, payload)
    assert outcome(decode_telemetry_report, payload) == outcome(slow_report, payload)


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


@given(
    hb=st.floats(min_value=1e-3, max_value=300),
    db=st.floats(min_value=0, max_value=100),
    spd=st.one_of(st.none(), st.floats(min_value=0, max_value=150)),
)
def test_motion_scaled_reports_take_the_fast_path(hb: float, db: float, spd: float | None) -> None:
    body = {"v": 1, "ts": 1.8e9, "state": "buffering", "lat": 51.0, "lon": -114.0}
    body |= {"acc": 3.0, "hb": hb, "db": db}
    if spd is not None:
        body["spd"] = spd
    payload = msgpack.packb(body)
    assert decode_telemetry_report(payload) == slow_report(payload)
    assert decode_telemetry_report(payload)[5] == (hb, db, spd)


def test_hb_without_db_is_refused_by_both_paths() -> None:
    payload = msgpack.packb({"v": 1, "ts": 1.8e9, "state": "off", "hb": 10.0})
    assert outcome(decode_telemetry_report, payload) == ("error", "invalid")
    assert outcome(decode_telemetry, payload) == ("error", "invalid")


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


def test_a_unit_duty_the_model_refuses_is_refused_on_the_fast_path_too() -> None:
    # Found by `actimesh fuzz`: a well-formed fix whose `duty` is no UnitDuty (or not a
    # string at all) passed the fast path and was refused by the model.
    fix = {"v": 1, "ts": 1.8e9, "state": "off", "lat": 51.0, "lon": -114.0}
    for duty in ("a\n", "", {"x": 1}, 3, "en_route", None):
        payload = msgpack.packb({**fix, "duty": duty})
        assert outcome(decode_telemetry, payload) == outcome(slow, payload), duty
