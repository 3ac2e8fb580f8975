"""Hostile and broken input: rejected, counted, dead-lettered; the engine keeps serving."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import msgpack
import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import DeadLetter, DeviceKind, Event, activation_id
from tests.integration.harness import CENTER, mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def packed(**fields: object) -> bytes:
    data: bytes = msgpack.packb({"v": 1, **fields})
    return data


async def test_bad_messages_are_dead_lettered_and_good_ones_still_activate(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    now = time.time()
    lat, lon = CENTER
    bad = {
        "malformed": b"\xc1\xc1 not msgpack",
        "invalid": packed(eid="e1", type="taser_draw", ts=now, lat=math.nan, lon=lon),
        "oversized": packed(eid="e2", type="taser_draw", ts=now, by="x" * 20_000),
        "unknown_event_type": packed(eid="e3", type="alien_landing", ts=now),
        "future": packed(eid="e4", type="taser_draw", ts=now + 3600),
        "too_old": packed(eid="e5", type="taser_draw", ts=now - 86_400),
        "bad_version": msgpack.packb({"v": 9, "eid": "e6", "type": "taser_draw", "ts": now}),
    }
    out_of_range = packed(eid="e7", type="taser_draw", ts=now, lat=91.0, lon=lon)
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=2.0)
        m.add("cew", DeviceKind.CEW)
        await m.ready()
        assert m.engine is not None
        async with m.client() as operator:
            await operator.subscribe(m.topics.all_deadletters, qos=1)
            for payload in [*bad.values(), out_of_range]:
                await operator.publish(m.topics.event("cew"), payload, qos=1)
            # Telemetry with NaN coordinates must not corrupt the index either.
            await operator.publish(
                m.topics.telemetry("bwc"), packed(ts=now, lat=math.nan, lon=lon, state="buffering")
            )
            letters: list[DeadLetter] = []
            async with asyncio.timeout(5):
                async for message in operator.messages:
                    assert isinstance(message.payload, bytes)
                    letters.append(decode(DeadLetter, message.payload))
                    if len(letters) == len(bad) + 2:
                        break
        reasons = [letter.reason for letter in letters]
        assert set(bad) <= set(reasons)
        assert reasons.count("invalid") == 3  # NaN event, lat 91, NaN telemetry
        assert all(letter.topic.startswith(m.topics.prefix) for letter in letters)
        assert m.engine.stats.rejected_total == len(bad) + 2
        assert m.engine.stats.activations == 0
        # And the engine still serves a good trigger.
        event = Event(eid="good", type="taser_draw", ts=time.time(), lat=lat, lon=lon)
        async with m.client() as cew:
            await cew.publish(m.topics.event("cew"), encode(event), qos=1)
        aid = activation_id("cew", "good")
        assert await m.commanded(aid, {"bwc"}) == {"bwc"}


async def test_command_of_wrong_shape_is_refused_by_the_camera(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, engine=False) as m:
        bwc = m.add("bwc", DeviceKind.BODY_CAM, at=0.0)
        await m.ready()
        async with m.client() as attacker:
            await attacker.publish(m.topics.command("bwc"), b"\x93\x01\x02", qos=1)
            await attacker.publish(m.topics.command("bwc"), packed(aid="x", stop=True), qos=1)
        await eventually(lambda: bwc.stats.rejected_commands >= 2, timeout=5)
        assert bwc.received == []
        assert bwc.camera is not None
        assert bwc.camera.recording is None
