"""Composition of a running mesh: broker, ledger, engine, dispatch, simulated fleet, monitor.

``actimesh up`` and ``actimesh sim`` are thin wrappers around :func:`run_up` and
:func:`run_sim`. Everything runs under one TaskGroup; leaving it (Ctrl-C, SIGTERM, or a
component failing) cancels the rest, and the exit stack stops the managed broker last,
so presence wills and the last ledger writes still reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from actimesh.audit import retention_loop
from actimesh.broker.mosquitto import ManagedMosquitto, MosquittoConfig, parse_broker_url
from actimesh.broker.topics import Topics
from actimesh.config import Settings
from actimesh.devices.simulator import FleetSimulator, SimSettings
from actimesh.dispatch.service import DispatchService
from actimesh.errors import ConfigError
from actimesh.monitor import Monitor
from actimesh.triggers.engine import Engine
from actimesh.triggers.ledger import Ledger

__all__ = ["BrokerAddress", "broker_for", "run_engine", "run_sim", "run_up"]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def broker_for(settings: Settings) -> AsyncIterator[tuple[BrokerAddress, bool]]:
    """The broker to use: the one at ``settings.broker_url``, or a managed Mosquitto.

    Yields the address and whether actimesh manages the broker.
    """
    if settings.broker_url is not None:
        host, port = parse_broker_url(settings.broker_url)
        yield BrokerAddress(host, port), False
        return
    config = MosquittoConfig(
        host=settings.broker_host,
        port=settings.broker_port,
        data_dir=settings.data_dir / "mosquitto",
    )
    async with ManagedMosquitto(config):
        yield BrokerAddress(settings.broker_host, settings.broker_port), True


def _engine_status(engine: Engine, sim: FleetSimulator | None) -> str:
    s = engine.stats
    online = sum(1 for d in engine.fleet if d.online)
    recording = sum(1 for d in engine.fleet if d.state is not None and d.state.value == "recording")
    parts = [
        f"devices online {online}/{len(engine.fleet)}",
        f"recording {recording}",
        f"telemetry {s.telemetry}",
        f"events {s.events}",
        f"activations {s.activations}",
        f"commands {s.commands}",
        f"acks {s.acks}",
        f"rejected {s.rejected_total}",
        f"telemetry dropped {engine.telemetry_link.stats.dropped_incoming}",
    ]
    if sim is not None:
        parts.append("triggers " + ", ".join(f"{k} {v}" for k, v in sorted(sim.triggers.items())))
    return " · ".join(parts)


def _engine(settings: Settings, broker: BrokerAddress, ledger: Ledger) -> Engine:
    """The engine ``settings`` describe, on ``broker``, writing to ``ledger``."""
    return Engine(
        topics=Topics(settings.agency),
        broker_host=broker.host,
        broker_port=broker.port,
        ledger=ledger,
        rules=settings.rules,
        policy=settings.policy,
        settings=settings.engine,
    )


async def _retention(settings: Settings, recordings: Path | None) -> None:
    """Retention beside the engine: it opens its own ledger connection, so it never
    queues in front of the engine's writes."""
    if recordings is not None:
        # The simulated cameras create it on their first commit; retention starts first.
        await asyncio.to_thread(recordings.mkdir, parents=True, exist_ok=True)
    await retention_loop(settings.ledger_path, settings.retention.days, recordings=recordings)


async def run_up(settings: Settings, sim: SimSettings | None, console: Console) -> None:
    """Broker (managed unless a URL is given), engine, optional simulated fleet, monitor."""
    topics = Topics(settings.agency)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with broker_for(settings) as (broker, managed), Ledger(settings.ledger_path) as ledger:
        engine = _engine(settings, broker, ledger)
        fleet = None
        if sim is not None:
            fleet = FleetSimulator(
                topics=topics,
                broker_host=broker.host,
                broker_port=broker.port,
                data_dir=settings.data_dir,
                settings=sim,
            )
        monitor = Monitor(
            topics=topics,
            broker_host=broker.host,
            broker_port=broker.port,
            console=console,
            status=lambda: _engine_status(engine, fleet),
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(engine.run(), name="engine")
            tg.create_task(_retention(settings, settings.data_dir / "recordings"), name="retention")
            async with asyncio.timeout(30):
                await engine.ready.wait()
            kind = "managed Mosquitto" if managed else "external broker"
            console.print(f"[bold]actimesh[/bold] agency [cyan]{settings.agency}[/cyan]")
            console.print(f"  broker   {broker.url} ({kind})")
            console.print(f"  engine   {settings.engine.engine_id}, ledger {settings.ledger_path}")
            rules = ", ".join(f"{r.event_type} {r.radius_m:g} m" for r in settings.rules)
            console.print(f"  rules    {rules}")
            if settings.dispatch.enabled:
                dispatch = DispatchService(
                    topics=topics,
                    broker_host=broker.host,
                    broker_port=broker.port,
                    settings=settings.dispatch,
                    data_dir=settings.data_dir,
                    ledger_path=settings.ledger_path,
                    max_fix_age_s=settings.policy.max_fix_age_s,
                    event_types=tuple(r.event_type for r in settings.rules),
                )
                tg.create_task(dispatch.run(), name="dispatch")
                async with asyncio.timeout(30):
                    await dispatch.ready.wait()
                console.print(f"  dispatch {dispatch.url}  (live map; API /api/v1, /openapi.json)")
                if not settings.dispatch.leaflet_dir.is_dir():
                    console.print("  [yellow]map library missing: run `make web-deps`[/yellow]")
            tg.create_task(monitor.run(), name="monitor")
            if fleet is not None:
                console.print(
                    f"  fleet    {len(fleet.units)} units, {len(fleet.agents)} devices "
                    f"(recordings under {settings.data_dir / 'recordings'})"
                )
                tg.create_task(fleet.run(), name="fleet")
            console.print("  Ctrl-C stops everything.\n")


async def run_engine(settings: Settings, console: Console) -> None:
    """One engine process against the broker at ``settings.broker_url``.

    Run several with distinct ``engine_id`` values against one broker and one ledger
    file: trigger events are shared among them (MQTT v5 shared subscription), each
    handled exactly once, and any replica may die without losing one.
    """
    if settings.broker_url is None:
        raise ConfigError("actimesh engine needs --broker mqtt://HOST:PORT (use `up` for both)")
    host, port = parse_broker_url(settings.broker_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with Ledger(settings.ledger_path) as ledger:
        engine = _engine(settings, BrokerAddress(host, port), ledger)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(engine.run(), name="engine")
            tg.create_task(_retention(settings, None), name="retention")
            async with asyncio.timeout(30):
                await engine.ready.wait()
            console.print(
                f"engine {settings.engine.engine_id} on {settings.broker_url}, agency "
                f"{settings.agency}, ledger {settings.ledger_path}"
            )


async def run_sim(
    *, agency: str, broker_url: str, data_dir: Path, sim: SimSettings, console: Console
) -> None:
    """A simulated fleet against any broker (an engine must be running there)."""
    host, port = parse_broker_url(broker_url)
    topics = Topics(agency)
    fleet = FleetSimulator(
        topics=topics, broker_host=host, broker_port=port, data_dir=data_dir, settings=sim
    )
    monitor = Monitor(topics=topics, broker_host=host, broker_port=port, console=console)
    console.print(
        f"simulating {len(fleet.units)} units ({len(fleet.agents)} devices) against {broker_url}"
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(fleet.run(), name="fleet")
        tg.create_task(monitor.run(), name="monitor")
