"""Fixtures for the dispatch tests: a real dispatch service (uvicorn on a free loopback
port) beside a real engine, devices and Mosquitto (tests/integration/harness.py).

Every service starts with an API token of each role (``svc.tokens``); ``api(svc)`` is a
client with the admin's, ``api(svc, "integrator")`` one with an integrator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

from actimesh.broker.codec import encode
from actimesh.broker.messages import (
    Activation,
    ActivationReason,
    CameraActivation,
    DeviceKind,
    DeviceState,
    Presence,
    Telemetry,
    activation_id,
)
from actimesh.broker.transport import MqttTransport
from actimesh.devices.agent import DeviceAgent
from actimesh.dispatch.accounts import Role
from actimesh.dispatch.auth import CSRF_HEADER
from actimesh.dispatch.service import DispatchService
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import AccountError
from actimesh.evidence.service import EvidenceService
from actimesh.geofence import InclusionPolicy, destination
from actimesh.ledger import ActivationRow, DecisionRow, open_ledger
from actimesh.triggers.rules import DEFAULT_RULES
from tests.integration.harness import CENTER, HOST, Mesh

#: Quick enough for tests, the same code paths as the defaults.
FAST = DispatchSettings(
    port=0,
    ack_timeout_s=1.5,
    frame_interval_s=0.1,
    webhook_backoff_initial_s=0.2,
    webhook_backoff_max_s=0.5,
    webhook_timeout_s=2.0,
    webhook_reconcile_s=0.5,
)


#: The roles ``svc.tokens`` has a token for (``integrator+telemetry``: with the grant).
TOKEN_ROLES = ("admin", "dispatcher", "integrator", "integrator+telemetry")


class Dispatch(DispatchService):
    """The service and, once it runs, an API token per role of :data:`TOKEN_ROLES`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokens: dict[str, str] = {}

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/api/v1/live"


@contextlib.asynccontextmanager
async def running_dispatch(
    m: Mesh,
    root: Path,
    settings: DispatchSettings = FAST,
    *,
    data_dir: Path | None = None,
    evidence: EvidenceService | None = None,
    owntracks: bool = False,
    **changes: Any,
) -> AsyncIterator[Dispatch]:
    """A dispatch service on ``m``'s broker and ledger (in ``root``, or its PostgreSQL
    one), stopped (cancelled)
    on exit; its own files in ``data_dir`` (default ``root``); with ``evidence``, the
    evidence routes; with ``owntracks``, it reads the OwnTracks app's locations."""
    service = Dispatch(
        topics=m.topics,
        transport=MqttTransport(HOST, m.port),
        settings=replace(settings, **changes),
        data_dir=data_dir or root,
        ledger_location=root / "ledger.sqlite3" if m.ledger_url is None else m.ledger_url,
        max_fix_age_s=10.0,
        # The engine's default policy, as `up` passes it: the effective radius drawn.
        gps_margin_m=InclusionPolicy().widest_margin_m,
        event_types=tuple(r.event_type for r in DEFAULT_RULES),
        evidence=evidence,
        owntracks=owntracks,
    )
    task = m.tg.create_task(service.run(), name="dispatch")
    m.tasks["dispatch"] = task
    try:
        async with asyncio.timeout(15):
            await service.ready.wait()
        for name in TOKEN_ROLES:
            role, _, grant = name.partition("+")
            token_name = f"test-{role}-{grant or 'plain'}"
            with contextlib.suppress(AccountError):  # a restart on the same data dir
                await service.accounts.revoke_token(token_name)
            issued = await service.accounts.create_token(
                token_name, Role(role), created_by="tests", telemetry=bool(grant)
            )
            service.tokens[name] = issued.secret
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        m.tasks.pop("dispatch", None)


def bearer(service: Dispatch, role: str = "admin") -> dict[str, str]:
    """The Authorization header of the service's token for ``role``."""
    return {"Authorization": f"Bearer {service.tokens[role]}"}


def api(service: DispatchService, role: str | None = "admin") -> httpx.AsyncClient:
    """An HTTP client for the service (loopback, no proxies from the environment),
    with the token of ``role`` (None: no credentials)."""
    headers = bearer(service, role) if role is not None and isinstance(service, Dispatch) else {}
    return httpx.AsyncClient(base_url=service.url, timeout=10.0, trust_env=False, headers=headers)


async def add_user(service: DispatchService, name: str, role: Role = Role.DISPATCHER) -> str:
    """Add a map user; their generated password."""
    _, password = await service.accounts.add_user(name, role)
    assert password is not None
    return password


async def login(client: httpx.AsyncClient, name: str, password: str) -> str:
    """Log ``client`` in (it keeps the cookie) and set its CSRF header; the CSRF token."""
    r = await client.post("/api/v1/session", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    csrf: str = r.json()["csrf_token"]
    client.headers[CSRF_HEADER] = csrf
    return csrf


def add(
    m: Mesh,
    device_id: str,
    kind: DeviceKind,
    *,
    unit: str,
    at: float | None = None,
    bearing: float = 0.0,
    paired: tuple[str, ...] = (),
    age: float = 0.0,
) -> DeviceAgent:
    """``Mesh.add`` with a unit (the agent announces it when it connects)."""
    agent = m.add(device_id, kind, at=at, bearing=bearing, paired=paired, age=age)
    agent.unit = unit
    return agent


async def silent_camera(m: Mesh, device_id: str, *, unit: str, at: float, bearing: float) -> None:
    """A body camera that is on the map and gets commands but never answers them."""
    lat, lon = destination(*CENTER, bearing, at)
    presence = Presence(online=True, ts=time.time(), device_kind=DeviceKind.BODY_CAM, unit=unit)
    fix = Telemetry(ts=time.time(), state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=2.0)
    async with m.client() as client:
        await client.publish(m.topics.presence(device_id), encode(presence), qos=1, retain=True)
        await client.publish(m.topics.telemetry(device_id), encode(fix), qos=1)


async def keep_fresh(m: Mesh, device_id: str, *, at: float, bearing: float) -> None:
    """Keep a fake device's fix fresh, as its telemetry would (until cancelled)."""
    lat, lon = destination(*CENTER, bearing, at)
    async with aiomqtt.Client(HOST, m.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        while True:
            fix = Telemetry(ts=time.time(), state=DeviceState.BUFFERING, lat=lat, lon=lon, acc=2.0)
            await client.publish(m.topics.telemetry(device_id), encode(fix), qos=0)
            # Time itself: a device's telemetry period, which keeps the fix from aging.
            await asyncio.sleep(0.5)


def trail(root: Path, *types: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(event type, subject, outcome, body) of the ledger's records of these types."""
    marks = ",".join("?" * len(types))
    with sqlite3.connect(root / "ledger.sqlite3") as db:
        rows = db.execute(
            f"SELECT event_type, subject, outcome, body FROM records WHERE event_type IN "
            f"({marks}) ORDER BY seq",
            types,
        ).fetchall()
    return [(t, s, o, json.loads(b)) for t, s, o, b in rows]


def taser_record(eid: str, ts: float | None = None, camera: str = "bwc-1") -> Activation:
    """The record the engine publishes for a TASER draw by ``cew-1`` that commanded
    ``camera``, decided at ``ts`` (now by default)."""
    now = time.time() if ts is None else ts
    return Activation(
        aid=activation_id("cew-1", eid),
        eid=eid,
        src="cew-1",
        type="taser_draw",
        ets=now - 0.01,
        ts=now,
        lat=CENTER[0],
        lon=CENTER[1],
        radius=9.144,
        pre=30.0,
        cameras=(
            CameraActivation(
                id=camera,
                device_kind=DeviceKind.BODY_CAM,
                reason=ActivationReason.PROXIMITY,
                dist=3.0,
            ),
        ),
        excluded=0,
    )


async def in_the_ledger_only(location: Path | str, record: Activation, agency: str) -> None:
    """What the engine writes before it publishes ``record`` (the activation row and its
    camera's decision), with nothing published: a record the bus lost."""
    row = ActivationRow(
        aid=record.aid,
        src=record.src,
        eid=record.eid,
        type=record.type,
        event_ts=record.ets,
        received_ts=record.ets,
        decided_ts=record.ts,
        lat=record.lat,
        lon=record.lon,
        acc=3.0,
        position_source="event",
        radius_m=record.radius,
        pre_roll_s=record.pre,
        rule={"event_type": record.type, "radius_m": record.radius},
        initiated_by=None,
        engine="engine-1",
    )
    cams = [
        DecisionRow(c.id, c.device_kind.value, True, c.reason.value, c.dist, 0.0, 0.5, 0.0)
        for c in record.cameras
    ]
    async with open_ledger(location, agency=agency) as ledger:
        assert await ledger.record_activation(row, cams)
