"""`up`'s terminal report: what it says about one activation."""

from __future__ import annotations

import io

from rich.console import Console

from actimesh.broker.messages import (
    Activation,
    ActivationReason,
    CameraActivation,
    DeviceKind,
    LeftOut,
    LeftOutReason,
)
from actimesh.broker.topics import Topics
from actimesh.runtime.monitor import Monitor

T0 = 1_800_000_000.0


def _line(left_out: tuple[LeftOut, ...], *, gps_margin_m: float = 0.0, dist: float = 9.11) -> str:
    out = io.StringIO()
    monitor = Monitor(
        topics=Topics("demo"),
        broker_host="127.0.0.1",
        broker_port=1,  # never connected: the test calls the handler itself
        console=Console(file=out, width=400, color_system=None),
        gps_margin_m=gps_margin_m,
    )
    record = Activation(
        aid="act-1",
        eid="e1",
        src="cew-1",
        type="taser_draw",
        ets=T0,
        ts=T0 + 0.01,
        lat=51.0,
        lon=-114.0,
        radius=9.144,
        pre=30.0,
        cameras=(
            CameraActivation(
                id="bwc-in",
                device_kind=DeviceKind.BODY_CAM,
                reason=ActivationReason.PROXIMITY,
                dist=dist,
            ),
        ),
        excluded=len(left_out),
        left_out=left_out,
    )
    monitor._activation(record)
    return out.getvalue()


def test_the_activation_line_names_each_camera_left_out_and_why() -> None:
    out = _line(
        (
            LeftOut(
                id="bwc-out",
                device_kind=DeviceKind.BODY_CAM,
                reason=LeftOutReason.TOO_FAR,
                dist=9.17,
            ),
            LeftOut(id="dash-off", reason=LeftOutReason.OFFLINE),
        )
    )
    assert "left out 2 (bwc-out too_far@9.17m, dash-off offline)" in out


def test_a_long_list_is_cut_and_counted() -> None:
    many = tuple(LeftOut(id=f"bwc-{n}", reason=LeftOutReason.STALE, dist=10.0) for n in range(8))
    out = _line(many)
    assert "left out 8 (" in out
    assert "bwc-4 stale@10.00m, +3 more)" in out
    assert "bwc-5" not in out


def test_the_line_states_the_effective_radius_beside_the_rules() -> None:
    # A camera included at 12.3 m of a 9.14 m rule: the line says why it is "within".
    out = _line((), gps_margin_m=6.0, dist=12.3)
    assert "within 9.14 m +6 m GPS = 15.14 m bwc-in@12.3m" in out


def test_without_a_margin_the_line_states_the_rule_radius_alone() -> None:
    out = _line((), gps_margin_m=0.0)
    assert "within 9.14 m bwc-in@9.1m" in out
    assert "GPS" not in out
