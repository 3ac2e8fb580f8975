"""Activations as CloudEvents 1.0 (JSON, structured mode), and their HMAC signature.

One activation is one CloudEvent::

    {"specversion": "1.0",
     "id": "act-…",                          # the activation id: the same on every endpoint
     "source": "/actimesh/<agency>",
     "type": "org.actimesh.activation.v1",
     "subject": "<device that raised the trigger>",
     "time": "2025-05-01T12:00:00.123Z",    # when the trigger happened (event time)
     "datacontenttype": "application/json",
     "data": { …the activation record, as on am/v1/<agency>/json/activations/… }}

The body is built once, stored in the outbox and sent byte for byte on every attempt, so
its signature (``sha256=<hex>`` HMAC-SHA256 over the exact body, in
``X-Actimesh-Signature-256``) is the same each time. Cameras are sorted by id so the
record rebuilt from the ledger and the one read off the broker give the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

from actimesh.broker.messages import Activation

__all__ = [
    "ACTIVATION_EVENT_TYPE",
    "CONTENT_TYPE",
    "SIGNATURE_PREFIX",
    "activation_event",
    "rfc3339",
    "sign",
    "verify",
]

ACTIVATION_EVENT_TYPE = "org.actimesh.activation.v1"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
SIGNATURE_PREFIX = "sha256="


def rfc3339(ts: float) -> str:
    """UNIX seconds as an RFC 3339 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def activation_event(record: Activation, *, agency: str) -> bytes:
    """The CloudEvent for one activation record, as UTF-8 JSON bytes."""
    data = record.model_dump(mode="json", exclude_none=True)
    data["cameras"] = sorted(data["cameras"], key=lambda c: c["id"])
    document = {
        "specversion": "1.0",
        "id": record.aid,
        "source": f"/actimesh/{agency}",
        "type": ACTIVATION_EVENT_TYPE,
        "subject": record.src,
        "time": rfc3339(record.ets),
        "datacontenttype": "application/json",
        "data": data,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_PREFIX}{digest}"


def verify(secret: str, body: bytes, header: str) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time comparison)."""
    return hmac.compare_digest(sign(secret, body), header.strip())
