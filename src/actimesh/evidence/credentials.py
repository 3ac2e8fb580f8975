"""Who is uploading: a device's own broker login, checked against the device registry.

A docked camera authenticates to the upload API with HTTP Basic: its device id and the
broker password the registry issued it. That credential already exists on every device,
is 144 random bits (so the cheap PBKDF2 of the Mosquitto hash is no weakness), is
replaced by ``actimesh devices rotate`` and dies with ``actimesh devices remove``: no
second secret to provision, rotate or revoke. It must travel over TLS in production.

The check is the registry's own (:meth:`Registry.check_password
<actimesh.security.registry.Registry.check_password>`, constant-time). Each check opens
the registry briefly on the calling worker thread, since SQLite connections stay on the
thread that made them, and a removed or rotated device fails from its next request on.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from actimesh.broker.topics import is_identifier
from actimesh.errors import SecurityError
from actimesh.security.registry import REGISTRY_NAME, Registry

__all__ = ["DeviceKeys", "RegistryKeys", "UploaderIdentity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UploaderIdentity:
    """An authenticated device and the key its manifests must be signed with."""

    device_id: str
    public_key: Ed25519PublicKey


class DeviceKeys(Protocol):
    """Checks a device's login and gives its registered manifest key. Blocking."""

    def authenticate(self, device_id: str, password: str) -> UploaderIdentity | None:
        """The device if the password is its own, else None."""
        ...

    def public_key(self, device_id: str) -> Ed25519PublicKey | None:
        """The registered key of ``device_id``, or None if it is not registered."""
        ...


class RegistryKeys:
    """:class:`DeviceKeys` from the registry of a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / REGISTRY_NAME

    @contextlib.contextmanager
    def _registry(self, device_id: str) -> Iterator[Registry | None]:
        # No registry file means no devices: never create one from here.
        if not is_identifier(device_id) or not self.path.is_file():
            yield None
            return
        try:
            registry = Registry(self.path)
        except SecurityError:
            log.exception("evidence: the device registry %s cannot be opened", self.path)
            yield None
            return
        with registry:
            yield registry

    def authenticate(self, device_id: str, password: str) -> UploaderIdentity | None:
        with self._registry(device_id) as registry:
            if registry is None:
                return None
            try:
                if not registry.check_password(device_id, password):
                    return None
                key = _key(registry.get(device_id).public_key)
            except (SecurityError, sqlite3.Error):
                return None  # removed meanwhile, or unreadable: fail closed
        return None if key is None else UploaderIdentity(device_id, key)

    def public_key(self, device_id: str) -> Ed25519PublicKey | None:
        with self._registry(device_id) as registry:
            if registry is None:
                return None
            try:
                return _key(registry.get(device_id).public_key)
            except (SecurityError, sqlite3.Error):
                return None


def _key(text: str) -> Ed25519PublicKey | None:
    with contextlib.suppress(ValueError):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    return None
