"""CloudEvents bodies and their HMAC signatures."""

from __future__ import annotations

import hashlib
import hmac
import json

from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker.messages import (
    Activation,
    ActivationReason,
    CameraActivation,
    DeviceKind,
    LeftOut,
    LeftOutReason,
)
from actimesh.dispatch.cloudevents import activation_event, rfc3339, sign, verify


def record(order: tuple[str, ...]) -> Activation:
    return Activation(
        aid="act-1",
        eid="e1",
        src="cew-1",
        type="taser_draw",
        ets=1_800_000_000.25,
        ts=1_800_000_000.3,
        lat=51.0,
        lon=-114.0,
        radius=9.144,
        pre=30.0,
        cameras=tuple(
            CameraActivation(
                id=c, device_kind=DeviceKind.BODY_CAM, reason=ActivationReason.PROXIMITY, dist=1.0
            )
            for c in order
        ),
        excluded=2,
        by="Dispatcher Kim",
        left_out=(
            LeftOut(
                id="bwc-9",
                device_kind=DeviceKind.BODY_CAM,
                reason=LeftOutReason.TOO_FAR,
                dist=9.17,
                margin=0.0,
                age=0.4,
            ),
            LeftOut(id="dash-3", reason=LeftOutReason.OFFLINE, dist=6.0),
        ),
    )


def test_structured_cloudevent_carries_the_activation() -> None:
    doc = json.loads(activation_event(record(("b", "a")), agency="calgary"))
    assert doc["specversion"] == "1.0"
    assert doc["id"] == "act-1"
    assert doc["source"] == "/actimesh/calgary"
    assert doc["type"] == "org.actimesh.activation.v1"
    assert doc["subject"] == "cew-1"
    assert doc["time"] == "2027-01-15T08:00:00.250Z"
    assert doc["datacontenttype"] == "application/json"
    assert doc["data"]["by"] == "Dispatcher Kim"
    assert [c["id"] for c in doc["data"]["cameras"]] == ["a", "b"]
    # Every camera left out, with why, as on the MQTT topics (unknown fields omitted).
    assert doc["data"]["excluded"] == 2
    assert doc["data"]["left_out"] == [
        {
            "v": 1,
            "id": "bwc-9",
            "device_kind": "body_cam",
            "reason": "too_far",
            "dist": 9.17,
            "margin": 0.0,
            "age": 0.4,
        },
        {"v": 1, "id": "dash-3", "reason": "offline", "dist": 6.0},
    ]


def test_body_does_not_depend_on_camera_order() -> None:
    assert activation_event(record(("a", "b")), agency="x") == activation_event(
        record(("b", "a")), agency="x"
    )


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"


@given(secret=st.text(min_size=1, max_size=64), body=st.binary(max_size=2048))
def test_signature_is_hmac_sha256_of_the_exact_body(secret: str, body: bytes) -> None:
    header = sign(secret, body)
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert header == f"sha256={expected}"
    assert verify(secret, body, header)
    assert not verify(secret, body + b"x", header)
    assert not verify(secret + "x", body, header)
