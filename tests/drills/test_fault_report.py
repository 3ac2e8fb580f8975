"""The fault drill credits a camera commanded in a follow-up to the trigger it follows."""

from __future__ import annotations

import time

from actimesh.broker.messages import AckStatus, ActivationReason, activation_id
from actimesh.devices.camera import ActivationResult
from actimesh.devices.camera_part import ReceivedCommand
from actimesh.drills.fault_report import _for
from actimesh.security.signing import CommandSigner
from actimesh.triggers.followup import follow_up_eid


def received(aid: str, src: str, eid: str) -> ReceivedCommand:
    now = time.time()
    command = CommandSigner.generate().command(
        agency="am-drill",
        device_id="bwc",
        aid=aid,
        eid=eid,
        src=src,
        type="taser_draw",
        ets=now,
        pre=30.0,
        reason=ActivationReason.PROXIMITY,
        dist=3.0,
        ts=now,
        exp=now + 60.0,
    )
    return ReceivedCommand(command, now, ActivationResult(AckStatus.RECORDING, 30.0, "rec-1"))


def test_a_follow_up_command_serves_the_trigger_it_names_and_no_other() -> None:
    first = activation_id("cew", "e1")
    follow_up = activation_id("cew", follow_up_eid(first, 1))
    assert _for(received(first, "cew", "e1"), first)
    # A follow-up's command has its own id but names the trigger's source and event.
    assert _for(received(follow_up, "cew", "e1"), first)
    assert not _for(received(follow_up, "cew", "e2"), first)
    assert not _for(received(activation_id("cew", "e2"), "cew", "e2"), first)
