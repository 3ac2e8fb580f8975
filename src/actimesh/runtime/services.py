"""One service per process, for hosts of their own: ``actimesh engine --nats``,
``actimesh dispatch`` and ``actimesh evidence``, as the systemd units of ``deploy/`` run
them.

``actimesh up`` and ``actimesh cluster up`` run every part on one machine; a deployment
over several hosts runs each part where it belongs, each under its own unit, all
reading one ``actimesh.toml`` (the agency, ``[ledger] url``, ``[broker]``). An engine
joins a NATS cluster (``--nats``, any node's client URL; the others are learned from
it), the dispatch reads a broker's MQTT listener (a NATS node's, with
``[broker] mqtt_protocol = "3.1.1"``), the evidence upload API needs only the ledger and
its store.

Each logs in as its own account: ``[broker] username`` and ``password_file`` (or
``--username`` and ``--password-file``, so that units sharing one settings file log in as
``svc-engine`` and ``svc-dispatch``), and checks the nodes' certificate against
``[broker] ca_file`` when the cluster speaks TLS (``tls://`` URLs, or ``ca_file`` set).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from rich.console import Console

from actimesh.broker.client import TlsSettings
from actimesh.broker.nats import NatsTransport
from actimesh.dispatch.commands import bootstrap_admin
from actimesh.errors import ConfigError
from actimesh.evidence import UPLOADS_PATH
from actimesh.ledger import open_ledger
from actimesh.runtime.compose import (
    external_address,
    serve_engine,
)
from actimesh.runtime.config import Settings
from actimesh.runtime.web import DispatchJob, serve_dispatch, serve_evidence

__all__ = [
    "check_nats_urls",
    "nats_transport",
    "run_dispatch",
    "run_evidence",
    "run_nats_engine",
]


def check_nats_urls(urls: Sequence[str]) -> list[str]:
    """``nats://HOST:PORT`` URLs, or a one-line :class:`ConfigError` naming the bad one."""
    out = []
    for url in urls:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            port, parts = None, None
        if parts is None or parts.scheme not in ("nats", "tls") or not parts.hostname or not port:
            raise ConfigError(
                f"NATS URL {url!r}: write nats://HOST:PORT (a cluster node's client port, "
                "4222 by default; tls://HOST:PORT for TLS)"
            )
        out.append(url)
    if not out:
        raise ConfigError("--nats needs at least one nats://HOST:PORT")
    return out


def nats_transport(settings: Settings, servers: Sequence[str]) -> NatsTransport:
    """The engine's transport to ``servers``, logged in as ``[broker] username``."""
    b = settings.broker
    if b.username is None:
        raise ConfigError(
            "an engine on a NATS cluster logs in: set [broker] username and password_file "
            "(or --username svc-engine --password-file FILE)"
        )
    wants_tls = b.ca_file is not None or any(urlsplit(u).scheme == "tls" for u in servers)
    tls = TlsSettings(b.ca_file, b.cert_file, b.key_file) if wants_tls else None
    return NatsTransport(servers, user=b.username, password=b.password(), tls=tls)


async def run_nats_engine(settings: Settings, nats_urls: Sequence[str], console: Console) -> None:
    """One engine on a NATS cluster (``nats_urls``: any of its nodes), until cancelled.

    Replicas with distinct ``engine_id`` values on any hosts share the trigger events
    through one durable JetStream consumer, and write the one ledger (``[ledger] url``).
    """
    servers = check_nats_urls(nats_urls)
    transport = nats_transport(settings, servers)
    await serve_engine(settings, transport, f"NATS {', '.join(servers)}", console)


async def run_dispatch(
    settings: Settings, console: Console, *, fallbacks: Sequence[str] = ()
) -> None:
    """The dispatch map, API and webhooks on the broker at ``settings.broker_url``;
    ``fallbacks``: a cluster's other MQTT listeners, moved to in turn when one is lost."""
    if settings.broker_url is None:
        raise ConfigError("actimesh dispatch needs --broker mqtt://HOST:PORT (or [broker] url)")
    address = external_address(settings, settings.broker_url, fallbacks)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with open_ledger(settings.ledger_location, agency=settings.agency) as ledger:
        logins = await bootstrap_admin(settings.data_dir, ledger)

    def report(url: str) -> None:
        console.print(
            f"dispatch {url} (agency {settings.agency}, feed MQTT {address.protocol} on "
            f"{address.urls}, ledger {settings.ledger_shown})"
        )
        for line in logins.lines():
            console.print(line, markup=False)

    await serve_dispatch(DispatchJob(settings, address), report)


async def run_evidence(settings: Settings, console: Console) -> None:
    """The evidence upload API and its retention, on the ledger of ``settings``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    def report(url: str) -> None:
        console.print(
            f"evidence {url}{UPLOADS_PATH} (stored in {settings.evidence.root(settings.data_dir)},"
            f" ledger {settings.ledger_shown})"
        )

    await serve_evidence(settings, report)
