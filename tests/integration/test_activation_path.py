"""The activation path end to end on a real Mosquitto: devices → engine → cameras."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    AckStatus,
    Activation,
    ActivationReason,
    DeviceKind,
    DeviceState,
    Event,
    Presence,
    activation_id,
)
from actimesh.geofence import InclusionMode, InclusionPolicy
from actimesh.ledger import AckRow
from tests.integration.harness import CENTER, TEST_SETTINGS, mesh
from tests.waiting import eventually, quiet_for

pytestmark = pytest.mark.integration


def first_segment_start(root: Path, device_id: str, recording_id: str) -> float:
    manifest = json.loads(
        (root / "recordings" / device_id / recording_id / "manifest.json").read_text()
    )
    return float(manifest["segments"][0]["start"])


async def test_taser_draw_activates_body_cam_at_9_0_m_but_not_at_9_3_m(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc-own", DeviceKind.BODY_CAM, at=0.0)
        m.add("cew", DeviceKind.CEW, paired=("bwc-own",), local=("bwc-own",))
        m.add("bwc-9.0", DeviceKind.BODY_CAM, at=9.0, bearing=10)
        m.add("bwc-9.3", DeviceKind.BODY_CAM, at=9.3, bearing=100)
        m.add("dash-7", DeviceKind.DASH_CAM, at=7.0, bearing=220)
        await m.ready()
        event = await m.agents["cew"].raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        got = await m.commanded(aid, {"bwc-own", "bwc-9.0", "dash-7"})
        assert got == {"bwc-own", "bwc-9.0", "dash-7"}
        for device_id in got:
            (rc,) = [r for r in m.agents[device_id].received if r.command.aid == aid]
            assert rc.result.status is AckStatus.RECORDING
            assert rc.result.pre_roll_covered_s == pytest.approx(30.0)
            assert rc.command.ets == event.ts
        near = next(r for r in m.agents["bwc-9.0"].received if r.command.aid == aid)
        assert near.command.reason is ActivationReason.PROXIMITY
        assert near.command.dist == pytest.approx(9.0, abs=0.01)
        assert m.agents["bwc-9.3"].camera is not None
        assert m.agents["bwc-9.3"].camera.state is DeviceState.BUFFERING


async def test_collision_activates_own_cruiser_cameras_with_no_gps_fix(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("dash", DeviceKind.DASH_CAM)
        m.add("rear", DeviceKind.REAR_CAM)
        # No local link here: the engine alone must reach the paired cameras.
        m.add("gw", DeviceKind.GATEWAY, paired=("dash", "rear"))
        m.add("bwc-bystander", DeviceKind.BODY_CAM, at=2.0)
        await m.ready()
        event = await m.agents["gw"].raise_event("collision")
        aid = activation_id("gw", event.eid)
        assert await m.commanded(aid, {"dash", "rear"}) == {"dash", "rear"}
        engine = m.engine
        assert engine is not None
        row, decisions = await eventually(lambda: engine.ledger.activation(aid), timeout=5)
        assert row.position_source == "none"
        assert {d.device_id: d.reason for d in decisions} == {"dash": "paired", "rear": "paired"}


async def test_duplicate_event_activates_cameras_once(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        event = await m.agents["cew"].raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        assert await m.commanded(aid, {"bwc"}) == {"bwc"}
        engine = m.engine
        assert engine is not None
        await m.agents["cew"].resend_last_event()
        await eventually(lambda: engine.stats.duplicates == 1, timeout=5)
        # The repeat was seen and dropped (counted above): a second command, were one
        # sent for it, would reach the camera in this window.
        await quiet_for(0.3)
        assert engine.stats.duplicates == 1
        assert engine.stats.activations == 1
        assert len(m.agents["bwc"].received) == 1


async def test_command_arriving_5_s_late_still_commits_pre_roll_from_event_time(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=3.0)
        m.add("cew", DeviceKind.CEW)
        await m.ready()
        event_ts = time.time() - 5.0
        event = await m.agents["cew"].raise_event(
            "taser_draw", at=event_ts, position=m.agents["bwc"].position()
        )
        aid = activation_id("cew", event.eid)
        assert await m.commanded(aid, {"bwc"}) == {"bwc"}
        rc = m.agents["bwc"].received[0]
        assert rc.received_at - event_ts >= 5.0
        assert rc.result.pre_roll_covered_s == pytest.approx(30.0)
        assert rc.result.recording_id is not None
        start = first_segment_start(tmp_path, "bwc", rc.result.recording_id)
        # Counted from the event, not from the command: 30 s before event time, not before
        # the moment the command arrived (which would start 5 s later).
        assert event_ts - 31.0 < start <= event_ts - 30.0


async def test_local_first_sensor_starts_paired_camera_without_the_engine(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        m.add("cew", DeviceKind.CEW, paired=("bwc",), local=("bwc",))
        await m.ready()
        await m.agents["cew"].raise_event("taser_draw")
        camera = m.agents["bwc"].camera
        assert camera is not None
        assert camera.state is DeviceState.RECORDING
        assert camera.recording is not None
        assert camera.recording.activations[0].source == "cew"


async def test_engine_command_attaches_to_recording_started_locally(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        m.add("cew", DeviceKind.CEW, paired=("bwc",), local=("bwc",))
        await m.ready()
        event = await m.agents["cew"].raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        assert await m.commanded(aid, {"bwc"}) == {"bwc"}
        camera = m.agents["bwc"].camera
        assert camera is not None
        assert camera.recording is not None
        assert [a.aid for a in camera.recording.activations] == [f"local-{event.eid}", aid]


async def test_activation_record_reaches_an_integrator(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=4.0)
        m.add("gw", DeviceKind.GATEWAY, at=0.0)
        await m.ready()
        async with m.client() as integrator:
            await integrator.subscribe(m.topics.all_activations, qos=1)
            event = await m.agents["gw"].raise_event("emergency_lights")
            async with asyncio.timeout(5):
                message = await anext(aiter(integrator.messages))
        assert isinstance(message.payload, bytes)
        record = decode(Activation, message.payload, max_bytes=1 << 20)
        assert message.topic.value == m.topics.activations("emergency_lights")
        assert record.aid == activation_id("gw", event.eid)
        assert [(c.id, c.reason) for c in record.cameras] == [("bwc", ActivationReason.PROXIMITY)]
        assert record.lat == pytest.approx(CENTER[0])


async def test_camera_acknowledgement_lands_in_the_ledger(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=1.0)
        m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        event = await m.agents["cew"].raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        engine = m.engine
        assert engine is not None

        async def both_answers() -> list[AckRow]:
            rows = await engine.ledger.acks(aid)
            return rows if len(rows) >= 2 else []

        acks: list[AckRow] = await eventually(both_answers, timeout=5)
        # Two answers: "received" at once, then "recording" with the pre-roll it kept.
        assert [(a.device_id, a.status) for a in acks] == [
            ("bwc", "received"),
            ("bwc", "recording"),
        ]
        assert acks[1].pre_cov_s == pytest.approx(30.0)
        assert acks[1].recording is not None
        assert len(engine.deliveries) == 0  # nothing left to re-send


async def test_offline_camera_gets_its_command_on_reconnect(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """A paired camera that was briefly away gets the command from its broker session."""
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        await bwc.power_off()
        await m.tasks["bwc"]
        event = await m.agents["cew"].raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        engine = m.engine
        assert engine is not None
        # The broker acknowledged the command: it waits in the camera's session.
        await eventually(lambda: engine.stats.commands >= 1, timeout=5)
        assert bwc.received == []
        # The camera comes back with the same client id: the queued command arrives.
        m.start("bwc")
        assert await m.commanded(aid, {"bwc"}) == {"bwc"}


async def test_event_topic_names_the_sender_not_the_payload(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """A payload cannot claim another device: the source is the topic's device id."""
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        event = Event(eid="x1", type="taser_draw", ts=time.time(), lat=CENTER[0], lon=CENTER[1])
        async with m.client() as outsider:
            # Without a device registry, what a device is comes from its own presence.
            presence = Presence(online=True, device_kind=DeviceKind.CEW)
            await outsider.publish(m.topics.presence("intruder"), encode(presence), qos=1)
            engine = m.engine
            assert engine is not None
            await eventually(lambda: engine.fleet.kind_of("intruder") is DeviceKind.CEW, timeout=5)
            await outsider.publish(m.topics.event("intruder"), encode(event), qos=1)
        aid = activation_id("intruder", "x1")
        assert await m.commanded(aid, {"bwc"}) == {"bwc"}
        assert m.agents["bwc"].received[0].command.src == "intruder"


async def test_activation_is_mirrored_as_json_for_integrators_without_msgpack(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=4.0)
        m.add("gw", DeviceKind.GATEWAY, at=0.0)
        await m.ready()
        async with m.client() as integrator:
            await integrator.subscribe(f"{m.topics.prefix}/json/activations/#", qos=1)
            event = await m.agents["gw"].raise_event("collision")
            async with asyncio.timeout(5):
                message = await anext(aiter(integrator.messages))
        assert isinstance(message.payload, bytes)
        record = json.loads(message.payload)
        assert record["aid"] == activation_id("gw", event.eid)
        assert record["cameras"][0]["id"] == "bwc"


async def test_camera_30_1_ft_away_is_left_out_with_its_reason_in_ledger_and_json_record(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Centre mode: 29.9 ft is commanded, 30.1 ft is not, and the ledger and the JSON
    activation record both say why (too_far) and how far."""
    inside, outside = 29.9 * 0.3048, 30.1 * 0.3048
    centre = InclusionPolicy(mode=InclusionMode.CENTRE)
    async with mesh(agency, broker_port, tmp_path, policy=centre) as m:
        m.add("bwc-in", DeviceKind.BODY_CAM, at=inside, bearing=30)
        m.add("bwc-out", DeviceKind.BODY_CAM, at=outside, bearing=200)
        m.add("gw", DeviceKind.GATEWAY, at=0.0)
        await m.ready()
        engine = m.engine
        assert engine is not None
        async with m.client() as integrator:
            await integrator.subscribe(f"{m.topics.prefix}/json/activations/#", qos=1)
            event = await m.agents["gw"].raise_event("emergency_lights")
            async with asyncio.timeout(5):
                message = await anext(aiter(integrator.messages))
        aid = activation_id("gw", event.eid)
        assert isinstance(message.payload, bytes)
        record = json.loads(message.payload)
        assert record["aid"] == aid
        assert [c["id"] for c in record["cameras"]] == ["bwc-in"]
        assert record["excluded"] == 1
        (left,) = record["left_out"]
        assert (left["id"], left["reason"], left["device_kind"]) == (
            "bwc-out",
            "too_far",
            "body_cam",
        )
        assert left["dist"] == pytest.approx(outside, abs=0.01)
        stored = await engine.ledger.activation(aid)
        assert stored is not None
        rows = {d.device_id: d for d in stored[1]}
        assert rows["bwc-out"].commanded is False
        assert rows["bwc-out"].reason == "too_far"
        assert rows["bwc-out"].distance_m == pytest.approx(outside, abs=0.01)
        assert rows["bwc-in"].commanded is True


async def test_engine_moves_its_start_up_heap_out_of_the_collectors_sight(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """``freeze_heap``: full collections scan only what came after the warm-up (a 20-50
    ms pause at 10,000 devices otherwise), and nothing the engine needs is lost by it."""
    settings = replace(TEST_SETTINGS, freeze_heap=True)
    gc.unfreeze()
    try:
        async with mesh(agency, broker_port, tmp_path, settings=settings) as m:
            m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
            cew = m.add("cew", DeviceKind.CEW, paired=("bwc",))
            assert m.engine is not None
            async with asyncio.timeout(10):
                await m.engine.warmed.wait()
            assert gc.get_freeze_count() > 0
            await m.ready()
            event = await cew.raise_event("taser_draw")
            aid = activation_id("cew", event.eid)
            assert await m.commanded(aid, {"bwc"}) == {"bwc"}
    finally:
        gc.unfreeze()  # the rest of the test process keeps its usual collector
