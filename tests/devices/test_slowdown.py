"""A device believes the engine's slow-down only when it is the engine's, holds and is
newer than the last one, and applies it to its heartbeat alone."""

from __future__ import annotations

import msgpack
import pytest

from actimesh.broker.codec import encode
from actimesh.broker.messages import DeviceState, SlowDown
from actimesh.devices.reporting import MotionReporter, Position, ReportingSettings, TelemetryMode
from actimesh.devices.slowdown import SlowDownState
from actimesh.security.signing import CommandSigner, slowdown_signing_bytes

AGENCY = "metro"
NOW = 1_800_000_000.0
ENGINE = CommandSigner.generate()


def _slow(
    seq: int = 1,
    *,
    hb: float | None = 30.0,
    ts: float = NOW,
    exp: float = NOW + 120,
    signer: CommandSigner = ENGINE,
    agency: str = AGENCY,
) -> bytes:
    return encode(signer.slowdown(agency=agency, seq=seq, ts=ts, exp=exp, hb=hb))


def test_a_genuine_slow_down_lengthens_the_heartbeat_until_it_expires() -> None:
    state = SlowDownState(AGENCY)
    assert state.offer(_slow(), ENGINE.verifier(), NOW) == "accepted"
    assert state.heartbeat_s(NOW + 1) == 30.0
    assert state.heartbeat_s(NOW + 119.9) == 30.0
    assert state.heartbeat_s(NOW + 120) is None  # its own expiry ends it


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_slow(signer=CommandSigner.generate()), "bad_signature"),  # another key
        (_slow(agency="other"), "bad_signature"),  # signed for another agency
        (_slow(ts=NOW - 300, exp=NOW - 10), "expired"),  # beyond the 5 s skew
        (b"\x81\xa1v\x01", "invalid"),  # a map without the fields
        (b"\xc1", "malformed"),
        (b"", "empty"),
    ],
)
def test_forged_expired_and_malformed_slow_downs_are_refused_and_counted(
    payload: bytes, reason: str
) -> None:
    state = SlowDownState(AGENCY)
    assert state.offer(payload, ENGINE.verifier(), NOW) == reason
    assert state.refused == {reason: 1}
    assert state.heartbeat_s(NOW) is None


def test_a_tampered_heartbeat_breaks_the_signature() -> None:
    fields = msgpack.unpackb(_slow(hb=30.0))
    fields["hb"] = 300.0
    state = SlowDownState(AGENCY)
    assert state.offer(msgpack.packb(fields), ENGINE.verifier(), NOW) == "bad_signature"


def test_without_the_engine_key_a_device_ignores_every_slow_down() -> None:
    state = SlowDownState(AGENCY)
    assert state.offer(_slow(), None, NOW) == "no_engine_key"
    assert state.heartbeat_s(NOW) is None


def test_an_older_message_replayed_cannot_undo_a_later_clear() -> None:
    state = SlowDownState(AGENCY)
    verifier = ENGINE.verifier()
    slow, clear = _slow(seq=5), _slow(seq=6, hb=None)
    assert state.offer(slow, verifier, NOW) == "accepted"
    assert state.offer(clear, verifier, NOW + 1) == "accepted"
    assert state.heartbeat_s(NOW + 2) is None
    assert state.offer(slow, verifier, NOW + 2) == "replayed"
    assert state.heartbeat_s(NOW + 2) is None
    # The retained clear again (the broker re-sends it on every connect): a repeat.
    assert state.offer(clear, verifier, NOW + 3) == "repeated"
    assert state.refused == {"replayed": 1}
    assert (state.accepted, state.repeated) == (2, 1)


def test_a_slow_down_lengthens_only_the_heartbeat_and_never_delays_a_change() -> None:
    reporter = MotionReporter(ReportingSettings(mode=TelemetryMode.MOTION, heartbeat_s=10.0))
    here = Position(51.0, -114.0, 3.0, speed=0.0)
    on = DeviceState.BUFFERING
    reporter.sent(0.0, on, here, "first")
    reporter.slow_heartbeat_s = 30.0
    assert reporter.heartbeat_s == 30.0
    # The last report promised 10 s: that promise is kept (no fix left stale, and no
    # burst of reports when the slow-down arrives), and the next one announces 30 s.
    assert reporter.why(1.0, on, here) is None
    assert reporter.why(10.0, on, here) == "heartbeat"
    reporter.sent(10.0, on, here, "heartbeat")
    assert reporter.why(22.0, on, here) is None  # 10 s would have been due
    assert reporter.why(40.0, on, here) == "heartbeat"
    reporter.sent(40.0, on, here, "heartbeat")
    # Cleared: the shorter heartbeat applies at once (sooner is always within a promise).
    reporter.slow_heartbeat_s = None
    assert reporter.why(50.0, on, here) == "heartbeat"
    reporter.slow_heartbeat_s = 30.0
    # State and motion still go out at once.
    assert reporter.why(2.0, DeviceState.RECORDING, here) == "state"
    moved = Position(51.0001, -114.0, 3.0, speed=0.0)  # 11 m
    assert reporter.why(2.0, on, moved) == "moved"
    # A slow-down shorter than the device's own heartbeat changes nothing.
    reporter.slow_heartbeat_s = 5.0
    assert reporter.heartbeat_s == 10.0


def test_a_1hz_device_reports_motion_scaled_while_a_slow_down_holds() -> None:
    reporter = MotionReporter(ReportingSettings(mode=TelemetryMode.FIXED))
    here = Position(51.0, -114.0, 3.0, speed=0.0)
    on = DeviceState.BUFFERING
    assert reporter.why(0.0, on, here) == "epoch"
    reporter.slow_heartbeat_s = 30.0
    assert reporter.why(1.0, on, here) == "first"
    assert reporter.sent(1.0, on, here, "first") is not None  # with hb and db
    assert reporter.why(2.0, on, here) is None
    reporter.slow_heartbeat_s = None
    assert reporter.why(3.0, on, here) == "epoch"


def test_the_signed_bytes_are_the_documented_array() -> None:
    message = SlowDown.model_validate(msgpack.unpackb(_slow(seq=7, hb=30.0)))
    expected = msgpack.packb(
        [b"actimesh-slow-v1", AGENCY, 1, 7, NOW, NOW + 120, 30.0], use_bin_type=True
    )
    assert slowdown_signing_bytes(AGENCY, message) == expected
    ENGINE.public_key.verify(message.sig, expected)
