"""Measure what one device's flood costs another officer's trigger (not a test).

    .venv/bin/python -m tests.integration.flood_probe --kind events --count 20000
    .venv/bin/python -m tests.integration.flood_probe --kind telemetry --during 40
    .venv/bin/python -m tests.integration.flood_probe --kind rate --during 40 --up

starts its own Mosquitto and a mesh (engine, a CEW and its body camera, and a stolen
body camera), has the stolen camera publish ``--count`` messages as fast as its link
allows: TASER draws it may not raise (``events``), acknowledgements for activations
that never commanded it (``acks``), position fixes (``telemetry``) or presence
announcements (``presence``); with ``rate`` a stolen CEW floods TASER draws of its own,
far over its rate. Then the CEW draws, and prints how long after the
flood was sent its camera was commanded, beside the same figure with no flood (the
baseline, measured first in the same run). With ``--during N`` the stolen device floods
without pause from a process of its own while the CEW draws N times, and the probe
prints the p99 of those draws beside the p99 of N draws with no flood; add ``--up`` to
run it against `actimesh up` itself (secured broker, the flooder logged in as a
registered device, quarantine on), or ``--broker-only`` to time, in the same way, the
broker's own two hops (publisher → broker → subscriber) with no engine at all: the
floor under any trigger's latency during that flood. ``--cluster`` runs it on a
three-node NATS cluster with the engine ``cluster up`` builds, quarantine on unless
``--no-quarantine`` (tests/integration/cluster_world.py): the thief speaks MQTT 3.1.1
from a raw socket with 256 QoS 1 messages in flight (QoS 0 for fixes), as fast as the
listener takes them (tests/integration/flood_311.py)::

    .venv/bin/python -m tests.integration.flood_probe --kind acks --during 40 --cluster

Draws start ``--gap`` seconds apart (0.05 by default) in both phases: the CEW and its
camera stay within their own control budgets (each command is answered twice), as an
officer's devices do. Against `up`, ten officers draw in turn, so the default storm
limits (10 draws at once per device) hold for every device, the thief's included, and
their devices run in a process of their own, as they are not on the engine's host.
The flooder runs at ``nice 19``: it stands in for a device on another machine, whose
CPU is not the engine host's; the broker's work for it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import aiomqtt

from actimesh.broker.client import LinkSettings, Subscription
from actimesh.broker.codec import encode
from actimesh.broker.ingest import Publish, StreamSubscriber
from actimesh.broker.messages import (
    Ack,
    AckStatus,
    DeviceKind,
    DeviceState,
    Event,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.broker.topics import DeviceChannel, device_client_id
from actimesh.devices.agent import DeviceAgent
from actimesh.security.registry import Registry
from tests.integration.flood_311 import flood_311
from tests.integration.harness import CENTER, TEST_SETTINGS, Mesh, mesh
from tests.integration.officers import AGENCY, commanded_after
from tests.integration.up_world import running_up

KINDS = ("events", "acks", "telemetry", "presence", "rate")
#: The flooder's priority: a device elsewhere, whose CPU this host does not share.
_NICE = ("nice", "-n", "19")


def _flood_message(kind: str, i: int) -> bytes:
    now = time.time()
    if kind in ("events", "rate"):
        return encode(Event(eid=f"flood-{i}", type="taser_draw", ts=now))
    if kind == "telemetry":
        lat, lon = CENTER
        return encode(
            Telemetry(ts=now, lat=lat, lon=lon + i * 1e-9, acc=3.0, state=DeviceState.BUFFERING)
        )
    if kind == "presence":
        return encode(Presence(online=True, device_kind=DeviceKind.BODY_CAM, ts=now))
    return encode(Ack(aid=f"act-{i:024x}", status=AckStatus.RECORDING, pre_cov=30.0, ts=now))


_CHANNELS = {
    "events": DeviceChannel.EVENT,
    "rate": DeviceChannel.EVENT,
    "acks": DeviceChannel.ACK,
    "telemetry": DeviceChannel.TELEMETRY,
    "presence": DeviceChannel.PRESENCE,
}


def _flood_topic(m: Mesh, kind: str) -> str:
    thief = "cew-stolen" if kind == "rate" else "bwc-stolen"
    return m.topics.device(thief, _CHANNELS[kind])


async def _draw_latency(port: int, root: Path, kind: str, count: int) -> tuple[float, float]:
    """(seconds to send the flood, seconds from the draw to its command)."""
    async with mesh(f"probe{count}", port, root) as m:
        cew = await _scene(m)
        topic = _flood_topic(m, kind)
        async with m.client() as stolen:
            started = time.monotonic()
            for i in range(count):
                await stolen.publish(topic, _flood_message(kind, i), qos=0)
            sent = time.monotonic() - started
        return sent, await _one_draw(m, cew)


async def _scene(m: Mesh) -> DeviceAgent:
    """A CEW with its camera, and a stolen camera and CEW far off; the CEW, once the
    engine is warm."""
    cew = m.add("cew", DeviceKind.CEW, paired=("bwc-own",))
    m.add("bwc-own", DeviceKind.BODY_CAM, at=0.0)
    m.add("bwc-stolen", DeviceKind.BODY_CAM, at=900.0)
    m.add("cew-stolen", DeviceKind.CEW, at=900.0)
    await m.ready()
    assert m.engine is not None
    await m.engine.warmed.wait()
    return cew


async def _one_draw(m: Mesh, cew: DeviceAgent) -> float:
    event = await cew.raise_event("taser_draw")
    return await commanded_after(
        m.agents["bwc-own"], activation_id("cew", event.eid), event.ts, 120
    )


#: The flooder's login (username, password, client id, one a line), from :func:`flooding`.
LOGIN_ENV = "FLOOD_PROBE_LOGIN"


@contextlib.asynccontextmanager
async def flooding(
    port: int,
    topic: str,
    kind: str,
    login: Sequence[str] = (),
    *,
    nice: bool = True,
    qos: int | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A stolen device flooding ``topic`` without pause from a process of its own (at
    ``nice 19`` unless told otherwise), logged in with ``login`` (username, password,
    client id) if given; from when it has begun until the block ends.

    With ``qos`` the device speaks MQTT 3.1.1 (what a NATS cluster's listener takes) on
    a raw socket at that QoS, QoS 1 with up to :data:`FLOOD_WINDOW` messages waiting
    for their PUBACK (:func:`flood_311`); without it, MQTT 5 at QoS 0 through aiomqtt."""
    flooder = await asyncio.create_subprocess_exec(
        *(_NICE if nice else ()),
        sys.executable,
        "-m",
        "tests.integration.flood_probe",
        "--flood-to",
        str(port),
        topic,
        "--kind",
        kind,
        *(("--qos", str(qos)) if qos is not None else ()),
        stdout=asyncio.subprocess.PIPE,
        # Not on the command line: a generated password may begin with "-", which
        # argparse takes for an option (the flooder then exited before flooding).
        env={**os.environ, LOGIN_ENV: "\n".join(login)} if login else None,
    )
    try:
        assert flooder.stdout is not None
        await flooder.stdout.readline()  # "flooding"
        yield flooder
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone once quarantined
            flooder.kill()
        await flooder.wait()


async def _paced(draw: Callable[[], Awaitable[float]], count: int, gap: float) -> list[float]:
    """``count`` draws, each started ``gap`` seconds after the one before (or at once
    when that one took longer)."""
    latencies = []
    for _ in range(count):
        started = time.monotonic()
        latencies.append(await draw())
        await asyncio.sleep(max(0.0, gap - (time.monotonic() - started)))
    return latencies


async def _draws_during(
    port: int, root: Path, kind: str, draws: int, gap: float
) -> tuple[list[float], ...]:
    """Draw latencies with no flood, then while another process floods without pause."""
    # Every draw commands the camera anew (no merging), and the CEW stays within its rate.
    settings = replace(
        TEST_SETTINGS, merge_window_s=0.0, device_burst=1000.0, device_rate_per_s=100.0
    )
    async with mesh("probe", port, root, settings=settings) as m:
        cew = await _scene(m)
        base = await _paced(lambda: _one_draw(m, cew), draws, gap)
        async with flooding(port, _flood_topic(m, kind), kind):
            await asyncio.sleep(0.5)
            during = await _paced(lambda: _one_draw(m, cew), draws, gap)
        return base, during


async def _flood_forever(port: int, topic: str, kind: str, login: list[str] | None) -> None:
    """The stolen device, in a process of its own: publish as fast as the link allows
    (until the broker drops it: quarantined)."""
    username, password, client_id = login or (None, None, None)
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        username=username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as c:
        print("flooding", flush=True)  # noqa: T201 - tells the probe it has begun
        i = 0
        with contextlib.suppress(aiomqtt.MqttError):
            while True:
                await c.publish(topic, _flood_message(kind, i), qos=0)
                i += 1


async def _main_up(kind: str, draws: int, gap: float) -> None:
    """The same, against `actimesh up` itself: secured broker, the flooder logged in as
    a registered device, quarantine on."""
    root = Path(tempfile.mkdtemp(prefix="actimesh-flood-up-"))
    # Ten officers take turns, so each CEW stays within the default storm limits (10
    # draws at once), which then hold for the thief too.
    async with running_up(root, officers=10, storm_limits=True, devices_elsewhere=True) as world:
        thief = "cew-stolen" if kind == "rate" else "bwc-stolen"
        creds = world.stolen[thief]
        channel = _CHANNELS[kind]
        base = await _paced(world.draw, draws, gap)
        topic = f"am/v1/{AGENCY}/dev/{thief}/{channel.value}"
        login = (thief, creds.password, device_client_id(AGENCY, thief))
        started = time.monotonic()
        async with flooding(world.broker_port, topic, kind, login):
            during = await _paced(world.draw, draws, gap)
            with Registry.open(root) as registry:
                disabled = registry.get(thief).disabled
        elapsed = time.monotonic() - started
    print(  # noqa: T201 - the probe's one line of output
        f"{kind} flood against up, {draws} draws each: {_compared(base, during)}; {thief} "
        f"{'quarantined' if disabled else 'NOT quarantined'} within {elapsed:.1f} s"
    )


async def _main_cluster(kind: str, draws: int, gap: float, quarantine: bool) -> None:
    """The same on a three-node NATS cluster with the engine `cluster up` builds
    (tests/integration/cluster_world.py): the thief floods as fast as its MQTT 3.1.1
    link allows, at QoS 1 (QoS 0 for telemetry), from node 1 beside the officer's CEW."""
    from tests.integration.cluster_world import (  # noqa: PLC0415 - only this mode
        cluster_world,
        fair_settings,
    )

    root = Path(tempfile.mkdtemp(prefix="actimesh-flood-cluster-"))
    settings = fair_settings(quarantine_after=200 if quarantine else 0)
    async with cluster_world(root, settings) as world:
        base = await _paced(world.draw, draws, gap)
        port, topic, _, login, qos = world.flood(kind)
        started = time.monotonic()
        async with flooding(port, topic, kind, login, qos=qos):
            during = await _paced(world.draw, draws, gap)
        elapsed = time.monotonic() - started
        stats = world.engine.stats
        with Registry.open(root) as registry:
            disabled = registry.get(login[0]).disabled
    print(  # noqa: T201 - the probe's one line of output
        f"{kind} flood on the cluster, {draws} draws each: {_compared(base, during)}; "
        f"worst {max(during) * 1000:.1f} ms (no flood: {max(base) * 1000:.1f} ms); engine "
        f"refused {stats.rejected_total + stats.acks_not_commanded + stats.telemetry_over_rate}"
        f"; {login[0]} {'quarantined' if disabled else 'not quarantined'} within {elapsed:.1f} s"
    )


def _p99(xs: list[float]) -> float:
    return sorted(xs)[max(0, math.ceil(len(xs) * 0.99) - 1)]


def _compared(base: list[float], during: list[float]) -> str:
    """The p99 and median during the flood beside those with none, and the p99 ratio."""
    return (
        f"p99 {_p99(during) * 1000:.1f} ms (no flood: {_p99(base) * 1000:.1f} ms; "
        f"ratio {_p99(during) / _p99(base):.2f}); median {statistics.median(during) * 1000:.1f} "
        f"ms (no flood: {statistics.median(base) * 1000:.1f} ms)"
    )


@contextlib.asynccontextmanager
async def _anonymous_broker() -> AsyncIterator[tuple[Path, int]]:
    """A scratch folder and a Mosquitto of the probe's own (no accounts) on a free port."""
    root = Path(tempfile.mkdtemp(prefix="actimesh-flood-"))
    broker = ManagedMosquitto(
        MosquittoConfig(data_dir=root / "broker", port=free_port(), insecure_anonymous=True)
    )
    await broker.astart()
    try:
        yield root, broker.port
    finally:
        await broker.astop()


async def _main_during(kind: str, draws: int, gap: float) -> None:
    async with _anonymous_broker() as (root, port):
        base, during = await _draws_during(port, root / "during", kind, draws, gap)
    print(  # noqa: T201 - the probe's one line of output
        f"{kind} flood without pause, {draws} draws each: {_compared(base, during)}"
    )


async def _round_trips_during(
    port: int, kind: str, count: int, gap: float
) -> tuple[list[float], ...]:
    """The broker alone: a message's two hops (publisher → broker → subscriber, QoS 1,
    as a trigger's event and command each make one) with no flood, then during one;
    the flood is read by a lean subscriber, as the engine reads it."""
    topic = f"am/v1/floor/dev/{'cew' if kind == 'rate' else 'bwc'}-stolen/{_CHANNELS[kind].value}"

    async def sink(_batch: Sequence[Publish]) -> None:
        return None

    reader = StreamSubscriber(
        LinkSettings(
            host="127.0.0.1",
            port=port,
            client_id="floor-sink",
            subscriptions=(Subscription("am/v1/floor/dev/#", 0),),
        ),
        sink,
    )
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    v5 = aiomqtt.ProtocolVersion.V5
    async with (
        asyncio.TaskGroup() as tg,
        aiomqtt.Client("127.0.0.1", port, protocol=v5, socket_options=nodelay) as sender,
        aiomqtt.Client("127.0.0.1", port, protocol=v5, socket_options=nodelay) as receiver,
    ):
        reading = tg.create_task(reader.run(), name="floor-sink")
        await reader.wait_connected(5)
        await receiver.subscribe("floor/echo", qos=1)
        arrivals = aiter(receiver.messages)

        async def round_trip() -> float:
            started = time.monotonic()
            await sender.publish("floor/echo", b"x", qos=1)
            async with asyncio.timeout(30):
                await anext(arrivals)
            return time.monotonic() - started

        base = await _paced(round_trip, count, gap)
        async with flooding(port, topic, kind):
            during = await _paced(round_trip, count, gap)
        reading.cancel()
    return base, during


async def _main_floor(kind: str, count: int, gap: float) -> None:
    async with _anonymous_broker() as (_, port):
        base, during = await _round_trips_during(port, kind, count, gap)
    print(  # noqa: T201 - the probe's one line of output
        f"{kind} flood, the broker alone, {count} round trips each: {_compared(base, during)}"
    )


async def _main(kind: str, count: int) -> None:
    async with _anonymous_broker() as (root, port):
        _, base = await _draw_latency(port, root / "base", "events", 0)
        sent, flooded = await _draw_latency(port, root / "flood", kind, count)
    print(  # noqa: T201 - the probe's one line of output
        f"{kind} flood of {count:,} sent in {sent:.2f} s; draw commanded after "
        f"{flooded * 1000:.0f} ms (no flood: {base * 1000:.0f} ms; ratio {flooded / base:.1f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=KINDS, default="events")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument(
        "--during", type=int, metavar="DRAWS", help="draw DRAWS times during a flood instead"
    )
    parser.add_argument(
        "--up", action="store_true", help="with --during: against `actimesh up` (quarantine on)"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="with --during: on a three-node NATS cluster with the real engine",
    )
    parser.add_argument(
        "--no-quarantine",
        action="store_true",
        help="with --cluster: quarantine off, so the flood lasts every draw",
    )
    parser.add_argument(
        "--broker-only",
        action="store_true",
        help="with --during: time the broker's own two hops instead of draws",
    )
    parser.add_argument(
        "--gap", type=float, default=0.05, metavar="S", help="with --during: seconds between draws"
    )
    parser.add_argument("--flood-to", nargs=2, metavar=("PORT", "TOPIC"), help=argparse.SUPPRESS)
    parser.add_argument("--qos", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = parser.parse_args()
    login = os.environ[LOGIN_ENV].split("\n") if LOGIN_ENV in os.environ else None
    if args.flood_to and args.qos is not None:
        port, topic = int(args.flood_to[0]), args.flood_to[1]
        user, password, client_id = login or (None, None, "flooder")
        asyncio.run(
            flood_311(
                port,
                topic,
                partial(_flood_message, args.kind),
                (user, password, client_id),
                args.qos,
                on_start=lambda: print("flooding", flush=True),  # noqa: T201 - begun
            )
        )
    elif args.flood_to:
        port, topic = int(args.flood_to[0]), args.flood_to[1]
        asyncio.run(_flood_forever(port, topic, args.kind, login))
    elif args.during and args.broker_only:
        asyncio.run(_main_floor(args.kind, args.during, args.gap))
    elif args.during and args.cluster:
        asyncio.run(_main_cluster(args.kind, args.during, args.gap, not args.no_quarantine))
    elif args.during and args.up:
        asyncio.run(_main_up(args.kind, args.during, args.gap))
    elif args.during:
        asyncio.run(_main_during(args.kind, args.during, args.gap))
    else:
        asyncio.run(_main(args.kind, args.count))
