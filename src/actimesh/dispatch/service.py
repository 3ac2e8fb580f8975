"""The dispatch service: MQTT feed, live frames, webhook delivery and the web server,
as named tasks of one TaskGroup.

``actimesh up`` runs it beside the engine in the same event loop, so it is built not to
slow the engine down: telemetry arrives on its own shed-able link; WebSocket frames are
throttled (at most one per ``frame_interval_s``, except for activations,
acknowledgements and alerts, which go at once) and encoded once for all clients; slow
clients are cut off instead of buffered; every database call runs on a worker thread.
For a large fleet run it as its own process against the same broker (it is a client
like any other).

uvicorn runs inside this TaskGroup on a socket bound here (so a busy port is a one-line
:class:`~actimesh.errors.ConfigError`, not uvicorn's ``sys.exit``) and without its
signal handlers (actimesh owns SIGINT/SIGTERM). Cancelling the service closes the live
clients, shuts the server down gracefully (bounded), and closes the databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actimesh import listener
from actimesh.broker.messages import Activation
from actimesh.broker.topics import Topics
from actimesh.broker.transport import MqttTransport
from actimesh.dispatch.accounts import ACCOUNTS_FILE, AccountStore
from actimesh.dispatch.app import create_app
from actimesh.dispatch.audit import AuditTrail
from actimesh.dispatch.auth import Authenticator
from actimesh.dispatch.context import AppContext, EventFrame
from actimesh.dispatch.feed import Feed
from actimesh.dispatch.hub import Hub
from actimesh.dispatch.metrics import DispatchMetrics, MetricSources
from actimesh.dispatch.outbox import Outbox
from actimesh.dispatch.queries import open_reader
from actimesh.dispatch.roster import Roster
from actimesh.dispatch.settings import DispatchSettings
from actimesh.dispatch.state import LiveState
from actimesh.dispatch.webhooks import Webhooks
from actimesh.errors import ActimeshError, ConfigError, LedgerError
from actimesh.evidence.service import EvidenceService

__all__ = ["DispatchService"]

log = logging.getLogger(__name__)

#: An activation decided this recently may still be on its way over the bus.
_IN_FLIGHT_S = 2.0
#: With nothing to send, a tick this often tells clients the feed is alive.
_TICK_S = 2.0
_URGENT_GAP_S = 0.02
_START_TIMEOUT_S = 30.0


def _sse(event: dict[str, Any]) -> EventFrame:
    data = event["data"]
    kind = event["event"]
    ident = data["aid"] if kind == "activation" else f"{data['aid']}/{data['id']}"
    text = f"event: {kind}\nid: {ident}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    return data["type"], text


class DispatchService:
    """The dispatch web app for one agency. Create inside the running loop; ``await run()``.

    With ``evidence`` (an open :class:`~actimesh.evidence.EvidenceService`) dispatchers
    list and download offloaded recordings, each view written to the ledger. With
    ``owntracks`` (``[adapters.owntracks] enabled``) the map also reads the OwnTracks
    app's locations, so a device placed only by an officer's phone is shown.
    """

    def __init__(
        self,
        *,
        topics: Topics,
        transport: MqttTransport,
        settings: DispatchSettings,
        data_dir: Path,
        ledger_location: Path | str,
        max_fix_age_s: float,
        gps_margin_m: float = 0.0,
        event_types: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        evidence: EvidenceService | None = None,
        owntracks: bool = False,
    ) -> None:
        self.topics = topics
        #: The evidence store (opened by the caller): lists and downloads of recordings.
        self.evidence = evidence
        self.settings = settings
        self.clock = clock
        self.ready = asyncio.Event()
        self.address: tuple[str, int] | None = None
        self.state = LiveState(
            max_fix_age_s=max_fix_age_s,
            ack_timeout_s=settings.ack_timeout_s,
            max_devices=settings.max_devices,
            max_activations=settings.max_activations,
            activation_retention_s=settings.activation_retention_s,
            offline_retention_s=settings.offline_retention_s,
        )
        self.roster = Roster(data_dir, self.state)
        self.live: Hub[str] = Hub(
            queue_size=settings.client_queue, max_clients=settings.max_clients
        )
        self.events: Hub[EventFrame] = Hub(
            queue_size=settings.client_queue, max_clients=settings.max_clients
        )
        self.ledger = open_reader(ledger_location, agency=topics.agency)
        self.accounts = AccountStore(
            data_dir / ACCOUNTS_FILE,
            session_idle_s=settings.session_idle_s,
            session_max_s=settings.session_max_s,
            clock=clock,
        )
        self.audit = AuditTrail(
            ledger_location,
            f"dispatch/{settings.console_id}",
            agency=topics.agency,
            clock=clock,
        )
        self.auth = Authenticator(
            store=self.accounts, audit=self.audit, settings=settings, clock=clock
        )
        self.outbox = Outbox(data_dir / "webhooks.sqlite3")
        self.webhooks = Webhooks(
            outbox=self.outbox,
            ledger=self.ledger,
            settings=settings,
            agency=topics.agency,
            clock=clock,
        )
        self._changed = asyncio.Event()
        self._urgent = asyncio.Event()
        self._waiters: dict[str, asyncio.Event] = {}
        self.feed = Feed(
            topics=topics,
            transport=transport,
            settings=settings,
            state=self.state,
            changed=self._changed,
            urgent=self._urgent,
            on_activation=self._on_activation,
            clock=clock,
            owntracks=owntracks,
        )
        self.metrics = DispatchMetrics(
            MetricSources(
                state=self.state,
                links=lambda: {
                    "ctl": self.feed.ctl.stats,
                    "telemetry": self.feed.telemetry_link.stats,
                },
                hubs={
                    "live": (self.live.stats, lambda: len(self.live)),
                    "stream": (self.events.stats, lambda: len(self.events)),
                },
                webhooks=self.webhooks.stats,
                auth=self.auth.stats,
                audit=self.audit.stats,
            )
        )
        self.state.on_decision = self.metrics.decision_seconds.observe
        self.state.on_ack_latency = self.metrics.ack_seconds.observe
        # uvicorn answers 503 to everyone beyond ``limit_concurrency``; the last quarter
        # of it (at least 4) is kept for callers with credentials (AuthGate).
        limit = settings.max_clients * 2
        self.gauge = listener.ConnectionGauge(limit, max(4, limit // 4))
        self.app = create_app(
            AppContext(
                settings=settings,
                agency=topics.agency,
                max_fix_age_s=max_fix_age_s,
                gps_margin_m=gps_margin_m,
                event_types=event_types,
                state=self.state,
                live=self.live,
                events=self.events,
                feed=self.feed,
                ledger=self.ledger,
                outbox=self.outbox,
                webhooks=self.webhooks,
                metrics=self.metrics,
                wait_for_activation=self.wait_for_activation,
                auth=self.auth,
                clock=clock,
                evidence=evidence,
                gauge=self.gauge,
            )
        )

    @property
    def url(self) -> str:
        """``http(s)://host:port`` once bound."""
        if self.address is None:
            raise ActimeshError("the dispatch service is not listening yet")
        return listener.url(self.address, tls=bool(self.settings.tls))

    # ------------------------------------------------------------------ lifecycle
    def _bind(self) -> socket.socket:
        s = self.settings
        sock = listener.bind(
            s.host,
            s.port,
            what="dispatch",
            fix="pass --http-port N, or --no-http to run without the dispatch map",
        )
        self.address = listener.address(sock)
        return sock

    async def run(self) -> None:
        """Run until cancelled; ``ready`` is set once the page and the feed are up."""
        tls = self._tls()
        sock = self._bind()
        try:
            async with self.ledger, self.outbox, self.accounts, self.audit:
                await self.roster.load()
                await self._backfill()
                server = listener.hardened_server(
                    self.app,
                    client_timeout_s=self.settings.client_timeout_s,
                    gauge=self.gauge,
                    tls=tls,
                    ws="websockets-sansio",
                    ws_max_size=64 * 1024,
                    ws_ping_interval=20.0,
                    ws_ping_timeout=20.0,
                )
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.feed.run(), name="dispatch-feed")
                    tg.create_task(self._frames(), name="dispatch-frames")
                    tg.create_task(self.roster.run(), name="dispatch-roster")
                    tg.create_task(self.webhooks.run(), name="dispatch-webhooks")
                    tg.create_task(self.webhooks.reconcile_loop(), name="dispatch-reconcile")
                    tg.create_task(self._catch_up_loop(), name="dispatch-catch-up")
                    tg.create_task(
                        listener.serve(
                            server, sock, what="dispatch web server", on_stop=self._closing
                        ),
                        name="dispatch-http",
                    )
                    await listener.wait_started(server, _START_TIMEOUT_S)
                    await self.feed.wait_connected(_START_TIMEOUT_S)
                    self.ready.set()
        finally:
            self.ready.clear()
            sock.close()

    def _tls(self) -> dict[str, Any]:
        s = self.settings
        if s.tls_certfile is None or s.tls_keyfile is None:
            return {}
        for name, path in (("tls_certfile", s.tls_certfile), ("tls_keyfile", s.tls_keyfile)):
            if not path.is_file():
                raise ConfigError(
                    f"dispatch.{name} {path} does not exist; give PEM files (`actimesh certs` "
                    "makes them) or leave both out to serve plain http"
                )
        return {"ssl_certfile": str(s.tls_certfile), "ssl_keyfile": str(s.tls_keyfile)}

    def _closing(self) -> None:
        """Tell live clients to go: they reconnect to whoever serves next."""
        self.live.close()
        self.events.close()

    async def _backfill(self) -> None:
        """Put the recent activations back on the map after a restart."""
        now = self.clock()
        since = now - self.settings.activation_retention_s
        try:
            recent = await self.ledger.recent(since, self.settings.max_activations)
        except LedgerError:
            log.exception("dispatch: recent activations not restored from the ledger")
            return
        for record, acks in recent:
            self.state.activation(record, now, replay=True)
            for device_id, ack in acks:
                self.state.ack(device_id, ack, now)
        self.state.expire(now)
        # Dispatchers' acknowledgements too: an alert acknowledged before the restart
        # must not sound again.
        for record, _ in recent:
            try:
                done = await self.ledger.workflow(record.aid)
            except LedgerError:
                log.exception("dispatch: acknowledgements of %s not restored", record.aid)
                break
            for done_ack in done.acks:
                self.state.acknowledge(done_ack.aid, done_ack.alert_id, done_ack.by, done_ack.ts)
        # A fresh page gets all of this in its snapshot; nothing to stream.
        self.state.take_delta(now)
        self.state.take_events()

    async def _catch_up_loop(self) -> None:
        """Catch the map up from the ledger after each reconnection of the feed, and every
        ``webhook_reconcile_s`` besides: a record the engine wrote but the bus lost (its
        publish during a cluster's leader election after a node's loss) is found there."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.webhook_reconcile_s):
                    await self.feed.reconnected.wait()
            self.feed.reconnected.clear()
            try:
                await self._catch_up()
            except LedgerError:
                self.state.stats.catch_up_errors += 1
                log.exception("dispatch: the map not caught up from the ledger; again later")

    async def _catch_up(self) -> int:
        """Put on the map the recent activations the ledger has and the map has not
        (with their cameras' acknowledgements), as the bus would have; how many."""
        now = self.clock()
        since = now - self.settings.activation_retention_s
        aids = await self.ledger.aids_since(since)
        # The newest the map holds at most; older ones it would evict again at once.
        wanted = aids[-self.settings.max_activations :]
        lost: dict[str, float] = {}
        for aid in wanted:
            if aid in self.state.activations:
                continue
            record = await self.ledger.record(aid)
            # A record decided a moment ago may still be on its way over the bus: it is
            # left to the bus this round and caught up in the next if it never comes.
            if record is not None and now - record.ts >= _IN_FLIGHT_S:
                lost[aid] = record.ets
        if not lost:
            return 0
        # Read again with their acknowledgements, which only this query brings; rare
        # (a record lost on the bus), so the heavier read is paid only then.
        recent = await self.ledger.recent(min(lost.values()), self.settings.max_activations)
        found = 0
        for record, acks in recent:
            if record.aid not in lost:
                continue
            new = self.state.activation(record, now, replay=True)
            for device_id, ack in acks:
                self.state.ack(device_id, ack, now)
            if new:
                # Counted with the state it changes, before the await: a reader that
                # sees the activation sees it counted.
                found += 1
                self.state.stats.activations_caught_up += 1
                await self._on_activation(record, new)
        if found:
            log.info(
                "dispatch: %d activations the bus did not bring caught up from the ledger", found
            )
            self._urgent.set()
            self._changed.set()
        return found

    # ------------------------------------------------------------------ activations
    async def _on_activation(self, record: Activation, new: bool) -> None:
        if not new:
            return
        waiter = self._waiters.get(record.aid)
        if waiter is not None:
            waiter.set()
        try:
            await self.webhooks.submit(record)
        except LedgerError:
            # The reconciler finds it in the ledger within webhook_reconcile_s.
            log.exception("dispatch: activation %s not put in the webhook outbox", record.aid)

    async def wait_for_activation(self, aid: str, timeout: float) -> dict[str, Any] | None:
        """The live activation ``aid`` once it arrives, or None after ``timeout``."""
        view = self.state.activations.get(aid)
        if view is None:
            waiter = self._waiters.setdefault(aid, asyncio.Event())
            try:
                async with asyncio.timeout(timeout):
                    await waiter.wait()
            except TimeoutError:
                return None
            finally:
                self._waiters.pop(aid, None)
            view = self.state.activations.get(aid)
        return None if view is None else view.to_json()

    # ------------------------------------------------------------------ frames
    async def _frames(self) -> None:
        """Send what changed: at once if the map was quiet or the change is urgent (an
        activation, an acknowledgement, an alert), else at most once per interval."""
        interval = self.settings.frame_interval_s
        last_sent = -math.inf
        while True:
            wait = _TICK_S
            deadline = self.state.next_deadline()
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - self.clock()) + 0.001)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            gap = last_sent + interval - time.monotonic()
            if gap > 0 and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(gap):
                        await self._urgent.wait()
            if self._urgent.is_set():
                # Even urgent frames are spaced a little, so a burst of acknowledgements
                # from a large activation is batched rather than re-sent per camera.
                await asyncio.sleep(max(0.0, last_sent + _URGENT_GAP_S - time.monotonic()))
            self._urgent.clear()
            self._changed.clear()
            now = self.clock()
            self.state.expire(now)
            events = self.state.take_events()
            if len(self.events):
                for event in events:
                    self.events.publish(_sse(event))
            if not len(self.live):
                # Nobody watching: forget what changed instead of encoding it for no one.
                self.state.clear_changes()
                continue
            delta = self.state.take_delta(now)
            if delta is not None:
                delta["connected"] = self.feed.connected
                self.live.publish(json.dumps(delta, separators=(",", ":")))
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= _TICK_S:
                tick = {"type": "tick", "now": now, "connected": self.feed.connected}
                self.live.publish(json.dumps(tick))
                last_sent = time.monotonic()
