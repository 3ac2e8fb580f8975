"""The engine's view of the fleet: what each device is, what it is paired with, whether
it is online, and what state it last reported.

Positions live in the spatial index, not here: this module keeps only what the index
does not, so each tracked device costs one small slotted object. Devices describe
themselves in their retained presence message (kind, unit, paired devices); the broker
publishes their last will (``online: false``) when they vanish.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from actimesh.broker.messages import (
    CAMERA_KINDS,
    DeviceKind,
    DeviceState,
    OfflineReason,
    Presence,
)

__all__ = ["DeviceInfo", "Fleet", "LastFix"]


@dataclass(slots=True)
class LastFix:
    """Where a device was when it went offline (for the ledger's "offline" verdicts)."""

    lat: float
    lon: float
    acc: float | None
    ts: float


@dataclass(slots=True)
class DeviceInfo:
    """What the engine knows about one device."""

    device_id: str
    kind: DeviceKind | None = None
    unit: str | None = None
    paired: tuple[str, ...] = ()
    online: bool = False
    state: DeviceState | None = None
    last_seen: float = 0.0
    offline_since: float | None = None
    last_fix: LastFix | None = None

    @property
    def is_camera(self) -> bool:
        return self.kind in CAMERA_KINDS


class Fleet:
    """Every device the engine has heard of, by id."""

    def __init__(self) -> None:
        self._devices: dict[str, DeviceInfo] = {}
        # Devices that went offline recently, for "offline" verdicts near an event.
        self._recently_offline: dict[str, DeviceInfo] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def __iter__(self) -> Iterator[DeviceInfo]:
        return iter(self._devices.values())

    def get(self, device_id: str) -> DeviceInfo | None:
        return self._devices.get(device_id)

    def touch(self, device_id: str, now: float) -> DeviceInfo:
        """The device's record, created on first sight."""
        info = self._devices.get(device_id)
        if info is None:
            info = self._devices[device_id] = DeviceInfo(device_id)
        info.last_seen = now
        return info

    def presence(
        self, device_id: str, msg: Presence, now: float, fix: LastFix | None = None
    ) -> DeviceInfo:
        """Apply a presence message. ``fix`` is the device's last position when it leaves."""
        info = self.touch(device_id, now)
        if msg.device_kind is not None:
            info.kind = msg.device_kind
        if msg.unit is not None:
            info.unit = msg.unit
        if msg.paired:
            info.paired = msg.paired
        if msg.online:
            info.online = True
            info.offline_since = None
            info.last_fix = None
            self._recently_offline.pop(device_id, None)
        else:
            info.online = False
            info.offline_since = now
            if msg.reason is OfflineReason.POWER_OFF:
                info.state = DeviceState.OFF
            info.last_fix = fix
            if fix is not None:
                self._recently_offline[device_id] = info
        return info

    def recently_offline(self, since: float) -> Iterator[DeviceInfo]:
        """Devices that went offline at or after ``since`` and left a position behind.

        Older entries are pruned as a side effect, so this stays small.
        """
        stale = [k for k, v in self._recently_offline.items() if (v.offline_since or 0) < since]
        for key in stale:
            del self._recently_offline[key]
        return iter(list(self._recently_offline.values()))

    def units(self) -> dict[str, list[str]]:
        """Device ids by unit, for display."""
        out: dict[str, list[str]] = {}
        for info in self._devices.values():
            if info.unit is not None:
                out.setdefault(info.unit, []).append(info.device_id)
        return out

    def cameras_of(self, device_ids: tuple[str, ...]) -> Iterator[DeviceInfo]:
        """Known devices among ``device_ids`` (unknown ones get a bare record)."""
        for device_id in device_ids:
            yield self._devices.get(device_id) or DeviceInfo(device_id)
