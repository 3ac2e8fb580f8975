"""False-activation cancel: the officer's cancel crosses the wire and lands in the ledger.

A TASER draw starts its paired body camera (over the local link and by the engine's
command); the officer cancels on the camera within the window. The camera keeps the
recording, marked; the engine records a ``false_activation``, re-commands nothing and
raises no alert; the chain still verifies; a dispatch view built from the broker shows
the camera as cancelled. A cancel the camera refuses sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from actimesh.audit import verify_ledger
from actimesh.broker.client import as_bytes
from actimesh.broker.codec import decode
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    Activation,
    DeviceKind,
    DeviceState,
    activation_id,
)
from actimesh.broker.topics import DeviceChannel
from actimesh.devices.manifest import MANIFEST_NAME
from actimesh.dispatch.state import CameraStatus, LiveState
from actimesh.ledger import FALSE_ACTIVATION, SqliteLedger
from tests.integration.harness import Mesh, mesh
from tests.waiting import eventually, quiet_for

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def dispatch_view(m: Mesh) -> AsyncIterator[tuple[LiveState, list[Ack]]]:
    """A dispatch's live state fed from the broker (activation records and acks), and
    every ack seen on the wire."""
    state = LiveState(max_fix_age_s=10.0, ack_timeout_s=5.0)
    acks: list[Ack] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async with m.client() as client:
            await client.subscribe(m.topics.all_activations, qos=1)
            await client.subscribe(m.topics.all_devices(DeviceChannel.ACK), qos=1)
            ready.set()
            async for message in client.messages:
                topic = message.topic.value
                payload = as_bytes(message.payload)
                parsed = m.topics.parse_device(topic)
                if parsed is not None and parsed.channel is DeviceChannel.ACK:
                    ack = decode(Ack, payload)
                    acks.append(ack)
                    state.ack(parsed.device_id, ack, time.time())
                else:
                    state.activation(decode(Activation, payload), time.time())

    task = asyncio.create_task(listen(), name="dispatch-view")
    try:
        async with asyncio.timeout(5):
            await ready.wait()
        yield state, acks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task


Row = tuple[str, str, str, dict[str, object]]


async def _records(ledger_path: Path, event_type: str) -> list[Row]:
    def read() -> list[Row]:
        with contextlib.closing(sqlite3.connect(ledger_path)) as db:
            return [
                (c, s, o, json.loads(b))
                for c, s, o, b in db.execute(
                    "SELECT component, subject, outcome, body FROM records WHERE event_type = ? "
                    "ORDER BY seq",
                    (event_type,),
                )
            ]

    return await asyncio.to_thread(read)


async def test_officer_cancel_within_window_is_recorded_as_false_activation(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, at=0.0, paired=("bwc",), local=("bwc",))
        await m.ready()
        engine = m.engine
        assert engine is not None
        async with dispatch_view(m) as (state, acks):
            event = await cew.raise_event("taser_draw")
            aid = activation_id("cew", event.eid)
            assert await m.commanded(aid, {"bwc"}, quiet_s=0.0) == {"bwc"}
            await eventually(
                lambda: any(a.aid == aid and a.status is AckStatus.RECORDING for a in acks)
            )
            await eventually(lambda: aid in state.activations)

            result = await bwc.cancel_activation(by="Cst. Rivera")
            assert result is not None
            assert result.accepted, result.detail
            assert bwc.state() is DeviceState.BUFFERING
            await eventually(lambda: engine.stats.false_activations == 1)

            # The ledger: one false_activation record naming camera, activation, who, when.
            records: list[Row] = await eventually(
                lambda: _records(tmp_path / "ledger.sqlite3", FALSE_ACTIVATION), timeout=5
            )
            assert len(records) == 1
            component, subject, outcome, body = records[0]
            assert (component, subject, outcome) == ("device/bwc", "bwc", "cancelled")
            assert body["aid"] == aid
            assert body["device_id"] == "bwc"
            assert body["by"] == "Cst. Rivera"
            assert body["eid"] == event.eid
            assert body["event_type"] == "taser_draw"
            assert body["recording"] == result.recording_id
            after = body["after_event_s"]
            assert isinstance(after, float)
            assert 0.0 <= after <= 10.0
            (false,) = await engine.ledger.false_activations(aid)
            assert false.by == "Cst. Rivera"
            assert false.device_id == "bwc"
            statuses = [a.status for a in await engine.ledger.acks(aid)]
            assert statuses[-1] == "cancelled"
            assert "recording" in statuses

            # The dispatch view shows the camera cancelled, by whom, without an alert.
            await eventually(
                lambda: state.activations[aid].cameras["bwc"].status is CameraStatus.CANCELLED
            )
            cam = state.activations[aid].cameras["bwc"].to_json()
            assert cam["cancelled_by"] == "Cst. Rivera"
            assert cam["recording"] == result.recording_id
            view = state.activations[aid].to_json()
            assert view["summary"]["cancelled"] == 1
            assert not view["alert"]
            assert not state.alerts

            # Final: no re-command, no retry, no alert, well past the ack timeout. The
            # cancel was seen handled above (false activation recorded, view cancelled);
            # this window is for a re-send or alert that must not come.
            await quiet_for(engine.settings.ack_timeout_s * 3)
            assert engine.deliveries.get(aid, "bwc") is None
            assert sum(r.command.aid == aid for r in bwc.received) == 1
            assert engine.stats.retries == 0
            assert not engine.stats.alerts
            assert await _records(tmp_path / "ledger.sqlite3", "alert") == []
            assert bwc.unsent_cancels == 0

        # The recording is kept on the camera, marked cancelled, not deleted.
        assert result.recording_id is not None
        folder = m.store.path_of("bwc", result.recording_id)
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        assert manifest["cancel"]["by"] == "Cst. Rivera"
        assert manifest["segments"], "the cancelled recording kept its media"
        assert {a["aid"] for a in manifest["activations"]} >= {aid}

    report = verify_ledger(tmp_path / "ledger.sqlite3")
    assert report.ok, report.summary()


async def test_cancel_after_the_window_is_refused_and_not_recorded(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, at=0.0, paired=("bwc",))
        assert bwc.camera is not None
        bwc.camera.cancel_window_s = 0.3  # the 10 s default, shortened for the test
        await m.ready()
        engine = m.engine
        assert engine is not None
        async with dispatch_view(m) as (_state, acks):
            event = await cew.raise_event("taser_draw")
            aid = activation_id("cew", event.eid)
            await eventually(
                lambda: any(a.aid == aid and a.status is AckStatus.RECORDING for a in acks)
            )
            opened = bwc.received[-1].received_at
            await eventually(lambda: time.time() > opened + 0.6)

            result = await bwc.cancel_activation(by="Cst. Rivera")
            assert result is not None
            assert not result.accepted
            assert result.detail is not None
            assert "window closed" in result.detail
            assert bwc.state() is DeviceState.RECORDING  # still recording
            assert bwc.stats.cancels_refused == 1
            # The camera has refused the cancel (counted above): give a (wrong) cancelled
            # ack the time to show up on the wire.
            await quiet_for(0.5)
            assert not any(a.status is AckStatus.CANCELLED for a in acks)
        assert engine.stats.false_activations == 0
        assert await engine.ledger.false_activations() == []
        assert all(a.status != "cancelled" for a in await engine.ledger.acks(aid))


async def test_cancel_of_a_recording_already_running_is_refused_and_sends_nothing(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """The first draw starts the recording; the officer cannot cancel the second one,
    which joined a recording the camera was already making."""
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, at=0.0, paired=("bwc",))
        await m.ready()
        engine = m.engine
        assert engine is not None
        async with dispatch_view(m) as (_state, acks):
            first = activation_id("cew", (await cew.raise_event("taser_draw")).eid)
            await eventually(
                lambda: any(a.aid == first and a.status is AckStatus.RECORDING for a in acks)
            )
            second = activation_id("cew", (await cew.raise_event("taser_draw")).eid)
            await eventually(
                lambda: any(a.aid == second and a.status is AckStatus.RECORDING for a in acks)
            )

            result = await bwc.cancel_activation(second, by="Cst. Rivera")
            assert result is not None
            assert not result.accepted
            assert result.detail is not None
            assert "already running" in result.detail
            assert bwc.state() is DeviceState.RECORDING
            # The camera has refused the cancel (its answer above): give a (wrong)
            # cancelled ack the time to show up on the wire.
            await quiet_for(0.5)
            assert not any(a.status is AckStatus.CANCELLED for a in acks)
        assert engine.stats.false_activations == 0
        assert await engine.ledger.false_activations() == []


async def test_engine_command_after_a_local_cancel_is_answered_cancelled(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """The local link starts the camera and the officer cancels before the engine's
    command arrives (no engine yet): the late command is answered ``cancelled``, not
    ``refused``, so it is recorded as a false activation and raises no alert."""
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, at=0.0, paired=("bwc",), local=("bwc",))
        await m.ready()
        event = await cew.raise_event("taser_draw")
        assert bwc.state() is DeviceState.RECORDING
        result = await bwc.cancel_activation(by="Cst. Rivera")
        assert result is not None
        assert result.accepted
        assert bwc.unsent_cancels == 0  # only the local activation: nothing to tell

        async with (
            SqliteLedger(tmp_path / "late.sqlite3") as ledger,
            m.running_engine(ledger) as engine,
        ):
            aid = activation_id("cew", event.eid)
            await eventually(lambda: engine.stats.false_activations == 1, timeout=10)
            (false,) = await eventually(lambda: ledger.false_activations(aid), timeout=5)
            assert false.recording == result.recording_id
            assert false.by == "Cst. Rivera"
            assert [a.status for a in await ledger.acks(aid)] == ["received", "cancelled"]
            # Long enough for the delivery tracker to have re-sent or alerted, were the
            # cancelled camera still pending.
            await quiet_for(engine.settings.ack_timeout_s * 3)
            assert not engine.stats.alerts
            assert engine.deliveries.get(aid, "bwc") is None
    report = verify_ledger(tmp_path / "late.sqlite3")
    assert report.ok, report.summary()
