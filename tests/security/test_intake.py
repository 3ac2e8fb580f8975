"""The engine's trigger intake under attack, on a real Mosquitto: who may raise what,
replays, floods and storms. Every refusal is counted, dead-lettered and told to the
device; no refusal ever costs another officer's trigger."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest

from actimesh.audit import verify_ledger
from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    Alert,
    AlertKind,
    Confirmation,
    ConfirmStatus,
    DeadLetter,
    DeviceKind,
    DeviceState,
    Event,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.devices.agent import DeviceAgent
from actimesh.ledger import SqliteLedger
from actimesh.triggers.engine import Engine
from actimesh.triggers.fleet import StaticDirectory
from tests.integration.flood_probe import flooding
from tests.integration.harness import CENTER, DISPATCH_SOURCE, TEST_SETTINGS, Mesh, mesh
from tests.waiting import eventually, quiet_for

pytestmark = pytest.mark.integration


async def drain(client: aiomqtt.Client, quiet_s: float = 0.3) -> list[aiomqtt.Message]:
    """Every message ``client`` receives until it has been quiet for ``quiet_s``."""
    got: list[aiomqtt.Message] = []
    while True:
        try:
            async with asyncio.timeout(quiet_s):
                got.append(await anext(aiter(client.messages)))
        except TimeoutError:
            return got


def letters(messages: list[aiomqtt.Message]) -> list[DeadLetter]:
    out = []
    for message in messages:
        assert isinstance(message.payload, bytes)
        out.append(decode(DeadLetter, message.payload))
    return out


def engine_of(m: Mesh) -> Engine:
    assert m.engine is not None
    return m.engine


# ---------------------------------------------------------------------- floods


async def test_flooding_cew_is_rate_limited_while_another_officers_taser_draw_activates(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc-a", DeviceKind.BODY_CAM, at=0.0)
        flood = m.add("cew-flood", DeviceKind.CEW, paired=("bwc-a",))
        m.add("bwc-b", DeviceKind.BODY_CAM, at=400.0)
        cew_b = m.add("cew-b", DeviceKind.CEW, paired=("bwc-b",))
        await m.ready()
        engine = engine_of(m)
        burst = int(engine.storm.limits.device_burst)
        async with m.client() as operator:
            await operator.subscribe(m.topics.all_deadletters, qos=1)
            await operator.subscribe(m.topics.alerts(AlertKind.STORM.value), qos=1)
            for _ in range(3 * burst):
                await flood.raise_event("taser_draw")
            # Refused events are confirmed as rejected: the device stops re-sending them.
            await eventually(lambda: flood.unconfirmed == 0)
            messages = await drain(operator)
        refused = flood.stats.events_rejected
        assert flood.stats.events_confirmed + refused == 3 * burst
        assert refused >= 3 * burst - burst - 1  # at most one token refilled meanwhile
        # The device re-sends what is not confirmed within 0.3 s (the harness's setting);
        # on a loaded machine a refusal can take longer, and each copy is refused again.
        limited = engine.stats.rejected["rate_limited"]
        assert refused <= limited <= refused + flood.stats.events_resent
        assert engine.stats.activations == 3 * burst - refused
        alerts = [
            decode(Alert, x.payload)
            for x in messages
            if "/alerts/" in x.topic.value and isinstance(x.payload, bytes)
        ]
        assert [(a.alert, a.device) for a in alerts] == [(AlertKind.STORM, "cew-flood")]
        dead = letters([x for x in messages if "/deadletter/" in x.topic.value])
        assert dead
        assert {d.reason for d in dead} == {"rate_limited"}
        # Meanwhile another officer draws: activated at once, the flood cost it nothing.
        event = await cew_b.raise_event("taser_draw")
        aid = activation_id("cew-b", event.eid)
        assert await m.commanded(aid, {"bwc-b"}) == {"bwc-b"}
        await eventually(lambda: cew_b.stats.events_confirmed == 1)


async def test_global_storm_bound_refuses_activations_beyond_it(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    settings = replace(
        TEST_SETTINGS, activations_burst=2.0, activations_per_s=0.001, quiet_reserve=0.0
    )
    async with mesh(agency, broker_port, tmp_path, settings=settings) as m:
        cews = [m.add(f"cew-{n}", DeviceKind.CEW, at=100.0 * n) for n in range(3)]
        await m.ready()
        engine = engine_of(m)
        for cew in cews:
            await cew.raise_event("taser_draw")
            await eventually(lambda cew=cew: cew.unconfirmed == 0)  # type: ignore[misc]
        assert [c.stats.events_confirmed for c in cews] == [1, 1, 0]
        assert cews[2].stats.events_rejected == 1
        assert engine.stats.rejected["storm"] == 1
        assert engine.stats.alerts[AlertKind.STORM.value] == 1


# ---------------------------------------------------------------------- who may raise what


async def test_body_cam_raising_emergency_lights_is_refused(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        bystander = m.add("bwc-near", DeviceKind.BODY_CAM, at=3.0)
        await m.ready()
        engine = engine_of(m)
        async with m.client() as operator:
            await operator.subscribe(m.topics.all_deadletters, qos=1)
            await bwc.raise_event("emergency_lights")
            await eventually(lambda: bwc.unconfirmed == 0)
            (letter,) = letters(await drain(operator))
        assert bwc.stats.events_rejected == 1
        assert letter.reason == "sender_not_allowed"
        assert "bwc is body_cam; emergency_lights may be raised by gateway" in letter.detail
        assert engine.stats.rejected == {"sender_not_allowed": 1}
        assert engine.stats.activations == 0
        assert bystander.received == []
        assert await engine.ledger.activation_ids() == []


async def test_only_the_dispatch_source_may_raise_a_zone(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m:
        gw = m.add("gw", DeviceKind.GATEWAY, at=0.0)
        m.add("bwc-40m", DeviceKind.BODY_CAM, at=40.0)
        m.add("bwc-60m", DeviceKind.BODY_CAM, at=60.0, bearing=180)
        await m.ready()
        engine = engine_of(m)
        await gw.raise_event("dispatch_zone", radius=1000.0)
        await eventually(lambda: gw.unconfirmed == 0)
        assert gw.stats.events_rejected == 1
        assert engine.stats.rejected == {"sender_not_allowed": 1}
        # The same request from the dispatch console's device id goes through, with the
        # radius it asked for (bounded by the rule).
        zone = Event(
            eid="cad-1",
            type="dispatch_zone",
            ts=time.time(),
            lat=CENTER[0],
            lon=CENTER[1],
            radius=50.0,
            by="Dispatcher Kim",
        )
        async with m.client() as dispatch:
            await dispatch.publish(m.topics.event(DISPATCH_SOURCE), encode(zone), qos=1)
        aid = activation_id(DISPATCH_SOURCE, "cad-1")
        assert await m.commanded(aid, {"bwc-40m"}) == {"bwc-40m"}
        assert engine.stats.rejected == {"sender_not_allowed": 1}


async def test_registry_has_the_last_word_on_what_a_device_is(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """A body camera that announces itself as a gateway, or a device the registry does
    not know, cannot raise a gateway's trigger; the real gateway can."""
    directory = StaticDirectory()
    directory.add("bwc", DeviceKind.BODY_CAM, "u1")
    directory.add("gw", DeviceKind.GATEWAY, "u1")
    directory.add("liar", DeviceKind.BODY_CAM, "u2")
    async with mesh(agency, broker_port, tmp_path, directory=directory) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=2.0)
        gw = m.add("gw", DeviceKind.GATEWAY, at=0.0)
        liar = m.add("liar", DeviceKind.GATEWAY, at=1.0)  # its presence says gateway
        await m.ready()
        engine = engine_of(m)
        assert engine.fleet.contradictions["kind"] >= 1
        await liar.raise_event("emergency_lights")
        await eventually(lambda: liar.unconfirmed == 0)
        assert liar.stats.events_rejected == 1
        rogue = Event(
            eid="r1", type="emergency_lights", ts=time.time(), lat=CENTER[0], lon=CENTER[1]
        )
        async with m.client() as outsider:
            await outsider.publish(m.topics.event("rogue"), encode(rogue), qos=1)
        await eventually(lambda: engine.stats.rejected["sender_not_allowed"] == 2)
        event = await gw.raise_event("emergency_lights")
        aid = activation_id("gw", event.eid)
        # The liar is registered as a body camera: commanded as one, whatever it says.
        assert await m.commanded(aid, {"bwc"}) == {"bwc"}
        found = await engine.ledger.activation(aid)
        assert found is not None
        assert {d.device_id: d.device_kind for d in found[1]} == {
            "bwc": "body_cam",
            "liar": "body_cam",
        }


async def test_unregistered_ids_do_not_grow_the_fleet(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Past a wrong ACL, made-up device ids could fill the fleet and the index without
    bound. With a registry they are refused (and counted) before any room is made."""
    directory = StaticDirectory()
    directory.add("bwc", DeviceKind.BODY_CAM, "u1")
    async with mesh(agency, broker_port, tmp_path, directory=directory) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        engine = engine_of(m)
        now = time.time()
        async with m.client() as outsider:
            for n in range(20):
                fix = Telemetry(
                    ts=now, state=DeviceState.BUFFERING, lat=CENTER[0], lon=CENTER[1], acc=3.0
                )
                await outsider.publish(m.topics.telemetry(f"ghost-{n}"), encode(fix))
            hello = Presence(online=True, ts=now, device_kind=DeviceKind.BODY_CAM)
            await outsider.publish(m.topics.presence("ghost-x"), encode(hello), qos=1)
        await eventually(lambda: engine.stats.rejected["unregistered"] == 21)
        assert {d.device_id for d in engine.fleet} == {"bwc"}
        assert "ghost-0" not in engine.index
        assert "bwc" in engine.index


# ---------------------------------------------------------------------- replays


async def test_replayed_event_is_refused_after_an_engine_restart(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        async with SqliteLedger(tmp_path / "engine.sqlite3") as ledger:
            async with m.running_engine(ledger) as first:
                await eventually(first.warmed.is_set)
                event = await cew.raise_event("taser_draw")
                aid = activation_id("cew", event.eid)
                assert await m.commanded(aid, {"bwc"}) == {"bwc"}
                await eventually(lambda: cew.unconfirmed == 0)
            # A fresh engine: nothing in memory; the same bytes again.
            async with m.running_engine(ledger) as second:
                await eventually(second.warmed.is_set)
                await cew.resend_last_event()
                await eventually(lambda: second.stats.duplicates == 1)
                await quiet_for(0.3)  # room for a command, were one sent
                assert second.stats.activations == 0
                assert len(bwc.received) == 1
                assert await ledger.activation_ids() == [aid]


async def test_replay_the_dedupe_memory_forgot_is_answered_by_the_ledger(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    settings = replace(TEST_SETTINGS, dedupe_memory=2)
    async with mesh(agency, broker_port, tmp_path, settings=settings) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        engine = engine_of(m)
        payloads = []
        async with m.client() as cew:
            for n in range(3):
                event = Event(eid=f"e{n}", type="taser_draw", ts=time.time())
                payloads.append(encode(event))
                await cew.publish(m.topics.event("cew"), payloads[-1], qos=1)
                await m.commanded(activation_id("cew", f"e{n}"), {"bwc"}, quiet_s=0)
            await eventually(lambda: engine.stats.activations == 3)
            assert len(engine.dedupe) == 2  # e0 is forgotten here ...
            await cew.publish(m.topics.event("cew"), payloads[0], qos=1)
            await eventually(lambda: engine.stats.duplicates == 1)
        assert engine.stats.ledger_lookups == 1  # ... but not by the ledger
        # The replay was seen as a duplicate (counted above): room for a second
        # activation or command, were one made.
        await quiet_for(0.3)
        assert engine.stats.activations == 3
        assert len(bwc.received) == 3


# ---------------------------------------------------------------------- merging


async def _recording(engine: Engine, *device_ids: str) -> None:
    def all_recording() -> bool:
        infos = [engine.fleet.get(d) for d in device_ids]
        return all(i is not None and i.state is DeviceState.RECORDING for i in infos)

    await eventually(all_recording)


MERGING = replace(TEST_SETTINGS, merge_window_s=10.0)
#: No control budget: floods reach the refusal paths they test.
UNBUDGETED = replace(TEST_SETTINGS, control_burst=1e9, control_rate_per_s=1e9)


async def test_repeated_trigger_joins_the_activation_its_cameras_are_recording(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, settings=MERGING) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        near = m.add("bwc-near", DeviceKind.BODY_CAM, at=5.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        engine = engine_of(m)
        first = await cew.raise_event("taser_draw")
        aid = activation_id("cew", first.eid)
        assert await m.commanded(aid, {"bwc", "bwc-near"}) == {"bwc", "bwc-near"}
        await _recording(engine, "bwc", "bwc-near")
        await eventually(lambda: cew.unconfirmed == 0)
        async with m.client() as watcher:
            await watcher.subscribe(m.topics.confirm("cew"), qos=1)
            second = await cew.raise_event("taser_draw")
            async with asyncio.timeout(5):
                message = await anext(aiter(watcher.messages))
        assert isinstance(message.payload, bytes)
        confirmation = decode(Confirmation, message.payload)
        assert (confirmation.eid, confirmation.status) == (second.eid, ConfirmStatus.ACTIVATED)
        assert confirmation.aid == aid  # the incident it joined
        assert engine.stats.merged == 1
        # The repeat was merged (confirmed and counted above): room for a command, were
        # one sent.
        await quiet_for(0.3)
        assert (len(bwc.received), len(near.received)) == (1, 1)
        assert await engine.ledger.activation_ids() == [aid]
        # The repeat is in the ledger, tied to the activation, and the chain verifies.
        report = await asyncio.to_thread(verify_ledger, tmp_path / "ledger.sqlite3")
        assert report.ok, report.summary()
        # Re-sent, the merged trigger is confirmed with the same activation again.
        await cew.resend_last_event()
        await eventually(lambda: engine.stats.duplicates == 1)


async def test_second_incident_reaching_another_camera_is_not_merged(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, settings=MERGING) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        engine = engine_of(m)
        first = await cew.raise_event("taser_draw")
        assert await m.commanded(activation_id("cew", first.eid), {"bwc"}) == {"bwc"}
        await _recording(engine, "bwc")
        # Another officer walks up: a second draw now reaches a camera the first did not.
        m.add("bwc-new", DeviceKind.BODY_CAM, at=4.0)
        await m.ready()
        second = await cew.raise_event("taser_draw")
        aid = activation_id("cew", second.eid)
        assert await m.commanded(aid, {"bwc", "bwc-new"}) == {"bwc", "bwc-new"}
        assert engine.stats.merged == 0


async def test_camera_stopped_by_its_officer_is_commanded_again_not_merged(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, settings=MERGING) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc",))
        await m.ready()
        engine = engine_of(m)
        first = await cew.raise_event("taser_draw")
        assert await m.commanded(activation_id("cew", first.eid), {"bwc"}) == {"bwc"}
        await _recording(engine, "bwc")
        await bwc.stop_recording()

        def stopped() -> bool:
            info = engine.fleet.get("bwc")
            return info is not None and info.state is DeviceState.BUFFERING

        await eventually(stopped)
        second = await cew.raise_event("taser_draw")
        aid = activation_id("cew", second.eid)
        assert await m.commanded(aid, {"bwc"}) == {"bwc"}
        assert engine.stats.merged == 0
        assert bwc.camera is not None
        assert bwc.camera.state is DeviceState.RECORDING


async def test_acks_for_activations_that_did_not_command_the_camera_are_counted_not_written(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """A stolen camera floods acknowledgements (for another officer's activation, for
    made-up ones, and a cancel of an activation it was never part of): all counted,
    none written, and the ledger holds only the real cameras' answers. (The control
    budget is lifted, so every one reaches the acknowledgement path.)"""
    async with mesh(agency, broker_port, tmp_path, settings=UNBUDGETED) as m:
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc-own",))
        m.add("bwc-own", DeviceKind.BODY_CAM, at=0.0)
        m.add("bwc-stolen", DeviceKind.BODY_CAM, at=500.0)
        await m.ready()
        engine = engine_of(m)
        event = await cew.raise_event("taser_draw")
        aid = activation_id("cew", event.eid)
        assert await m.commanded(aid, {"bwc-own"}) == {"bwc-own"}
        await eventually(lambda: len(m.agents["bwc-own"].received) == 1)
        ledger_path = tmp_path / "ledger.sqlite3"
        async with SqliteLedger(ledger_path) as reader:
            await eventually(lambda: reader.acks(aid))
            before = len(await reader.acks(aid))
        now = time.time()
        forged = [Ack(aid=aid, status=AckStatus.RECORDING, pre_cov=30.0, ts=now)]
        forged += [
            Ack(aid=f"act-{n:024x}", status=AckStatus.RECORDING, pre_cov=30.0, ts=now)
            for n in range(200)
        ]
        forged.append(
            Ack(aid=aid, status=AckStatus.CANCELLED, pre_cov=30.0, ts=now, by="officer 9")
        )
        async with m.client() as stolen:
            for ack in forged:
                await stolen.publish(m.topics.ack("bwc-stolen"), encode(ack), qos=1)
        # Answers naming no activation in the ledger wait (4 s) for it to be written first.
        await eventually(lambda: engine.stats.acks_not_commanded == len(forged), timeout=20)
        async with SqliteLedger(ledger_path) as reader:
            acks = await reader.acks(aid)
        assert len(acks) == before
        assert {a.device_id for a in acks} == {"bwc-own"}
        assert engine.stats.ledger_failures == 0
    assert verify_ledger(ledger_path).ok


async def test_a_flood_of_refused_events_is_answered_without_holding_up_other_triggers(
    agency: str, broker_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stolen body camera floods TASER draws it may not raise. Every one is refused
    and counted; its refusals go out at QoS 0, never waiting for the broker (waiting
    for each PUBACK held the control link: seconds of delay for other officers); the
    log and the dead letters grow at their rate limit, not the flood's; and another
    officer's draw is commanded. Latency under floods is measured by
    ``python -m tests.integration.flood_probe`` (docs/PERFORMANCE.md). The control
    budget is lifted, so every one reaches the refusal path."""
    flood = 3000
    async with mesh(agency, broker_port, tmp_path, settings=UNBUDGETED) as m:
        cew, engine = await _with_thief(m)
        async with m.client() as stolen:
            await stolen.subscribe(m.topics.confirm("bwc-stolen"), qos=1)
            await _flood_draws(m, stolen, flood)
            draw = await cew.raise_event("taser_draw")
            aid = activation_id("cew", draw.eid)
            assert await m.commanded(aid, {"bwc-own"}) == {"bwc-own"}
            await eventually(lambda: engine.stats.rejected["sender_not_allowed"] == flood)
            first = await anext(aiter(stolen.messages))
        assert first.qos == 0
        assert isinstance(first.payload, bytes)
        assert decode(Confirmation, first.payload).status is ConfirmStatus.REJECTED
        suppressed = engine.stats.deadletters_suppressed
        assert suppressed > 0
        logged = [r for r in caplog.records if r.getMessage().startswith("rejected ")]
        assert len(logged) == flood - suppressed  # one line per dead letter, no more


async def test_a_device_over_its_control_budget_is_refused_unread(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Past ``control_burst`` (100) messages at once, a device's events, acks and
    presence are refused before they are decoded, and another officer's draw is still
    commanded."""
    flood = 500
    async with mesh(agency, broker_port, tmp_path) as m:
        cew, engine = await _with_thief(m)
        async with m.client() as stolen:
            await _flood_draws(m, stolen, flood)
        draw = await cew.raise_event("taser_draw")
        aid = activation_id("cew", draw.eid)
        assert await m.commanded(aid, {"bwc-own"}) == {"bwc-own"}
        await eventually(
            lambda: (
                engine.stats.rejected["over_budget"] + engine.stats.rejected["sender_not_allowed"]
                == flood
            )
        )
        # About the burst got through to be refused on its merits; the rest, unread.
        assert 100 <= engine.stats.rejected["sender_not_allowed"] < 200, engine.stats.rejected


async def test_a_stolen_cew_flooding_without_pause_does_not_silence_another_officer(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """A stolen CEW raises TASER draws of its own as fast as its link allows, from a
    process of its own, and never stops; the draws within its budget command the
    camera beside it. Read through aiomqtt, the engine fell behind and another
    officer's draw was not commanded within 120 s. Now the flood is refused as fast as
    it arrives and devices take turns: the draw is commanded while the flood goes on.
    (The storm limits are lifted, as the probe's were: the thief's burst is planned in
    full.)"""
    settings = replace(
        TEST_SETTINGS, merge_window_s=0.0, device_burst=1000.0, device_rate_per_s=100.0
    )
    async with mesh(agency, broker_port, tmp_path, settings=settings) as m:
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc-own",))
        m.add("bwc-own", DeviceKind.BODY_CAM, at=0.0)
        m.add("cew-stolen", DeviceKind.CEW, at=900.0)
        m.add("bwc-stolen", DeviceKind.BODY_CAM, at=900.0)  # what the thief's draws command
        await m.ready()
        engine = engine_of(m)
        async with flooding(broker_port, m.topics.event("cew-stolen"), "rate", nice=False) as f:
            await eventually(lambda: engine.stats.rejected["over_budget"] > 5_000, timeout=30)
            draw = await cew.raise_event("taser_draw")
            aid = activation_id("cew", draw.eid)
            assert await m.commanded(aid, {"bwc-own"}, quiet_s=0) == {"bwc-own"}
            refused = engine.stats.rejected["over_budget"]
            await eventually(lambda: engine.stats.rejected["over_budget"] > refused + 1_000)
            assert f.returncode is None  # the flood went on all along
        assert engine.control_link.stats.refused >= refused
        assert engine.stats.handler_errors == 0


async def _flood_draws(m: Mesh, stolen: aiomqtt.Client, count: int) -> None:
    """``count`` TASER draws from the stolen body camera, at QoS 0, as fast as it can."""
    now = time.time()
    for i in range(count):
        event = Event(eid=f"flood-{i}", type="taser_draw", ts=now)
        await stolen.publish(m.topics.event("bwc-stolen"), encode(event), qos=0)


async def _with_thief(m: Mesh) -> tuple[DeviceAgent, Engine]:
    """A CEW with its camera beside it and a stolen camera far away; the engine."""
    cew = m.add("cew", DeviceKind.CEW, paired=("bwc-own",))
    m.add("bwc-own", DeviceKind.BODY_CAM, at=0.0)
    m.add("bwc-stolen", DeviceKind.BODY_CAM, at=900.0)
    await m.ready()
    return cew, engine_of(m)
