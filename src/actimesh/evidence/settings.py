"""The ``[evidence]`` settings: where uploaded recordings go, how long they stay, how big."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from actimesh.errors import ConfigError

__all__ = ["EvidenceSettings"]

#: CJIS 5.4 keeps audit records a year; evidence not linked to a case may not go sooner.
_MIN_RETENTION_DAYS = 365


@dataclass(frozen=True, slots=True)
class EvidenceSettings:
    """How the evidence store keeps offloaded recordings.

    ``dir`` None means ``{data_dir}/evidence``. ``max_upload_bytes`` bounds one recording
    (all its files), ``max_chunk_bytes`` one PUT; ``upload_expiry_s`` is how long an
    unfinished upload is kept for the camera to resume.
    """

    dir: Path | None = None
    #: 13 months: recordings not linked to a case are deleted after this.
    retention_days: float = 396.0
    #: Axon files are at most 4 h; 8 GiB holds that at a body camera's bit rates.
    max_upload_bytes: int = 8 << 30
    max_chunk_bytes: int = 16 << 20
    max_manifest_bytes: int = 4 << 20
    upload_expiry_s: float = 7 * 86_400.0
    #: Unfinished uploads one device may hold at once (a docked camera offloads its
    #: recordings one after the other; more is a camera gone wrong, or an attacker).
    max_open_uploads: int = 8
    #: A new upload must leave this much disk free after all open uploads are complete.
    min_free_bytes: int = 1 << 30
    #: Failed HTTP Basic checks allowed per device id from one address, and per address,
    #: within ``auth_window_s``; then 429. Each check is a password hash: guessing must
    #: stop before it.
    auth_max_failures: int = 5
    auth_max_failures_per_client: int = 20
    auth_window_s: float = 15 * 60.0
    #: A request head not sent within this closes the connection; a body whose next
    #: part takes longer gets 408 (a cellular dock link may pause, never for this long).
    client_timeout_s: float = 30.0
    #: Connections the listener holds at once (beyond them uvicorn answers 503); the
    #: last quarter (at least 4) is kept for requests with credentials.
    max_clients: int = 256
    #: The device upload listener (separate from the dispatch map; see docs/OPERATIONS.md).
    host: str = "127.0.0.1"
    port: int = 8471

    def __post_init__(self) -> None:
        if not self.retention_days >= _MIN_RETENTION_DAYS:  # also catches NaN
            raise ConfigError(
                f"evidence.retention_days must be at least {_MIN_RETENTION_DAYS} (CJIS 5.4), "
                f"got {self.retention_days!r}"
            )
        for name in ("max_upload_bytes", "max_chunk_bytes", "max_manifest_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evidence.{name} must be a positive number of bytes")
        for name in ("max_open_uploads", "auth_max_failures", "auth_max_failures_per_client"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evidence.{name} must be a whole number of at least 1")
        if self.max_clients < 8:
            raise ConfigError(
                f"evidence.max_clients must be at least 8 (a quarter is kept for devices "
                f"with credentials), got {self.max_clients}"
            )
        if self.min_free_bytes < 0:
            raise ConfigError("evidence.min_free_bytes must be 0 or more bytes")
        for name in ("upload_expiry_s", "auth_window_s", "client_timeout_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"evidence.{name} must be a positive number of seconds")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"evidence.port {self.port} must be between 0 and 65535")

    def root(self, data_dir: Path) -> Path:
        """The store's folder: ``dir`` or ``{data_dir}/evidence``."""
        return self.dir if self.dir is not None else data_dir / "evidence"
