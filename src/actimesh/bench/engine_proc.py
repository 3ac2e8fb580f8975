"""The engine under test, in a process of its own, built the way ``actimesh up`` builds it.

Default rules and inclusion policy, a real SQLite ledger on disk, the production
:class:`~actimesh.geofence.GridIndex`, its MQTT transport (or, on a cluster, its NATS
transport). The only additions are for
measuring, each through a seam: a :class:`TimedIndex` around the index that records how
long each spatial query takes, a watcher that notes when the engine's telemetry counter
starts and stops moving during a flood, and with ``--trace`` the engine's tracer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from actimesh.bench.trace import GcPauses, TriggerStamps
from actimesh.broker.nats import NatsTransport
from actimesh.broker.topics import Topics
from actimesh.broker.transport import MqttTransport, Transport
from actimesh.geofence import Fix, GridIndex, InclusionPolicy, SpatialIndex
from actimesh.ledger import Ledger
from actimesh.security.registry import Credentials
from actimesh.security.signing import CommandSigner
from actimesh.triggers.engine import Engine
from actimesh.triggers.rules import DEFAULT_RULES
from actimesh.triggers.settings import EngineSettings

__all__ = ["EngineUnderTest", "TimedIndex"]

_POLL_S = 0.002
_MAX_SAMPLES = 100_000


class TimedIndex:
    """A :class:`~actimesh.geofence.SpatialIndex` that records how long each ``within``
    query of the index it wraps takes (µs). Every other method is the wrapped index's
    own bound method, so the telemetry path pays nothing for the measurement."""

    def __init__(self, inner: SpatialIndex) -> None:
        self._inner = inner
        self.query_us: list[float] = []
        self.upsert = inner.upsert
        self.upsert_latest = inner.upsert_latest
        self.remove = inner.remove
        self.get = inner.get

    def within(self, lat: float, lon: float, radius_m: float) -> list[tuple[Fix, float]]:
        start = time.perf_counter()
        try:
            return self._inner.within(lat, lon, radius_m)
        finally:
            if len(self.query_us) < _MAX_SAMPLES:
                self.query_us.append((time.perf_counter() - start) * 1e6)

    def __len__(self) -> int:
        return len(self._inner)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._inner


class EngineUnderTest:
    """An :class:`Engine` plus the counters the orchestrator asks for."""

    def __init__(
        self, engine: Engine, index: TimedIndex, stamps: TriggerStamps | None = None
    ) -> None:
        self.engine = engine
        self.index = index
        self.stamps = stamps
        self.loop_lag_ms: list[float] = []
        #: With ``--trace``: the engine's garbage collections (bench/trace.py).
        self.gc_pauses: GcPauses | None = None
        if stamps is not None:
            self.gc_pauses = GcPauses()
            self.gc_pauses.install()
        self._watch: asyncio.Task[dict[str, Any]] | None = None

    @classmethod
    def build(
        cls,
        *,
        agency: str,
        host: str,
        port: int,
        ledger: Ledger,
        login: Credentials | None = None,
        trace: bool = False,
        nats_urls: Sequence[str] = (),
        engine_id: str = "bench-engine",
    ) -> EngineUnderTest:
        """On Mosquitto at ``host:port``, or with ``nats_urls`` on a NATS cluster (the
        transport ``actimesh engine --nats`` builds)."""
        index = TimedIndex(GridIndex())
        user = None if login is None else login.username
        password = None if login is None else login.password
        transport: Transport
        if nats_urls:
            transport = NatsTransport(nats_urls, user=user, password=password)
        else:
            transport = MqttTransport(host, port, username=user, password=password)
        stamps = TriggerStamps() if trace else None
        engine = Engine(
            topics=Topics(agency),
            transport=transport,
            ledger=ledger,
            rules=DEFAULT_RULES,
            policy=InclusionPolicy(),
            # Commands are signed as in production (the probe times them, unverified).
            signer=CommandSigner.generate(),
            settings=EngineSettings(engine_id=engine_id),
            index=index,
            tracer=stamps,
        )
        return cls(engine, index, stamps)

    def counted(self) -> int:
        """Telemetry messages handled: indexed or rejected."""
        s = self.engine.stats
        return s.telemetry + s.rejected_total

    def stats(self) -> dict[str, Any]:
        # Polled twice a second while triggers are timed, on the engine's own loop: only
        # counters here (a walk over the fleet took ~2.5 ms of it, a trigger's budget).
        e = self.engine
        s = e.stats
        link = e.telemetry_link.stats
        return {
            "telemetry": s.telemetry,
            "rejected": dict(s.rejected),
            "telemetry_dropped": link.dropped_incoming,
            # Replaced while waiting by the same device's newer fix (MQTT's stream).
            "telemetry_superseded": getattr(link, "superseded", 0),
            "telemetry_received": link.received,
            "presence": s.presence,
            "events": s.events,
            "activations": s.activations,
            "commands": s.commands,
            "retries": s.retries,
            "command_failures": s.command_failures,
            "left_out": dict(s.left_out),
            "events_without_position": s.events_without_position,
            "telemetry_over_rate": s.telemetry_over_rate,
            "acks": s.acks,
            "fleet": len(e.fleet),
            "indexed": len(e.index),
        }

    def arm(self, expected: int, idle_s: float, timeout_s: float) -> None:
        """Start watching the telemetry counter for ``expected`` more messages."""
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.create_task(
            self._watch_counter(expected, idle_s, timeout_s), name="bench-watch"
        )

    async def collect(self) -> dict[str, Any]:
        if self._watch is None:
            raise RuntimeError("arm() first")
        watch, self._watch = self._watch, None
        return await watch

    async def _watch_counter(
        self, expected: int, idle_s: float, timeout_s: float
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        base = self.counted()
        base_dropped = self._shed()
        first = last = 0.0
        seen = base
        changed = loop.time()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
            now = self.counted()
            if now != seen:
                stamp = time.perf_counter()
                if seen == base:
                    first = stamp
                last = stamp
                seen = now
                changed = loop.time()
                if now - base >= expected:
                    break
            elif seen != base and loop.time() - changed > idle_s:
                break
        return {
            "count": seen - base,
            "first": first,
            "last": last,
            "dropped": self._shed() - base_dropped,
        }

    def _shed(self) -> int:
        """Telemetry the engine's link dropped or saw superseded."""
        link = self.engine.telemetry_link.stats
        return link.dropped_incoming + int(getattr(link, "superseded", 0))

    def trace(self) -> dict[str, list[float]]:
        """Per event id: handler start and commands written (``--trace`` only)."""
        if self.stamps is None:
            return {}
        return {eid: list(stamp) for eid, stamp in self.stamps.stamps.items()}

    async def sample_loop_lag(self, every_s: float = 0.01) -> None:
        """With ``--trace``: how late the engine's event loop runs a timer (ms), every
        ``every_s``, until cancelled: a busy or starved loop delays every message."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + every_s
            await asyncio.sleep(every_s)
            if len(self.loop_lag_ms) < _MAX_SAMPLES:
                self.loop_lag_ms.append((loop.time() - due) * 1000.0)

    def take_queries(self) -> list[float]:
        samples, self.index.query_us = self.index.query_us, []
        return samples
