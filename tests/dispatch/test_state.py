"""The live state, pure: messages and times in, the dispatcher's picture out."""

from __future__ import annotations

from actimesh.broker.messages import (
    Ack,
    AckStatus,
    Activation,
    ActivationReason,
    Alert,
    AlertKind,
    CameraActivation,
    DeviceKind,
    DeviceState,
    Presence,
    Telemetry,
)
from actimesh.dispatch.state import CameraStatus, CameraView, DeviceStatus, DeviceView, LiveState

T0 = 1_800_000_000.0


def st(view: DeviceView | CameraView) -> DeviceStatus | CameraStatus:
    """The status now (a call, so mypy does not carry a narrowed type from line to line)."""
    return view.status


def state(**kw: float) -> LiveState:
    return LiveState(max_fix_age_s=10.0, ack_timeout_s=5.0, **kw)  # type: ignore[arg-type]


def record(aid: str = "act-1", *cams: str, ts: float = T0, src: str = "cew-1") -> Activation:
    return Activation(
        aid=aid,
        eid="e1",
        src=src,
        type="taser_draw",
        ets=ts - 0.01,
        ts=ts,
        lat=51.0,
        lon=-114.0,
        radius=9.144,
        pre=30.0,
        cameras=tuple(
            CameraActivation(
                id=c, device_kind=DeviceKind.BODY_CAM, reason=ActivationReason.PROXIMITY, dist=3.0
            )
            for c in cams
        ),
        excluded=0,
    )


def ack(aid: str, status: AckStatus, ts: float, pre: float = 30.0) -> Ack:
    return Ack(aid=aid, status=status, pre_cov=pre, rec="rec-1", ts=ts)


def test_device_colour_follows_state_and_presence() -> None:
    s = state()
    s.presence("bwc", Presence(online=True, device_kind=DeviceKind.BODY_CAM, unit="u1"), T0)
    assert st(s.devices["bwc"]) is DeviceStatus.OFFLINE  # no state reported yet
    s.telemetry("bwc", Telemetry(ts=T0, state=DeviceState.BUFFERING, lat=51.0, lon=-114.0), T0)
    assert st(s.devices["bwc"]) is DeviceStatus.BUFFERING
    s.telemetry(
        "bwc", Telemetry(ts=T0 + 1, state=DeviceState.RECORDING, lat=51.0, lon=-114.0), T0 + 1
    )
    assert st(s.devices["bwc"]) is DeviceStatus.RECORDING
    s.presence("bwc", Presence(online=False), T0 + 2)
    assert st(s.devices["bwc"]) is DeviceStatus.OFFLINE
    assert s.devices["bwc"].unit == "u1"  # the will does not erase what the device said
    s.presence("bwc", None, T0 + 3)  # a cleared retained message: the device is gone
    assert "bwc" not in s.devices
    delta = s.take_delta(T0 + 3)
    assert delta is not None
    assert delta["removed_devices"] == ["bwc"]


def test_position_older_than_the_freshness_limit_is_stale() -> None:
    s = state()
    s.telemetry("bwc", Telemetry(ts=T0, state=DeviceState.BUFFERING, lat=51.0, lon=-114.0), T0)
    dev = s.devices["bwc"]
    assert not dev.to_json(T0 + 10.0, 10.0)["stale"]
    assert dev.to_json(T0 + 10.5, 10.0)["stale"]


def test_a_device_reporting_on_motion_is_fresh_until_its_heartbeat_is_overdue() -> None:
    # A still camera with a 10 s heartbeat says nothing between heartbeats; the engine
    # takes its fix as fresh for 10 + 3 s (InclusionPolicy.max_age_s), and so does the map.
    s = state()
    fix = Telemetry(ts=T0, state=DeviceState.BUFFERING, lat=51.0, lon=-114.0, hb=10.0, db=2.3)
    s.telemetry("bwc", fix, T0)
    dev = s.devices["bwc"]
    assert dev.to_json(T0 + 12.0, 10.0)["fresh_s"] == 13.0
    assert not dev.to_json(T0 + 12.0, 10.0)["stale"]
    assert dev.to_json(T0 + 13.5, 10.0)["stale"]
    # Back at 1 Hz (no heartbeat): the plain limit again.
    s.telemetry("bwc", Telemetry(ts=T0 + 20, state=DeviceState.BUFFERING, lat=51.0, lon=-114.0), T0)
    assert dev.to_json(T0 + 30.5, 10.0)["stale"]


def test_late_arriving_fix_does_not_move_a_device_back() -> None:
    s = state()
    s.telemetry(
        "bwc", Telemetry(ts=T0 + 5, state=DeviceState.BUFFERING, lat=51.0, lon=-114.0), T0 + 5
    )
    s.telemetry("bwc", Telemetry(ts=T0, state=DeviceState.BUFFERING, lat=52.0, lon=-114.0), T0 + 6)
    assert s.devices["bwc"].lat == 51.0
    assert s.stats.telemetry_out_of_order == 1


def test_a_tracker_fix_moves_a_device_and_keeps_the_state_it_reported() -> None:
    s = state()
    s.tracker_fix("phone-only", (T0, 51.0, -114.0, 8.0, 55.0), T0 + 1)
    only = s.devices["phone-only"]
    assert (only.lat, only.lon, only.acc, only.fix_ts, only.batt) == (51.0, -114.0, 8.0, T0, 55.0)
    assert st(only) is DeviceStatus.BUFFERING  # never reported a state: as the engine takes it
    assert only.online
    s.telemetry("bwc", Telemetry(ts=T0, state=DeviceState.RECORDING), T0)  # no fix of its own
    s.tracker_fix("bwc", (T0 + 1, 51.001, -114.0, None, None), T0 + 1)
    bwc = s.devices["bwc"]
    assert st(bwc) is DeviceStatus.RECORDING
    assert (bwc.lat, bwc.acc) == (51.001, None)
    assert s.tracks.between("bwc", T0, T0 + 1)[-1].state == "recording"
    s.tracker_fix("bwc", (T0, 52.0, -114.0, None, None), T0 + 2)  # queued, older
    assert bwc.lat == 51.001
    assert s.stats.telemetry_out_of_order == 1
    assert s.stats.tracker_fixes == 3
    assert s.stats.telemetry == 1


def test_tracker_fixes_of_devices_not_in_the_registry_are_skipped() -> None:
    s = state()
    s.registered = frozenset({"bwc"})
    s.tracker_fix("other-agency-phone", (T0, 51.0, -114.0, 5.0, None), T0)
    s.tracker_fix("bwc", (T0, 51.0, -114.0, 5.0, None), T0)
    assert set(s.devices) == {"bwc"}
    assert (s.stats.tracker_fixes, s.stats.tracker_unregistered) == (1, 1)


def test_camera_goes_commanded_acknowledged_recording_with_pre_roll() -> None:
    s = state()
    s.activation(record("act-1", "bwc"), T0 + 0.01)
    cam = s.activations["act-1"].cameras["bwc"]
    assert st(cam) is CameraStatus.COMMANDED
    s.ack("bwc", ack("act-1", AckStatus.RECEIVED, T0 + 0.02), T0 + 0.02)
    assert st(cam) is CameraStatus.ACKNOWLEDGED
    assert cam.ack_latency_s is not None
    assert abs(cam.ack_latency_s - 0.02) < 1e-6
    s.ack("bwc", ack("act-1", AckStatus.RECORDING, T0 + 0.2, pre=28.5), T0 + 0.2)
    assert st(cam) is CameraStatus.RECORDING
    assert cam.pre_cov == 28.5
    s.ack("bwc", ack("act-1", AckStatus.RECEIVED, T0 + 0.3), T0 + 0.3)  # a repeat, late
    assert st(cam) is CameraStatus.RECORDING
    s.expire(T0 + 60)
    assert st(cam) is CameraStatus.RECORDING
    assert not s.alerts


def test_silent_camera_becomes_no_ack_after_the_timeout_and_raises_one_alert() -> None:
    s = state()
    s.activation(record("act-1", "bwc", "silent"), T0)
    s.ack("bwc", ack("act-1", AckStatus.RECORDING, T0 + 0.1), T0 + 0.1)
    s.take_delta(T0 + 0.1)
    s.take_events()
    assert s.next_deadline() == T0 + 5.0
    s.expire(T0 + 4.9)
    assert st(s.activations["act-1"].cameras["silent"]) is CameraStatus.COMMANDED
    s.expire(T0 + 5.0)
    assert st(s.activations["act-1"].cameras["silent"]) is CameraStatus.NO_ACK
    (alert,) = s.alerts.values()
    assert alert.kind == "no_ack"
    assert alert.device_id == "silent"
    delta = s.take_delta(T0 + 5.0)
    assert delta is not None
    assert delta["alerts"][0]["message"] == "no acknowledgement from silent within 5 s"
    assert delta["activations"][0]["alert"] is True
    assert [e["event"] for e in s.take_events()] == ["camera"]
    # The engine noticing the same silence does not raise it twice.
    s.engine_alert(Alert(alert=AlertKind.NO_ACK, ts=T0 + 3, aid="act-1", device="silent"))
    assert len(s.alerts) == 1
    # A late acknowledgement still counts, and says it was late.
    s.ack("silent", ack("act-1", AckStatus.RECORDING, T0 + 8), T0 + 8)
    cam = s.activations["act-1"].cameras["silent"]
    assert st(cam) is CameraStatus.RECORDING
    assert cam.late


def test_engine_alert_marks_a_commanded_camera_before_the_dispatch_timeout() -> None:
    s = state()
    s.activation(record("act-1", "bwc"), T0)
    s.engine_alert(
        Alert(alert=AlertKind.EXPIRED, ts=T0 + 1, aid="act-1", device="bwc", detail="expired")
    )
    assert st(s.activations["act-1"].cameras["bwc"]) is CameraStatus.NO_ACK
    (alert,) = s.alerts.values()
    assert alert.message == "command to bwc expired (engine: expired)"
    s.engine_alert(Alert(alert=AlertKind.LEDGER, ts=T0 + 1, aid="act-2", detail="disk full"))
    assert len(s.alerts) == 2


def test_refused_ack_raises_an_alert() -> None:
    s = state()
    s.activation(record("act-1", "bwc"), T0)
    s.ack(
        "bwc",
        Ack(aid="act-1", status=AckStatus.REFUSED, pre_cov=0.0, ts=T0 + 0.1, detail="storage full"),
        T0 + 0.1,
    )
    (alert,) = s.alerts.values()
    assert alert.kind == "refused"
    assert "storage full" in alert.message


def test_ack_before_its_activation_record_waits_for_it() -> None:
    s = state()
    s.ack("bwc", ack("act-1", AckStatus.RECORDING, T0 + 0.01), T0 + 0.01)
    assert s.stats.early_acks == 1
    s.activation(record("act-1", "bwc"), T0 + 0.02)
    assert st(s.activations["act-1"].cameras["bwc"]) is CameraStatus.RECORDING


def test_redelivered_activation_is_counted_not_duplicated() -> None:
    s = state()
    assert s.activation(record("act-1", "bwc"), T0)
    assert not s.activation(record("act-1", "bwc"), T0 + 1)
    assert s.stats.duplicate_activations == 1
    assert len(s.activations) == 1


def test_activations_are_bounded_by_count_and_age() -> None:
    s = state(max_activations=3, activation_retention_s=100.0)
    for n in range(5):
        s.activation(record(f"act-{n}", ts=T0 + n), T0 + n)
    assert list(s.activations) == ["act-2", "act-3", "act-4"]
    s.expire(T0 + 102.5)
    assert list(s.activations) == ["act-3", "act-4"]
    delta = s.take_delta(T0 + 102.5)
    assert delta is not None
    assert delta["removed_activations"] == ["act-0", "act-1", "act-2"]


def test_devices_are_bounded_and_refusals_counted() -> None:
    s = state(max_devices=2)
    for n in range(4):
        s.telemetry(f"d{n}", Telemetry(ts=T0, state=DeviceState.BUFFERING), T0)
    assert len(s.devices) == 2
    assert s.stats.devices_refused == 2


def test_snapshot_is_newest_first_and_deltas_only_what_changed() -> None:
    s = state()
    s.telemetry("a", Telemetry(ts=T0, state=DeviceState.BUFFERING), T0)
    s.activation(record("act-1"), T0)
    s.activation(record("act-2"), T0 + 1)
    snap = s.snapshot(T0 + 1)
    assert [a["aid"] for a in snap["activations"]] == ["act-2", "act-1"]
    assert s.take_delta(T0 + 1) is not None
    assert s.take_delta(T0 + 1) is None  # nothing new
    s.telemetry("a", Telemetry(ts=T0 + 1, state=DeviceState.RECORDING), T0 + 1)
    delta = s.take_delta(T0 + 2)
    assert delta is not None
    assert [d["id"] for d in delta["devices"]] == ["a"]
    assert delta["activations"] == []


def test_replayed_activation_counts_from_its_own_time() -> None:
    s = state()
    s.activation(record("act-old", "bwc", ts=T0), T0 + 3600, replay=True)
    view = s.activations["act-old"]
    assert view.received == T0
    s.expire(T0 + 3600)
    assert st(view.cameras["bwc"]) is CameraStatus.NO_ACK
    (alert,) = s.alerts.values()
    assert alert.ts == T0 + 5.0  # when it really timed out, not when the map restarted


def test_a_follow_up_shows_as_its_own_activation_linked_to_the_first() -> None:
    s = state()
    assert s.activation(record("act-1", "bwc"), T0)
    follow_up = record("act-2", "late-bwc", ts=T0 + 3.0).model_copy(update={"follows": "act-1"})
    assert s.activation(follow_up, T0 + 3.0)
    # The late camera's answer references the follow-up, and moves it there.
    s.ack("late-bwc", ack("act-2", AckStatus.RECORDING, T0 + 3.2), T0 + 3.2)
    assert st(s.activations["act-2"].cameras["late-bwc"]) is CameraStatus.RECORDING
    shown = {a["aid"]: a for a in s.snapshot(T0 + 4.0)["activations"]}
    assert shown["act-2"]["follows"] == "act-1"
    assert shown["act-1"]["follows"] is None
    assert [c["id"] for c in shown["act-2"]["cameras"]] == ["late-bwc"]
