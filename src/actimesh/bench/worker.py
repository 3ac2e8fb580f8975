"""Entry point of every benchmark process: ``python -m actimesh.bench.worker ROLE CONFIG``.

``CONFIG`` is a JSON object: ``host``, ``port``, ``devices``, ``seed``, the agencies
(``agency`` for the engine, ``echo_agency``, ``plain_agency``), ``lifetime_s``,
``logins`` (``engine`` and ``helpers``: ``[username, password file]`` each; the
passwords stay in their files, out of every process's command line), and per role
``run_dir`` (engine), ``publisher`` (load generator), ``acks`` (probe). Each role sets
itself up, then answers the orchestrator's commands (:class:`~.procs.Rpc`) until told
to exit.

On a NATS cluster (``actimesh bench --cluster``) the config also holds ``mqtt_version``
(4: the MQTT clients speak 3.1.1 to a node's listener), ``nats_urls`` (the engine's
transport), ``engine_id``, ``rx_port`` (the probe's cameras on another node than its
trigger device) and ``nats_plain`` (the plain subscriber is a native NATS one).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from actimesh.bench.echo import EchoClient
from actimesh.bench.engine_proc import EngineUnderTest
from actimesh.bench.loadgen import LoadGenerator, PahoPublisher, RawPublisher
from actimesh.bench.naive import time_queries
from actimesh.bench.natsplain import NatsPlainSubscriber
from actimesh.bench.plain import PlainSubscriber
from actimesh.bench.priority import Lowered, lowered_priority
from actimesh.bench.probe import Probe
from actimesh.bench.procs import Rpc
from actimesh.bench.scaling import side_by_side
from actimesh.bench.workload import build_fleet
from actimesh.broker.nats import topic_to_subject
from actimesh.broker.topics import DeviceChannel, Topics
from actimesh.ledger import open_ledger
from actimesh.security.registry import Credentials

__all__ = ["ROLES", "main"]

Config = dict[str, Any]


def _lifetime(cfg: Config) -> float:
    return float(cfg.get("lifetime_s", 3600.0))


def _version(cfg: Config) -> int:
    """The MQTT protocol level of the MQTT clients: 5, or 4 (3.1.1) on a cluster."""
    return int(cfg.get("mqtt_version", 5))


def _login(cfg: Config, who: str) -> Credentials | None:
    """The account ``who`` (``engine`` or ``helpers``) logs in with, if any."""
    entry = cfg.get("logins", {}).get(who)
    if entry is None:
        return None
    username, password_file = entry
    return Credentials(username, Path(password_file).read_text(encoding="utf-8").strip())


async def _engine(cfg: Config) -> None:
    async with open_ledger(
        Path(cfg["run_dir"]) / "ledger.sqlite3"
    ) as ledger:  # it makes the folder
        eut = EngineUnderTest.build(
            agency=cfg["agency"],
            host=cfg["host"],
            port=cfg["port"],
            ledger=ledger,
            login=_login(cfg, "engine"),
            trace=bool(cfg.get("trace", False)),
            nats_urls=list(cfg.get("nats_urls", ())),
            engine_id=str(cfg.get("engine_id", "bench-engine")),
        )

        async def stats(_: Config) -> Config:
            return eut.stats()

        async def arm(args: Config) -> Config:
            eut.arm(int(args["expected"]), float(args["idle_s"]), float(args["timeout_s"]))
            return {}

        async def collect(_: Config) -> Config:
            return await eut.collect()

        async def queries(_: Config) -> Config:
            return {"query_us": eut.take_queries()}

        async def trace(_: Config) -> Config:
            lag, eut.loop_lag_ms = eut.loop_lag_ms, []
            pauses = [] if eut.gc_pauses is None else eut.gc_pauses.take()
            return {"stamps": eut.trace(), "loop_lag_ms": lag, "gc": pauses}

        rpc = Rpc(
            {"stats": stats, "arm": arm, "collect": collect, "queries": queries, "trace": trace}
        )
        async with asyncio.TaskGroup() as tg:
            engine_task = tg.create_task(eut.engine.run(), name="bench-engine")
            async with asyncio.timeout(30):
                await eut.engine.ready.wait()
            lag = tg.create_task(eut.sample_loop_lag(), name="bench-lag") if eut.stamps else None
            await rpc.serve(lifetime_s=_lifetime(cfg))
            engine_task.cancel()
            if lag is not None:
                lag.cancel()


async def _loadgen(cfg: Config) -> None:
    fleet = build_fleet(int(cfg["devices"]), int(cfg["seed"]))
    version = _version(cfg)
    publisher: RawPublisher | PahoPublisher
    if cfg.get("publisher", "raw") == "raw":
        publisher = RawPublisher(
            cfg["host"], int(cfg["port"]), "bench-loadgen", _login(cfg, "helpers"), version=version
        )
    else:
        publisher = PahoPublisher(
            cfg["host"], int(cfg["port"]), "bench-loadgen", _login(cfg, "helpers")
        )
    await publisher.connect()
    gen = LoadGenerator(
        fleet,
        int(cfg["seed"]),
        publisher,
        [cfg["agency"], cfg["plain_agency"]],
        version=version,
    )
    rpc: Rpc
    prepared: dict[str, list[bytes]] = {}

    async def presence(args: Config) -> Config:
        sent = await gen.presence(args["agency"], int(args["start"]), int(args["count"]))
        return {"sent": sent}

    priority: list[Lowered] = []

    async def stream(args: Config) -> Config:
        run = gen.stream_prepared if args.get("prepared") else gen.stream
        nice = int(args.get("nice", 0))

        async def at_priority() -> None:
            # Lowered for the stream only (bench/priority.py); status says what was applied.
            with lowered_priority(nice) as lowered:
                priority[:] = [lowered]
                await run(args["agency"], float(args["rate"]), float(args["duration_s"]))

        rpc.spawn(at_priority(), name="bench-stream")
        return {}

    async def status(_: Config) -> Config:
        return {
            "sent": gen.stream_sent,
            "skipped": gen.stream_skipped,
            "streaming": gen.streaming,
            "lag_s": gen.stream_lag_s,
            "priority": priority[0].as_dict() if priority else None,
        }

    async def prepare_motion(args: Config) -> Config:
        return gen.prepare_motion(float(args["rate"]), float(args["duration_s"]))

    async def prepare(args: Config) -> Config:
        prepared[args["agency"]] = gen.prepare_flood(args["agency"], int(args["count"]))
        return {}

    async def flood(args: Config) -> Config:
        agency, count = args["agency"], int(args["count"])
        rate = args.get("rate")
        chunks = prepared.pop(agency, [])
        return await gen.flood(chunks, count, agency, None if rate is None else float(rate))

    rpc = Rpc(
        {
            "presence": presence,
            "stream": stream,
            "status": status,
            "prepare": prepare,
            "prepare_motion": prepare_motion,
            "flood": flood,
        }
    )
    try:
        await rpc.serve(lifetime_s=_lifetime(cfg))
    finally:
        await publisher.close()


async def _probe(cfg: Config) -> None:
    fleet = build_fleet(int(cfg["devices"]), int(cfg["seed"]))
    probe = Probe(
        fleet,
        Topics(cfg["agency"]),
        Topics(cfg["echo_agency"]),
        cfg["host"],
        int(cfg["port"]),
        acks=bool(cfg.get("acks", True)),
        login=_login(cfg, "helpers"),
        trace=bool(cfg.get("trace", False)),
        rx_port=None if cfg.get("rx_port") is None else int(cfg["rx_port"]),
        version=_version(cfg),
    )
    await probe.connect()

    async def run(args: Config) -> Config:
        result = await probe.run(float(args["rate"]), float(args["duration_s"]))
        return result.as_dict()

    try:
        async with asyncio.TaskGroup() as tg:
            pings = [
                tg.create_task(probe.tx.keepalive(), name="probe-tx-keepalive"),
                tg.create_task(probe.rx.keepalive(), name="probe-rx-keepalive"),
            ]
            await Rpc({"run": run}).serve(lifetime_s=_lifetime(cfg))
            for ping in pings:
                ping.cancel()
    finally:
        probe.close()


async def _echo(cfg: Config) -> None:
    fleet = build_fleet(int(cfg["devices"]), int(cfg["seed"]))
    echo = EchoClient(
        fleet,
        Topics(cfg["echo_agency"]),
        cfg["host"],
        int(cfg["port"]),
        _login(cfg, "helpers"),
        trace=bool(cfg.get("trace", False)),
        version=_version(cfg),
    )
    await echo.connect()

    async def stats(_: Config) -> Config:
        return {"requests": echo.requests, "acks": echo.acks}

    async def trace(_: Config) -> Config:
        return {"stamps": {f"#{seq}": list(stamp) for seq, stamp in echo.stamps.items()}}

    try:
        async with asyncio.TaskGroup() as tg:
            ping = tg.create_task(echo.client.keepalive(), name="echo-keepalive")
            await Rpc({"stats": stats, "trace": trace}).serve(lifetime_s=_lifetime(cfg))
            ping.cancel()
    finally:
        echo.close()


async def _plain(cfg: Config) -> None:
    topic = Topics(cfg["plain_agency"]).all_devices(DeviceChannel.TELEMETRY)
    sub: PlainSubscriber
    if cfg.get("nats_plain"):
        sub = await NatsPlainSubscriber.connect_nats(
            cfg["host"], int(cfg["port"]), topic_to_subject(topic), login=_login(cfg, "plain")
        )
    else:
        sub = await PlainSubscriber.connect(
            cfg["host"], int(cfg["port"]), topic, login=_login(cfg, "helpers")
        )

    async def arm(args: Config) -> Config:
        sub.arm(int(args["expected"]))
        return {}

    async def collect(args: Config) -> Config:
        return await sub.collect(float(args["idle_s"]), float(args["timeout_s"]))

    try:
        await Rpc({"arm": arm, "collect": collect}).serve(lifetime_s=_lifetime(cfg))
    finally:
        if sub.transport is not None:
            sub.transport.close()


async def _naive(cfg: Config) -> None:
    fleet = build_fleet(int(cfg["devices"]), int(cfg["seed"]))

    async def run(args: Config) -> Config:
        return time_queries(
            fleet,
            int(cfg["seed"]),
            naive_queries=int(args["naive_queries"]),
            grid_queries=int(args["grid_queries"]),
        )

    await Rpc({"run": run}).serve(lifetime_s=_lifetime(cfg))


async def _scaling(cfg: Config) -> None:
    async def run(args: Config) -> Config:
        sizes = [int(n) for n in args["sizes"]]
        return side_by_side(sizes, int(cfg["seed"]), queries=int(args["queries"]))

    await Rpc({"run": run}).serve(lifetime_s=_lifetime(cfg))


ROLES: dict[str, Callable[[Config], Coroutine[Any, Any, None]]] = {
    "echo": _echo,
    "engine": _engine,
    "loadgen": _loadgen,
    "naive": _naive,
    "plain": _plain,
    "probe": _probe,
    "scaling": _scaling,
}


def main(argv: list[str]) -> int:
    """Run one role until the orchestrator says exit (or goes away)."""
    import json  # noqa: PLC0415 - only the worker needs it here

    if len(argv) != 2 or argv[0] not in ROLES:
        sys.stderr.write(f"usage: python -m actimesh.bench.worker {{{','.join(ROLES)}}} CONFIG\n")
        return 2
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s {argv[0]} %(levelname)s %(name)s: %(message)s"
    )
    started = time.monotonic()
    try:
        asyncio.run(ROLES[argv[0]](json.loads(argv[1])))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    logging.getLogger(__name__).info("%s ran %.1f s", argv[0], time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
