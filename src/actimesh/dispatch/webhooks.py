"""Webhook delivery: activations into the outbox, and the outbox out to the receivers.

Two ways in, one way out:

* :meth:`Webhooks.submit` is called for each activation record read off the broker: the
  fast path, a few milliseconds after the engine decided.
* :meth:`Webhooks.reconcile` compares the outbox with the ledger every
  ``webhook_reconcile_s``: anything the broker did not bring (the dispatch was down past
  its session, or died between the MQTT acknowledgement — which aiomqtt sends before the
  handler runs — and the outbox write) is enqueued from the ledger. The ledger is the
  source of truth; the outbox write is idempotent, so both paths may see the same
  activation.

The delivery loop leases due deliveries, POSTs each with a hard overall timeout, and
marks it delivered on 2xx. Anything else (an error status, a timeout, a refused
connection) is retried with exponential backoff and full jitter, honouring
``Retry-After``, until ``webhook_max_attempts``; then the delivery is ``failed`` and
shown so in the API (an operator can retry it). Headers on every attempt::

    Content-Type: application/cloudevents+json; charset=utf-8
    X-Actimesh-Delivery: dlv-…          stable across retries: dedupe on it
    X-Actimesh-Attempt: 3
    X-Actimesh-Signature-256: sha256=…  HMAC-SHA256 of the exact body with the secret
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from actimesh import __version__
from actimesh.broker.messages import Activation
from actimesh.dispatch.cloudevents import CONTENT_TYPE, activation_event, sign
from actimesh.dispatch.outbox import Due, Outbox
from actimesh.dispatch.queries import LedgerQueries
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import LedgerError

__all__ = ["WebhookStats", "Webhooks", "backoff_s"]

log = logging.getLogger(__name__)

_IDLE_POLL_S = 5.0


def backoff_s(attempt: int, *, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, full jitter
    over its upper half so retries of many deliveries spread out."""
    delay = min(max_s, initial_s * 2 ** min(attempt - 1, 32))
    return rng.uniform(delay / 2, delay)


def _retry_after(response: httpx.Response, now: float) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    return None


@dataclass(slots=True)
class WebhookStats:
    enqueued: int = 0
    reconciled: int = 0
    attempts: int = 0
    delivered: int = 0
    retries: int = 0
    gave_up: int = 0
    errors: int = 0
    pending: int = 0
    failed: int = 0


class Webhooks:
    """The outbox's two inputs and its delivery loop."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        ledger: LedgerQueries,
        settings: DispatchSettings,
        agency: str,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.outbox = outbox
        self.ledger = ledger
        self.settings = settings
        self.agency = agency
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = WebhookStats()
        self._transport = transport
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for due deliveries now (a new endpoint, a new activation, a retry)."""
        self._wake.set()

    # ------------------------------------------------------------------ intake
    async def submit(self, record: Activation) -> None:
        """Enqueue one activation for every endpoint that wants it."""
        body = activation_event(record, agency=self.agency)
        added = await self.outbox.enqueue(
            aid=record.aid,
            event_type=record.type,
            decided_ts=record.ts,
            body=body,
            now=self.clock(),
        )
        if added:
            self.stats.enqueued += added
            self.wake()

    async def reconcile(self) -> int:
        """Enqueue ledger activations the outbox has not seen; returns how many."""
        now = self.clock()
        candidates = await self.ledger.aids_since(now - self.settings.webhook_reconcile_window_s)
        added = 0
        for aid in await self.outbox.unseen(candidates):
            record = await self.ledger.record(aid)
            if record is None:  # pragma: no cover - ledger rows are never deleted
                continue
            body = activation_event(record, agency=self.agency)
            added += await self.outbox.enqueue(
                aid=aid, event_type=record.type, decided_ts=record.ts, body=body, now=now
            )
        if added:
            self.stats.reconciled += added
            log.info("webhooks: %d deliveries enqueued from the ledger", added)
            self.wake()
        return added

    async def reconcile_loop(self) -> None:
        """Reconcile now and every ``webhook_reconcile_s``; prune old deliveries."""
        while True:
            try:
                await self.reconcile()
                now = self.clock()
                await self.outbox.prune(
                    before=now - self.settings.webhook_retention_s,
                    seen_before=now - self.settings.webhook_reconcile_window_s - 3600.0,
                )
                counts = await self.outbox.counts()
                self.stats.pending, self.stats.failed = counts["pending"], counts["failed"]
            except LedgerError:
                self.stats.errors += 1
                log.exception("webhooks: reconciliation failed; trying again later")
            await asyncio.sleep(self.settings.webhook_reconcile_s)

    # ------------------------------------------------------------------ delivery
    async def run(self) -> None:
        """Deliver due deliveries until cancelled."""
        s = self.settings
        timeout = httpx.Timeout(s.webhook_timeout_s)
        limits = httpx.Limits(max_connections=s.webhook_concurrency * 2)
        headers = {"User-Agent": f"actimesh/{__version__} webhooks"}
        async with httpx.AsyncClient(
            timeout=timeout,
            limits=limits,
            headers=headers,
            follow_redirects=False,
            transport=self._transport,
            trust_env=False,
        ) as client:
            while True:
                self._wake.clear()
                try:
                    batch = await self.outbox.lease(
                        now=self.clock(),
                        limit=s.webhook_concurrency,
                        lease_s=s.webhook_timeout_s + 5.0,
                    )
                except LedgerError:
                    self.stats.errors += 1
                    log.exception("webhooks: cannot read the outbox")
                    batch = []
                if batch:
                    async with asyncio.TaskGroup() as tg:
                        for due in batch:
                            tg.create_task(self._deliver(client, due), name=due.delivery_id)
                    continue
                await self._sleep_until_due()

    async def _sleep_until_due(self) -> None:
        wait = _IDLE_POLL_S
        with contextlib.suppress(LedgerError):
            due = await self.outbox.next_due()
            if due is not None:
                wait = min(wait, max(0.0, due - self.clock()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def _deliver(self, client: httpx.AsyncClient, due: Due) -> None:
        s = self.settings
        self.stats.attempts += 1
        headers = {
            "Content-Type": CONTENT_TYPE,
            "X-Actimesh-Delivery": due.delivery_id,
            "X-Actimesh-Attempt": str(due.attempt),
            "X-Actimesh-Signature-256": sign(due.secret, due.body),
        }
        status: int | None = None
        retry_after: float | None = None
        try:
            # httpx times each phase; this bounds the whole attempt (a slow-drip reply).
            async with asyncio.timeout(s.webhook_timeout_s + 1.0):
                response = await client.post(due.url, content=due.body, headers=headers)
            status = response.status_code
            if 200 <= status < 300:
                await self.outbox.delivered(due.delivery_id, status=status, now=self.clock())
                self.stats.delivered += 1
                return
            error = f"HTTP {status} {response.reason_phrase}".strip()
            if status in (429, 503):
                retry_after = _retry_after(response, self.clock())
        except TimeoutError:
            error = f"no answer within {s.webhook_timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except LedgerError:
            self.stats.errors += 1
            log.exception("webhooks: delivery %s not recorded as delivered", due.delivery_id)
            return  # the lease runs out and it is sent again: at least once
        except asyncio.CancelledError:
            # A graceful stop: hand the delivery back so the next start sends it at once
            # (after a crash the lease runs out instead). Shielded: we are being cancelled.
            with contextlib.suppress(LedgerError):
                await asyncio.shield(
                    self.outbox.attempt_failed(
                        due.delivery_id,
                        status=None,
                        error="interrupted by a shutdown",
                        retry_at=self.clock(),
                    )
                )
            raise
        except Exception as exc:  # a bug must not stop the other deliveries (not Cancelled)
            self.stats.errors += 1
            log.exception("webhooks: delivery %s failed unexpectedly", due.delivery_id)
            error = f"internal error: {type(exc).__name__}"
        try:
            await self._failed(due, status, error, retry_after)
        except LedgerError:
            self.stats.errors += 1
            log.exception("webhooks: cannot record attempt %d of %s", due.attempt, due.delivery_id)

    async def _failed(
        self, due: Due, status: int | None, error: str, retry_after: float | None
    ) -> None:
        s = self.settings
        if due.attempt >= s.webhook_max_attempts:
            self.stats.gave_up += 1
            log.warning(
                "webhook %s to %s failed for good after %d attempts: %s",
                due.delivery_id,
                due.url,
                due.attempt,
                error,
            )
            await self.outbox.attempt_failed(
                due.delivery_id, status=status, error=error, retry_at=None
            )
            return
        delay = backoff_s(
            due.attempt,
            initial_s=s.webhook_backoff_initial_s,
            max_s=s.webhook_backoff_max_s,
            rng=self.rng,
        )
        if retry_after is not None:
            delay = min(max(delay, retry_after), s.webhook_backoff_max_s)
        self.stats.retries += 1
        log.info(
            "webhook %s attempt %d to %s failed (%s); retry in %.1f s",
            due.delivery_id,
            due.attempt,
            due.url,
            error,
            delay,
        )
        await self.outbox.attempt_failed(
            due.delivery_id, status=status, error=error, retry_at=self.clock() + delay
        )
