"""Measure what one device's flood costs another officer's trigger (not a test).

    .venv/bin/python -m tests.integration.flood_probe --kind events --count 20000

starts its own Mosquitto and a mesh (engine, a CEW and its body camera, and a stolen
body camera), has the stolen camera publish ``--count`` messages as fast as its link
allows: TASER draws it may not raise (``events``) or acknowledgements for activations
that never commanded it (``acks``); then the CEW draws, and prints how long after the
flood was sent its camera was commanded, beside the same figure with no flood (the
baseline, measured first in the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from actimesh.broker.codec import encode
from actimesh.broker.messages import Ack, AckStatus, DeviceKind, Event
from actimesh.broker.mosquitto import ManagedMosquitto, MosquittoConfig, free_port
from actimesh.triggers.fanout import activation_id
from tests.integration.harness import mesh
from tests.waiting import eventually


def _flood_message(kind: str, i: int) -> bytes:
    now = time.time()
    if kind == "events":
        return encode(Event(eid=f"flood-{i}", type="taser_draw", ts=now))
    return encode(Ack(aid=f"act-{i:024x}", status=AckStatus.RECORDING, pre_cov=30.0, ts=now))


async def _draw_latency(port: int, root: Path, kind: str, count: int) -> tuple[float, float]:
    """(seconds to send the flood, seconds from the draw to its command)."""
    async with mesh(f"probe{count}", port, root) as m:
        cew = m.add("cew", DeviceKind.CEW, paired=("bwc-own",))
        m.add("bwc-own", DeviceKind.BODY_CAM, at=0.0)
        m.add("bwc-stolen", DeviceKind.BODY_CAM, at=900.0)
        await m.ready()
        assert m.engine is not None
        await m.engine.warmed.wait()
        topic = m.topics.event if kind == "events" else m.topics.ack
        async with m.client() as stolen:
            started = time.monotonic()
            for i in range(count):
                await stolen.publish(topic("bwc-stolen"), _flood_message(kind, i), qos=0)
            sent = time.monotonic() - started
        event = await cew.raise_event("taser_draw")
        raised = time.monotonic()
        aid = activation_id("cew", event.eid)
        own = m.agents["bwc-own"]
        await eventually(lambda: any(r.command.aid == aid for r in own.received), 120, 0.002)
        return sent, time.monotonic() - raised


async def _main(kind: str, count: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="actimesh-flood-"))
    broker = ManagedMosquitto(
        MosquittoConfig(data_dir=root / "broker", port=free_port(), insecure_anonymous=True)
    )
    await broker.astart()
    try:
        _, base = await _draw_latency(broker.port, root / "base", "events", 0)
        sent, flooded = await _draw_latency(broker.port, root / "flood", kind, count)
    finally:
        await broker.astop()
    print(  # noqa: T201 - the probe's one line of output
        f"{kind} flood of {count:,} sent in {sent:.2f} s; draw commanded after "
        f"{flooded * 1000:.0f} ms (no flood: {base * 1000:.0f} ms; ratio {flooded / base:.1f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("events", "acks"), default="events")
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(_main(args.kind, args.count))
