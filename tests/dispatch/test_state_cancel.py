"""The live picture of a false activation: a camera the officer cancelled on the device."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from actimesh.broker.messages import Ack, AckStatus
from actimesh.dispatch.state import CameraStatus, CameraView
from tests.dispatch.test_state import T0, ack, record, state


def cancelled(aid: str, ts: float, by: str = "Cst. Rivera") -> Ack:
    return Ack(
        aid=aid,
        status=AckStatus.CANCELLED,
        pre_cov=30.0,
        rec="rec-1",
        ts=ts,
        by=by,
        detail="cancelled on the camera as a false activation",
    )


def st(view: CameraView) -> CameraStatus:
    return view.status


def test_cancelled_ack_turns_a_recording_camera_cancelled_without_an_alert() -> None:
    s = state()
    s.activation(record("act-1", "bwc"), T0)
    s.ack("bwc", ack("act-1", AckStatus.RECORDING, T0 + 0.1), T0 + 0.1)
    s.take_events()
    s.ack("bwc", cancelled("act-1", T0 + 4.0), T0 + 4.0)
    cam = s.activations["act-1"].cameras["bwc"]
    assert st(cam) is CameraStatus.CANCELLED
    out = cam.to_json()
    assert out["cancelled_by"] == "Cst. Rivera"
    assert out["cancelled_ts"] == T0 + 4.0
    assert out["recording"] == "rec-1"
    view = s.activations["act-1"].to_json()
    assert view["summary"]["cancelled"] == 1
    assert view["summary"]["recording"] == 0
    assert not view["alert"]
    assert not s.alerts
    assert [e["data"]["status"] for e in s.take_events()] == ["cancelled"]
    assert s.stats.outcomes["cancelled"] == 1


def test_nothing_replaces_cancelled_and_a_repeat_changes_nothing() -> None:
    s = state()
    s.activation(record("act-1", "bwc"), T0)
    s.ack("bwc", cancelled("act-1", T0 + 1.0), T0 + 1.0)
    s.take_events()
    s.ack("bwc", ack("act-1", AckStatus.RECORDING, T0 + 0.5), T0 + 1.1)  # overtaken
    s.ack("bwc", cancelled("act-1", T0 + 1.0), T0 + 1.2)  # redelivered
    assert st(s.activations["act-1"].cameras["bwc"]) is CameraStatus.CANCELLED
    assert s.take_events() == []
    s.expire(T0 + 60.0)  # past the ack timeout: a cancelled camera is not silent
    assert st(s.activations["act-1"].cameras["bwc"]) is CameraStatus.CANCELLED
    assert not s.alerts


def test_by_comes_with_cancelled_and_only_with_it() -> None:
    with pytest.raises(ValidationError):
        Ack(aid="act-1", status=AckStatus.CANCELLED, pre_cov=0.0, ts=T0)
    with pytest.raises(ValidationError):
        Ack(aid="act-1", status=AckStatus.RECORDING, pre_cov=0.0, ts=T0, by="Cst. Rivera")
    with pytest.raises(ValidationError):
        Ack(aid="act-1", status=AckStatus.CANCELLED, pre_cov=0.0, ts=T0, by="")
