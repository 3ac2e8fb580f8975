"""The errors actimesh raises.

Every error a user can see derives from :class:`ActimeshError` and reads as one line
that says what is wrong and how to fix it. The tree::

    ActimeshError
    ├── ConfigError            bad settings, flags or files given by the operator
    ├── BrokerError            the MQTT broker could not be started or reached
    │   └── BrokerNotInstalled the mosquitto binary is missing
    ├── PayloadError           a message on the wire was rejected (carries a reason code)
    ├── MediaError             a camera's video source could not be opened or encoded
    ├── EvidenceError          an evidence upload, offload or lookup was refused (reason code)
    ├── NamespaceError         a drill's network namespace could not be made, cut or
    │                          healed (in :mod:`actimesh.drills.netns`, its only user)
    ├── SecurityError          a device, account or certificate operation was refused
    │   └── AccountError       a dispatch user or API token change was refused
    └── LedgerError            the activation ledger could not be opened or written
        └── AuditError         an audit command could not run (no ledger, unknown case)

A :class:`PayloadError` never stops the engine: the message is counted, dead-lettered
and the engine goes on with the next one.
"""

from __future__ import annotations

__all__ = [
    "AccountError",
    "ActimeshError",
    "AuditError",
    "BrokerError",
    "BrokerNotInstalledError",
    "ConfigError",
    "EvidenceError",
    "LedgerError",
    "MediaError",
    "NotCommandedError",
    "PayloadError",
    "SecurityError",
    "first_error",
]


class ActimeshError(Exception):
    """Root of every error actimesh raises on purpose."""


class ConfigError(ActimeshError):
    """A setting, flag or file given by the operator is wrong."""


class BrokerError(ActimeshError):
    """The MQTT broker could not be started or reached."""


class BrokerNotInstalledError(BrokerError):
    """The ``mosquitto`` binary is not installed on this machine."""


class LedgerError(ActimeshError):
    """The activation ledger could not be opened or written."""


class NotCommandedError(LedgerError):
    """An answer from a camera that its activation did not command: not written."""


class AuditError(LedgerError):
    """An audit command could not run: no ledger there, an unknown case, an unwritable folder.

    A ledger that fails verification is not an error: ``verify`` reports what it found.
    """


class SecurityError(ActimeshError):
    """A device, account or certificate operation was refused: an unknown or duplicate
    device, a reserved id, a missing CA. Nothing was changed."""


class AccountError(SecurityError):
    """A dispatch user or API token change was refused (unknown name, duplicate, the last
    admin). ``reason`` is a short stable code the API maps to a status."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class MediaError(ActimeshError):
    """A camera's video source could not be opened or encoded: no such capture device,
    a device that is not a camera, an encoder that failed."""


class EvidenceError(ActimeshError):
    """An evidence upload, offload or lookup was refused: a manifest that does not verify,
    a file whose SHA-256 differs, an unknown upload. ``reason`` is a short stable code the
    upload API maps to a status; nothing partial is ever listed as evidence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class PayloadError(ActimeshError):
    """A message was rejected. ``reason`` is a short stable code for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def first_error(exc: BaseException) -> ActimeshError | None:
    """The first :class:`ActimeshError` in ``exc``, looking inside the exception groups
    a TaskGroup raises: the one-line error to show, or None if there is none."""
    if isinstance(exc, ActimeshError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_error(inner)
            if found is not None:
                return found
    return None
