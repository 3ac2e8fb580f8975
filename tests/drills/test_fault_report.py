"""The fault drill credits a camera commanded in a follow-up to the trigger it follows,
and says what the engines did with an answer missing from the ledger."""

from __future__ import annotations

import time
from pathlib import Path

from actimesh.broker.messages import AckStatus, ActivationReason, activation_id
from actimesh.devices.camera import ActivationResult
from actimesh.devices.camera_part import ReceivedCommand
from actimesh.drills.fault_report import _for, _not_written, _what_engines_said
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


def test_a_missing_answer_is_reported_with_what_the_engine_logged_of_it(tmp_path: Path) -> None:
    aid = activation_id("cew", "e1")
    log = tmp_path / "engine-2.log"
    log.write_text(
        "2026-12-07 13:33:32,636 INFO actimesh.triggers.planning: duplicate event e1\n"
        "2026-12-07 13:33:32,636 WARNING actimesh.triggers.persistence: f0-bwc's "
        f"recording answer to {aid} not written: its activation did not command it\n"
        "2026-12-07 13:33:32,637 WARNING actimesh.triggers.persistence: f0-bwc-edge's "
        f"recording answer to {aid} not written: its activation did not command it\n"
    )
    refusals = _not_written([log, tmp_path / "engine-1.log"])  # a log never written: none
    assert _what_engines_said(refusals, aid, "f0-bwc") == (
        f"engine-2: f0-bwc's recording answer to {aid} not written: "
        "its activation did not command it"
    )
    assert _what_engines_said(refusals, aid, "f0-dash") == "no engine logged refusing it"
    other = activation_id("cew", "e2")
    assert _what_engines_said(refusals, other, "f0-bwc") == "no engine logged refusing it"
