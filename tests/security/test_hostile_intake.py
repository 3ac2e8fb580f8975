"""Hostile payloads on a device's event topic, through a real broker and engine.

For each class: the engine rejects it with the expected reason, counts it in
``engine.stats.rejected``, republishes it on the dead-letter topic, and then still
activates the cameras around the next valid trigger from the same device. (The fuzzer
drives the same engine code in-process a million times; this is the wire end to end.)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import DeadLetter, DeviceKind, Event, activation_id
from tests.integration.harness import CENTER, mesh

pytestmark = pytest.mark.integration

LAT, LON = CENTER


def event(now: float, **changes: object) -> dict[str, object]:
    return {
        "v": 1,
        "eid": "hostile",
        "type": "taser_draw",
        "ts": now,
        "lat": LAT,
        "lon": LON,
        **changes,
    }


def packed(body: dict[str, object]) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def with_raw(now: float, name: str, raw: bytes) -> bytes:
    """A valid event map whose field ``name`` is the raw msgpack ``raw``."""
    body = {k: v for k, v in event(now).items() if k != name}
    pairs = b"".join(packed({k: v})[1:] for k, v in body.items())  # each a one-entry map
    return bytes((0x80 | (len(body) + 1),)) + pairs + packed({name: 0})[1:-1] + raw


def duplicate_version(now: float) -> bytes:
    body = packed(event(now))
    return bytes((body[0] + 1,)) + body[1:] + b"\xa1v\x02"  # "v" again, now 2


Build = Callable[[float], bytes]
CLASSES: dict[str, tuple[Build, str]] = {
    "malformed-msgpack": (lambda now: b"\xc1\xc1 not msgpack", "malformed"),
    "truncated": (lambda now: packed(event(now))[:-3], "malformed"),
    "trailing-bytes": (lambda now: packed(event(now)) + b"\x00", "malformed"),
    "non-map-top-level": (lambda now: msgpack.packb(["taser_draw", now]), "malformed"),
    "duplicate-key": (duplicate_version, "malformed"),
    "invalid-utf8": (lambda now: with_raw(now, "type", b"\xa2\xc0\xaf"), "malformed"),
    "timestamp-extension": (lambda now: with_raw(now, "ts", b"\xd6\xff" + bytes(4)), "malformed"),
    "deep-nesting": (lambda now: b"\x91" * 5000 + b"\xc0", "malformed"),
    # 1,000 levels parse; showing such a version once raised RecursionError in the engine.
    "deep-value": (lambda now: with_raw(now, "v", b"\x91" * 1000 + b"\x01"), "bad_version"),
    "huge-array": (lambda now: packed(event(now, by=[None] * 3000)), "malformed"),
    "huge-string": (lambda now: packed(event(now, by="x" * 15_000)), "invalid"),
    "wrong-type": (lambda now: packed(event(now, ts=str(now))), "invalid"),
    "nan": (lambda now: packed(event(now, lat=math.nan)), "invalid"),
    "infinity": (lambda now: packed(event(now, ts=math.inf)), "invalid"),
    "lat-91": (lambda now: packed(event(now, lat=91.0)), "invalid"),
    "lon-181": (lambda now: packed(event(now, lon=181.0)), "invalid"),
    "negative-accuracy": (lambda now: packed(event(now, acc=-1.0)), "invalid"),
    "unknown-field": (lambda now: packed(event(now, sender="bwc")), "invalid"),
    "forged-log-line": (lambda now: packed(event(now, **{"x\nINFO ok": 1})), "invalid"),
    "far-past": (lambda now: packed(event(now - 86_400)), "too_old"),
    "far-future": (lambda now: packed(event(now + 3600)), "future"),
    "beyond-2100": (lambda now: packed(event(5e9)), "invalid"),
    "oversized": (lambda now: packed(event(now, by="x" * 20_000)), "oversized"),
    "bad-version": (lambda now: packed(event(now, v=2)), "bad_version"),
}


@pytest.mark.parametrize("name", sorted(CLASSES))
async def test_hostile_event_is_rejected_counted_dead_lettered_and_harmless(
    name: str, agency: str, broker_port: int, tmp_path: Path
) -> None:
    build, reason = CLASSES[name]
    async with mesh(agency, broker_port, tmp_path) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=2.0)
        m.add("cew", DeviceKind.CEW)
        await m.ready()
        engine = m.engine
        assert engine is not None
        payload = build(time.time())
        async with m.client() as attacker:
            await attacker.subscribe(m.topics.all_deadletters, qos=1)
            await attacker.publish(m.topics.event("cew"), payload, qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(attacker.messages))
        assert isinstance(message.payload, bytes)
        letter = decode(DeadLetter, message.payload)
        assert (letter.reason, str(message.topic)) == (reason, m.topics.deadletter(reason))
        assert letter.topic == m.topics.event("cew")
        assert letter.size == len(payload)
        assert letter.head == payload[:64].hex()
        assert "\n" not in letter.detail
        assert dict(engine.stats.rejected) == {reason: 1}
        assert engine.stats.activations == 0
        # The next valid trigger from the same device still activates the camera nearby.
        good = Event(eid="good", type="taser_draw", ts=time.time(), lat=LAT, lon=LON)
        async with m.client() as cew:
            await cew.publish(m.topics.event("cew"), encode(good), qos=1)
        assert await m.commanded(activation_id("cew", "good"), {"bwc"}, quiet_s=0.1) == {"bwc"}
        assert engine.stats.rejected_total == 1
