"""The web listeners as processes of their own: the dispatch map and API, and the
evidence upload API.

``actimesh up`` starts each under a :class:`~actimesh.runtime.supervisor.Supervisor`, so a web
client, however hostile, shares neither a process nor an event loop with the trigger
engine. Each entry here runs in the child: it opens what it needs itself (the evidence
store, its own ledger connection), serves until cancelled, and reports its address
once it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actimesh.broker.topics import Topics
from actimesh.dispatch.service import DispatchService
from actimesh.evidence import (
    DiskStore,
    EvidenceService,
    RegistryKeys,
    Uploads,
    UploadServer,
    create_upload_app,
    evidence_retention_loop,
)
from actimesh.runtime.config import Settings
from actimesh.runtime.supervisor import Report
from actimesh.security.acl import SERVICE_DISPATCH

if TYPE_CHECKING:
    from actimesh.runtime.compose import BrokerAddress

__all__ = ["DispatchJob", "open_evidence", "serve_dispatch", "serve_evidence"]


@dataclass(frozen=True, slots=True)
class DispatchJob:
    """What the dispatch child needs from ``up``."""

    settings: Settings
    broker: BrokerAddress


@contextlib.asynccontextmanager
async def open_evidence(settings: Settings) -> AsyncIterator[EvidenceService]:
    """The evidence store of the data directory (``[evidence]``), open on the ledger the
    engine created."""
    root = settings.evidence.root(settings.data_dir)
    service = EvidenceService(
        store=DiskStore(root),
        staging=root / ".uploads",
        keys=RegistryKeys(settings.data_dir),
        ledger_location=settings.ledger_location,
        agency=settings.agency,
        settings=settings.evidence,
    )
    async with service:
        yield service


async def serve_evidence(settings: Settings, report: Report) -> None:
    """The evidence upload API and its retention, until cancelled."""
    async with open_evidence(settings) as evidence:
        uploads = UploadServer(
            create_upload_app(Uploads(evidence)),
            host=settings.evidence.host,
            port=settings.evidence.port,
            client_timeout_s=settings.evidence.client_timeout_s,
            max_clients=settings.evidence.max_clients,
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(uploads.run(), name="evidence-uploads")
            tg.create_task(evidence_retention_loop(evidence), name="evidence-retention")
            await uploads.ready.wait()
            report(uploads.url)


async def serve_dispatch(job: DispatchJob, report: Report) -> None:
    """The dispatch map, API and webhooks, until cancelled."""
    settings, broker = job.settings, job.broker
    async with open_evidence(settings) as evidence:
        dispatch = DispatchService(
            topics=Topics(settings.agency),
            transport=broker.transport(SERVICE_DISPATCH),
            settings=settings.dispatch,
            data_dir=settings.data_dir,
            ledger_location=settings.ledger_location,
            max_fix_age_s=settings.policy.max_fix_age_s,
            gps_margin_m=settings.policy.widest_margin_m,
            event_types=tuple(r.event_type for r in settings.rules),
            evidence=evidence,
            # The devices the engine places by the OwnTracks app, the map shows too.
            owntracks=settings.adapters.owntracks.enabled,
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(dispatch.run(), name="dispatch")
            await dispatch.ready.wait()
            report(dispatch.url)
