"""The mesh can start a recording and never stop one: nothing in the command model, and
no path into the device agent, stops a camera. Only the officer does, on the device."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import msgpack
import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    AckStatus,
    ActivationReason,
    Command,
    DeviceKind,
    DeviceState,
)
from actimesh.broker.topics import Topics
from actimesh.devices.agent import DeviceAgent
from actimesh.devices.camera import Camera
from actimesh.devices.media import SyntheticSource
from actimesh.devices.recorder import RecordingStore
from actimesh.errors import PayloadError
from actimesh.security.signing import CommandSigner
from tests.integration.harness import mesh
from tests.waiting import eventually, quiet_for

SIGNER = CommandSigner.generate()


def signed(device_id: str, aid: str = "act-1", agency: str = "metro") -> Command:
    now = time.time()
    return SIGNER.command(
        agency=agency,
        device_id=device_id,
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


def test_command_fields_can_only_describe_a_start() -> None:
    assert set(Command.model_fields) == {
        "v",
        "aid",
        "eid",
        "src",
        "type",
        "ets",
        "pre",
        "reason",
        "dist",
        "ts",
        "exp",
        "sig",
    }
    assert {r.value for r in ActivationReason} == {"paired", "proximity"}
    # Acks go device to engine and stop nothing: `cancelled` is the officer's own cancel
    # on the camera, reported. A command can still only start a recording.
    assert {s.value for s in AckStatus} == {"received", "recording", "refused", "cancelled"}


@pytest.mark.parametrize("extra", [{"stop": True}, {"action": "stop"}, {"state": "off"}])
def test_strict_model_refuses_a_command_with_anything_more(extra: dict[str, object]) -> None:
    fields = signed("bwc").model_dump(exclude_none=True)
    with pytest.raises(PayloadError, match=r"invalid: command: .*Extra inputs"):
        decode(Command, msgpack.packb({**fields, **extra}, use_bin_type=True))


def test_agent_listens_only_for_confirmations_start_commands_and_the_slow_down(
    tmp_path: Path,
) -> None:
    store = RecordingStore(tmp_path)
    for kind, channels in (
        (DeviceKind.CEW, {"confirm", "slowdown"}),
        (DeviceKind.BODY_CAM, {"confirm", "cmd", "slowdown"}),
    ):
        camera = None
        if kind is DeviceKind.BODY_CAM:
            camera = Camera("dev", kind, SyntheticSource("dev"), store, started_at=0.0)
        agent = DeviceAgent(
            topics=Topics("metro"),
            device_id="dev",
            kind=kind,
            broker_host="127.0.0.1",
            broker_port=1,
            position=lambda: None,
            camera=camera,
        )
        subscribed = {s.topic.rsplit("/", 1)[1] for s in agent.link.settings.subscriptions}
        assert subscribed == channels
    # The one way to stop is the officer's, on the device; it takes no message.
    assert list(inspect.signature(DeviceAgent.stop_recording).parameters) == ["self"]
    stops = [name for name in dir(DeviceAgent) if "stop" in name.lower()]
    assert stops == ["stop_recording"]


@pytest.mark.integration
async def test_no_message_stops_a_recording_camera(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        camera = bwc.camera
        assert camera is not None
        start = m.signer.command(
            agency=m.topics.agency,
            device_id="bwc",
            aid="act-1",
            eid="e-1",
            src="cew",
            type="taser_draw",
            ets=time.time(),
            pre=30.0,
            reason=ActivationReason.PAIRED,
            dist=None,
            ts=time.time(),
            exp=time.time() + 300,
        )
        async with m.client() as outsider:
            await outsider.publish(m.topics.command("bwc"), encode(start), qos=1)
            await eventually(lambda: camera.state is DeviceState.RECORDING, timeout=5)
            # A "stop" riding on a genuine, signed command; and messages on topics a
            # camera might be imagined to obey.
            stop = {**start.model_dump(exclude_none=True), "stop": True}
            await outsider.publish(m.topics.command("bwc"), msgpack.packb(stop), qos=1)
            prefix = f"{m.topics.prefix}/dev/bwc"
            for topic in (f"{prefix}/stop", f"{prefix}/cmd/stop", f"{prefix}/presence"):
                await outsider.publish(topic, msgpack.packb({"v": 1, "online": False}), qos=1)
            await eventually(lambda: bwc.stats.rejected_commands >= 1, timeout=5)
        # The signed "stop" was refused (counted above); the messages on the other topics
        # went out after it: give a stop that one of them caused the time to show.
        await quiet_for(0.3)
        assert bwc.stats.refused_commands == {"invalid": 1}
        assert camera.state is DeviceState.RECORDING
        assert camera.recording is not None
        assert camera.recording.stopped_at is None
