"""The listening device-protocol adapters (OsmAnd HTTP, NMEA 0183) as a process of
their own.

``actimesh up`` starts :func:`serve_adapters` under a
:class:`~actimesh.runtime.supervisor.Supervisor` when ``[adapters.osmand]`` or
``[adapters.nmea]`` is enabled, as it does the web listeners: a flood of HTTP requests
or TCP connections from the network shares neither an event loop nor a heap with the
engine. The process logs in to the broker as ``svc-adapter`` and publishes each fix as
its device's telemetry (adapters/sink.py); the engine takes it from there. OwnTracks
needs no process: the engine reads it (adapters/owntracks.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp

from actimesh import listener
from actimesh.adapters import AdapterSettings, FixSink, NmeaServer, create_osmand_app
from actimesh.broker.topics import Topics
from actimesh.broker.transport import Transport
from actimesh.errors import ActimeshError, SecurityError
from actimesh.runtime.config import Settings
from actimesh.runtime.supervisor import Report
from actimesh.security.acl import SERVICE_ADAPTER
from actimesh.security.registry import REGISTRY_NAME, Registry

if TYPE_CHECKING:
    from actimesh.runtime.compose import BrokerAddress

__all__ = ["AdaptersJob", "OsmAndServer", "RegistryAuth", "run_adapters", "serve_adapters"]


@dataclass(frozen=True, slots=True)
class AdaptersJob:
    """What the adapters child needs from ``up``."""

    settings: Settings
    broker: BrokerAddress


class RegistryAuth:
    """Device passwords checked against the registry of the data directory: one
    connection, in one worker thread of its own (PBKDF2 and SQLite never hold the event
    loop, and a burst of logins queues there). A disabled account (``actimesh devices
    disable``, or quarantined for flooding) is refused like a wrong password."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / REGISTRY_NAME
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "registry-auth")
        self._registry: Registry | None = None

    def _check(self, device_id: str, password: str) -> bool:
        if self._registry is None:
            self._registry = Registry(self._path)
        if not self._registry.check_password(device_id, password):
            return False
        try:
            return self._registry.get(device_id).disabled is None
        except SecurityError:  # removed in between
            return False

    async def check(self, device_id: str, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._check, device_id, password)

    def close(self) -> None:
        """Close the registry connection (in its thread) and the worker."""

        def close() -> None:
            if self._registry is not None:
                self._registry.close()

        self._worker.submit(close)
        self._worker.shutdown(wait=True)


class OsmAndServer:
    """The OsmAnd app on a listener of its own (HTTPS with a certificate and key)."""

    def __init__(self, app: ASGIApp, settings: AdapterSettings) -> None:
        s = settings.osmand
        self.settings = s
        self.gauge = listener.ConnectionGauge(s.max_clients, max(4, s.max_clients // 4))
        self.gate = listener.CredentialsFirst(app, self.gauge)
        self.tls: dict[str, Any] = (
            {}
            if s.tls_certfile is None or s.tls_keyfile is None
            else {"ssl_certfile": str(s.tls_certfile), "ssl_keyfile": str(s.tls_keyfile)}
        )
        self.ready = asyncio.Event()
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        if self.address is None:
            raise ActimeshError("the OsmAnd listener is not listening yet")
        return listener.url(self.address, tls=bool(self.tls))

    async def run(self) -> None:
        s = self.settings
        sock = listener.bind(
            s.host, s.port, what="the OsmAnd listener", fix="set [adapters.osmand] port"
        )
        self.address = listener.address(sock)
        server = listener.hardened_server(
            self.gate, client_timeout_s=s.client_timeout_s, gauge=self.gauge, tls=self.tls
        )
        await listener.serve_until_cancelled(server, sock, self.ready, what="OsmAnd listener")


@contextlib.asynccontextmanager
async def run_adapters(
    settings: Settings, transport: Transport, auth: RegistryAuth | None = None
) -> AsyncIterator[tuple[FixSink, OsmAndServer | None, NmeaServer | None]]:
    """The enabled listeners and their sink, running (ready) for the block."""
    a = settings.adapters
    out = transport.outbound("adapters")
    sink = FixSink(
        out=out,
        topics=Topics(settings.agency),
        clock=time.time,
        rate_per_s=a.rate_per_s,
        burst=a.burst,
        queue=a.queue,
        deadletters_per_s=a.deadletters_per_s,
    )
    osmand = nmea = None
    own_auth = None
    if a.osmand.enabled:
        if auth is None:
            auth = own_auth = RegistryAuth(settings.data_dir)
        app = create_osmand_app(
            auth=auth,
            sink=sink,
            hdop_factor_m=a.nmea.hdop_factor_m,
        )
        osmand = OsmAndServer(app, a)
    if a.nmea.enabled:
        nmea = NmeaServer(
            host=a.nmea.host,
            ports=a.nmea.ports,
            sink=sink,
            clock=time.time,
            hdop_factor_m=a.nmea.hdop_factor_m,
            idle_timeout_s=a.nmea.idle_timeout_s,
        )
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(out.run(), name="adapters-link")]
            tasks.append(tg.create_task(sink.run(), name="adapters-sink"))
            if osmand is not None:
                tasks.append(tg.create_task(osmand.run(), name="osmand"))
            if nmea is not None:
                tasks.append(tg.create_task(nmea.run(), name="nmea"))
            async with asyncio.timeout(30):
                await out.wait_connected()
                if osmand is not None:
                    await osmand.ready.wait()
                if nmea is not None:
                    await nmea.ready.wait()
            try:
                yield sink, osmand, nmea
            finally:
                for task in tasks:
                    task.cancel()
    finally:
        if own_auth is not None:
            own_auth.close()


def _describe(osmand: OsmAndServer | None, nmea: NmeaServer | None) -> str:
    parts = [] if osmand is None else [f"osmand {osmand.url}"]
    if nmea is not None:
        ports = ", ".join(f"{d}={p}" for d, p in sorted(nmea.bound.items()))
        parts.append(f"nmea tcp+udp {nmea.host} {ports}")
    return "; ".join(parts)


async def serve_adapters(job: AdaptersJob, report: Report) -> None:
    """The OsmAnd and NMEA listeners, until cancelled."""
    transport = job.broker.transport(SERVICE_ADAPTER)
    async with run_adapters(job.settings, transport) as (_sink, osmand, nmea):
        report(_describe(osmand, nmea))
        await asyncio.Future()  # until cancelled
