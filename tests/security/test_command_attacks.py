"""Attacks on the command channel, on a real Mosquitto: a camera records only for a
command its engine signed, for that camera, in that agency, not expired; everything
else is refused, answered, counted, and never recorded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import msgpack
import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    ActivationReason,
    Alert,
    AlertKind,
    Command,
    DeviceKind,
    DeviceState,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.devices.agent import DeviceAgent
from actimesh.security.signing import CommandSigner
from tests.integration.harness import CENTER, Mesh, mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def command(
    m: Mesh,
    device_id: str,
    *,
    aid: str = "act-attack-1",
    signer: CommandSigner | None = None,
    agency: str | None = None,
    sent_s_ago: float = 0.0,
    expiry_s: float = 300.0,
) -> Command:
    """A command to ``device_id``, signed with the mesh's engine key unless told otherwise."""
    sent = time.time() - sent_s_ago
    return (signer or m.signer).command(
        agency=agency or m.topics.agency,
        device_id=device_id,
        aid=aid,
        eid="e-1",
        src="cew",
        type="taser_draw",
        ets=sent,
        pre=30.0,
        reason=ActivationReason.PROXIMITY,
        dist=3.0,
        ts=sent,
        exp=sent + expiry_s,
    )


@asynccontextmanager
async def acks_of(m: Mesh, device_id: str) -> AsyncIterator[aiomqtt.Client]:
    async with m.client() as client:
        await client.subscribe(m.topics.ack(device_id), qos=1)
        yield client


async def next_ack(client: aiomqtt.Client, status: AckStatus) -> Ack:
    async with asyncio.timeout(5):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            ack = decode(Ack, message.payload)
            if ack.status is status:
                return ack
    raise AssertionError("unreachable")


async def refused(m: Mesh, device_id: str, payload: bytes, topic: str | None = None) -> Ack:
    """Publish ``payload`` on a camera's command topic; the refusal it answers with."""
    agent = m.agents[device_id]
    before = agent.stats.rejected_commands
    async with acks_of(m, device_id) as watcher, m.client() as attacker:
        await attacker.publish(topic or m.topics.command(device_id), payload, qos=1)
        ack = await next_ack(watcher, AckStatus.REFUSED)
    assert agent.stats.rejected_commands == before + 1
    return ack


def not_recording(agent: DeviceAgent) -> None:
    assert agent.received == []
    assert agent.camera is not None
    assert agent.camera.recording is None
    assert agent.camera.state is DeviceState.BUFFERING


async def test_command_signed_with_a_random_key_is_refused(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        bwc = m.add("bwc1", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        forged = command(m, "bwc1", signer=CommandSigner.generate())
        ack = await refused(m, "bwc1", encode(forged))
        assert ack.aid == forged.aid
        assert ack.detail is not None
        assert ack.detail.startswith("bad_signature:")
        assert bwc.stats.refused_commands["bad_signature"] == 1
        not_recording(bwc)


async def test_genuine_command_re_signed_by_another_key_is_refused(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """An attacker who captured a real command and signs a variant of it with a key of
    their own (a longer pre-roll, say) gets nothing."""
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc1", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc1",))
        bwc2 = m.add("bwc2", DeviceKind.BODY_CAM, at=500.0)
        await m.ready()
        async with m.client() as spy:
            await spy.subscribe(m.topics.command("bwc1"), qos=1)
            await cew.raise_event("taser_draw")
            async with asyncio.timeout(5):
                message = await anext(aiter(spy.messages))
        assert isinstance(message.payload, bytes)
        genuine = decode(Command, message.payload)
        rogue = CommandSigner.generate()
        variant = rogue.command(
            agency=m.topics.agency,
            device_id="bwc2",
            aid="act-rogue",
            eid=genuine.eid,
            src=genuine.src,
            type=genuine.type,
            ets=genuine.ets,
            pre=120.0,
            reason=genuine.reason,
            dist=genuine.dist,
            ts=genuine.ts,
            exp=genuine.exp,
        )
        ack = await refused(m, "bwc2", encode(variant))
        assert ack.detail is not None
        assert ack.detail.startswith("bad_signature:")
        # Splicing the genuine signature onto the variant does not help either.
        spliced = variant.model_copy(update={"sig": genuine.sig})
        ack = await refused(m, "bwc2", encode(spliced))
        assert ack.detail is not None
        assert ack.detail.startswith("bad_signature:")
        not_recording(bwc2)


async def test_command_for_one_camera_replayed_on_anothers_topic_is_refused(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """The signature binds the target camera: bwc1's real command is worthless to bwc2."""
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc1 = m.add("bwc1", DeviceKind.BODY_CAM, at=0.0)
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc1",))
        bwc2 = m.add("bwc2", DeviceKind.BODY_CAM, at=500.0)
        await m.ready()
        async with m.client() as spy:
            await spy.subscribe(m.topics.command("bwc1"), qos=1)
            event = await cew.raise_event("taser_draw")
            async with asyncio.timeout(5):
                message = await anext(aiter(spy.messages))
        assert isinstance(message.payload, bytes)
        aid = activation_id("cew", event.eid)
        assert await m.commanded(aid, {"bwc1"}) == {"bwc1"}
        assert bwc1.received[0].result.status is AckStatus.RECORDING
        ack = await refused(m, "bwc2", message.payload)
        assert ack.aid == aid
        assert ack.detail is not None
        assert ack.detail.startswith("bad_signature:")
        not_recording(bwc2)


async def test_command_signed_for_another_agency_is_refused(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        bwc = m.add("bwc1", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        elsewhere = command(m, "bwc1", agency="another-agency")
        ack = await refused(m, "bwc1", encode(elsewhere))
        assert ack.detail is not None
        assert ack.detail.startswith("bad_signature:")
        not_recording(bwc)


async def test_expired_command_is_refused_but_small_clock_skew_is_forgiven(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        bwc = m.add("bwc1", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        stale = command(m, "bwc1", aid="act-stale", sent_s_ago=400.0, expiry_s=300.0)
        ack = await refused(m, "bwc1", encode(stale))
        assert ack.aid == "act-stale"
        assert ack.detail is not None
        assert ack.detail.startswith("expired:")
        assert bwc.stats.refused_commands["expired"] == 1
        not_recording(bwc)
        # Expired two seconds ago by the camera's clock: within the skew allowance.
        skewed = command(m, "bwc1", aid="act-skewed", sent_s_ago=302.0, expiry_s=300.0)
        async with acks_of(m, "bwc1") as watcher, m.client() as engine:
            await engine.publish(m.topics.command("bwc1"), encode(skewed), qos=1)
            ack = await next_ack(watcher, AckStatus.RECORDING)
        assert ack.aid == "act-skewed"


async def test_unsigned_command_is_refused_with_its_reason(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        bwc = m.add("bwc1", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        fields = command(m, "bwc1", aid="act-unsigned").model_dump(exclude_none=True)
        del fields["sig"]
        ack = await refused(m, "bwc1", msgpack.packb(fields, use_bin_type=True))
        assert ack.aid == "act-unsigned"
        assert ack.detail is not None
        assert ack.detail.startswith("unsigned:")
        # A signature of the wrong size is no signature either (the model wants 64 bytes).
        fields["sig"] = b"\x00" * 63
        ack = await refused(m, "bwc1", msgpack.packb(fields, use_bin_type=True))
        assert ack.detail is not None
        assert ack.detail.startswith("invalid:")
        # Garbage names no activation to answer: counted and logged only.
        async with m.client() as attacker:
            await attacker.publish(m.topics.command("bwc1"), b"\xc1 not msgpack", qos=1)
        await eventually(lambda: bwc.stats.rejected_commands >= 3, timeout=5)
        assert bwc.stats.refused_commands == {"unsigned": 1, "invalid": 1, "malformed": 1}
        not_recording(bwc)


async def test_replayed_valid_command_is_a_duplicate_not_a_second_recording(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        bwc = m.add("bwc1", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        payload = encode(command(m, "bwc1", aid="act-once"))
        async with acks_of(m, "bwc1") as watcher, m.client() as engine:
            await engine.publish(m.topics.command("bwc1"), payload, qos=1)
            first = await next_ack(watcher, AckStatus.RECORDING)
            # Officer stops the recording; the same command, replayed byte for byte, must
            # neither start it again nor open a second recording.
            await bwc.stop_recording()
            await engine.publish(m.topics.command("bwc1"), payload, qos=1)
            again = await next_ack(watcher, AckStatus.RECORDING)
        assert again.rec == first.rec
        assert bwc.stats.duplicate_commands == 1
        assert [r.result.duplicate for r in bwc.received] == [False, True]
        assert {r.result.recording_id for r in bwc.received} == {first.rec}
        assert bwc.camera is not None
        assert bwc.camera.state is DeviceState.BUFFERING


async def test_camera_without_the_engine_key_refuses_and_the_engine_says_so(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """A camera provisioned with the wrong key refuses the genuine command. The engine
    does not take that as the camera's answer (forged commands provoke the same
    refusal): it keeps re-sending, and raises one alert naming the likely cause."""
    async with mesh(agency, broker_port, tmp_path) as m:
        bwc = m.add("bwc1", DeviceKind.BODY_CAM, at=0.0)
        bwc.verifier = CommandSigner.generate().verifier()
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc1",))
        await m.ready()
        assert m.engine is not None
        engine = m.engine
        async with m.client() as dispatch:
            await dispatch.subscribe(m.topics.alerts(AlertKind.REFUSED.value), qos=1)
            event = await cew.raise_event("taser_draw")
            async with asyncio.timeout(5):
                message = await anext(aiter(dispatch.messages))
        assert isinstance(message.payload, bytes)
        alert = decode(Alert, message.payload)
        aid = activation_id("cew", event.eid)
        assert (alert.aid, alert.device) == (aid, "bwc1")
        assert alert.detail is not None
        assert "public key" in alert.detail
        await eventually(
            lambda: engine.stats.retries >= 1 and bwc.stats.refused_commands["bad_signature"] >= 2,
            timeout=5,
        )
        assert engine.deliveries.get(aid, "bwc1") is not None  # still owed a command
        assert engine.stats.alerts[AlertKind.REFUSED.value] == 1
        not_recording(bwc)


async def test_refusal_of_an_unverifiable_command_does_not_end_a_real_delivery(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Anyone who can publish on a camera's command topic can make it refuse a forged
    command carrying a real activation id. The engine must not take that refusal as the
    camera's answer to the command it really sent; a real refusal does end it."""
    async with mesh(agency, broker_port, tmp_path) as m:
        cew = m.add("cew", DeviceKind.CEW, at=0.0)
        await m.ready()
        assert m.engine is not None
        engine = m.engine
        async with m.client() as mute:
            # A camera near the CEW that never answers by itself: we answer for it.
            presence = Presence(online=True, device_kind=DeviceKind.BODY_CAM)
            await mute.publish(m.topics.presence("mute"), encode(presence), qos=1, retain=True)
            fix = Telemetry(
                ts=time.time(), lat=CENTER[0], lon=CENTER[1], acc=0.0, state=DeviceState.BUFFERING
            )
            await mute.publish(m.topics.telemetry("mute"), encode(fix))
            await eventually(lambda: "mute" in engine.index, timeout=5)
            event = await cew.raise_event("taser_draw")
            aid = activation_id("cew", event.eid)
            await eventually(lambda: engine.deliveries.get(aid, "mute") is not None, timeout=5)

            async def answer(status: AckStatus, detail: str | None) -> None:
                before = engine.stats.acks
                ack = Ack(aid=aid, status=status, pre_cov=0.0, ts=time.time(), detail=detail)
                await mute.publish(m.topics.ack("mute"), encode(ack), qos=1)
                await eventually(lambda: engine.stats.acks != before, timeout=5)

            for _ in range(2):
                await answer(AckStatus.REFUSED, "bad_signature: not signed by this engine")
            assert engine.deliveries.get(aid, "mute") is not None
            assert engine.stats.unverified_refusals == 2
            assert engine.stats.alerts[AlertKind.REFUSED.value] == 1  # once per delivery
            await answer(AckStatus.REFUSED, "camera is off")
            assert engine.deliveries.get(aid, "mute") is None
            assert engine.stats.alerts[AlertKind.REFUSED.value] == 2
