"""The camera side of a device agent, without a broker: it answers through a callable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import Ack, AckStatus, ActivationReason, DeviceKind, DeviceState
from actimesh.broker.topics import Topics
from actimesh.devices.agent import AgentStats, DeviceAgent
from actimesh.devices.camera import Camera
from actimesh.devices.camera_part import NoCamera
from actimesh.devices.control import CameraControl, make_camera_part
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.errors import BrokerError
from actimesh.security.signing import CommandSigner

SIGNER = CommandSigner.generate()
TOPICS = Topics("metro")


def _camera(tmp_path: Path) -> Camera:
    return Camera(
        "bwc", DeviceKind.BODY_CAM, SyntheticSource("bwc"), RecordingStore(tmp_path), started_at=0.0
    )


def _command(aid: str = "act-1") -> bytes:
    now = time.time()
    return encode(
        SIGNER.command(
            agency="metro",
            device_id="bwc",
            aid=aid,
            eid="e-1",
            src="cew",
            type="taser_draw",
            ets=now,
            pre=30.0,
            reason=ActivationReason.PAIRED,
            dist=None,
            ts=now,
            exp=now + 300,
        )
    )


def test_a_sensor_has_no_camera_side() -> None:
    part = make_camera_part(
        None,
        None,
        topics=TOPICS,
        device_id="cew",
        clock=time.time,
        stats=AgentStats(),
        answer=_never,
    )
    assert isinstance(part, NoCamera)
    assert part.handlers() == {}
    assert part.loops() == {}
    assert (part.camera, part.pre_roll_s, part.state) == (None, None, DeviceState.BUFFERING)


async def _never(payload: bytes) -> None:
    raise AssertionError(f"a sensor answered {payload!r}")


def test_a_sensor_agent_refuses_a_camera_given_later(tmp_path: Path) -> None:
    cew = DeviceAgent(
        topics=TOPICS,
        device_id="cew",
        kind=DeviceKind.CEW,
        broker_host="127.0.0.1",
        broker_port=1,
        position=lambda: None,
    )
    with pytest.raises(ValueError, match="only cameras have one"):
        cew.camera = _camera(tmp_path)
    assert cew.camera is None


@pytest.mark.parametrize(("with_key", "status"), [(False, "refused"), (True, "recording")])
async def test_camera_control_answers_commands_through_its_answer(
    tmp_path: Path, with_key: bool, status: str
) -> None:
    answers: list[Ack] = []

    async def answer(payload: bytes) -> None:
        answers.append(decode(Ack, payload))

    stats = AgentStats()
    control = CameraControl(
        _camera(tmp_path),
        SIGNER.verifier() if with_key else None,
        topics=TOPICS,
        device_id="bwc",
        clock=time.time,
        stats=stats,
        answer=answer,
    )
    (handler,) = control.handlers().values()
    assert list(control.handlers()) == [TOPICS.command("bwc")]
    await handler(_command())
    assert [a.status.value for a in answers][-1] == status
    assert {a.aid for a in answers} == {"act-1"}
    if status == "refused":
        assert stats.refused_commands == {"no_engine_key": 1}
        assert control.received == []
    else:
        assert [a.status for a in answers] == [AckStatus.RECEIVED, AckStatus.RECORDING]
        assert stats.commands == 1
        assert [r.command.aid for r in control.received] == ["act-1"]


async def test_a_recording_answer_the_broker_did_not_take_is_sent_again_in_order(
    tmp_path: Path,
) -> None:
    # The engine stops re-sending a command once it hears ``received``: a ``recording``
    # answer lost to a dropped connection would never be asked for again, and it is the
    # ledger's evidence that the camera recorded.
    answers: list[Ack] = []
    link_up = True

    async def answer(payload: bytes) -> None:
        ack = decode(Ack, payload)
        if not link_up and ack.status is not AckStatus.RECEIVED:
            raise BrokerError("the client is not currently connected")
        answers.append(ack)

    control = CameraControl(
        _camera(tmp_path),
        SIGNER.verifier(),
        topics=TOPICS,
        device_id="bwc",
        clock=time.time,
        stats=AgentStats(),
        answer=answer,
    )
    (handler,) = control.handlers().values()
    link_up = False
    await handler(_command("act-1"))
    await handler(_command("act-2"))
    assert [a.status for a in answers] == [AckStatus.RECEIVED, AckStatus.RECEIVED]
    assert control.unsent_answers == 2
    await control.retry()  # still down: kept
    assert control.unsent_answers == 2
    link_up = True
    await control.retry()
    assert control.unsent_answers == 0
    assert [(a.aid, a.status) for a in answers[2:]] == [
        ("act-1", AckStatus.RECORDING),
        ("act-2", AckStatus.RECORDING),
    ]
