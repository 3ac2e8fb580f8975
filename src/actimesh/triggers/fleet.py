"""The engine's view of the fleet: what each device is, what it is paired with, whether
it is online, and what state it last reported.

Positions live in the spatial index, not here: this module keeps only what the index
does not, so each tracked device costs one small slotted object. Devices describe
themselves in their retained presence message (kind, unit, paired devices); the broker
publishes their last will (``online: false``) when they vanish.

What a device *says* it is decides which trigger types it may raise and whether it is
commanded as a camera, so a self-description is only trusted where nothing better
exists. Given a :class:`DeviceDirectory` (the device registry), the fleet takes kind,
unit and pairing from there: a presence message that claims another kind or pairing is
ignored for those and counted, and a device the directory does not know has no kind at
all (it can neither raise triggers nor be commanded).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from actimesh.broker.messages import (
    CAMERA_KINDS,
    DeviceKind,
    DeviceState,
    OfflineReason,
    Presence,
)
from actimesh.geofence.index import GridIndex
from actimesh.geofence.policy import MotionPromise

__all__ = [
    "OFFLINE_MEMORY_S",
    "DeviceDirectory",
    "DeviceInfo",
    "DeviceRecord",
    "DirectoryEntry",
    "Fleet",
    "LastFix",
    "StaticDirectory",
]

log = logging.getLogger(__name__)

#: What a directory knows of one device: ``(kind, unit, paired device ids)``.
DirectoryEntry = tuple[DeviceKind, str | None, tuple[str, ...]]

#: How long a camera switched off is remembered where it was, so an event near it gets
#: an ``offline`` decision row: one shift. A camera switched off near an incident is
#: what an investigator asks about, however long before the event it went dark.
OFFLINE_MEMORY_S = 12 * 3600.0


class DeviceDirectory(Protocol):
    """An authoritative source of what each device is (the device registry)."""

    def get(self, device_id: str) -> DirectoryEntry | None:
        """``(kind, unit, paired)`` of a registered device; None if it is not registered."""
        ...


class StaticDirectory:
    """A :class:`DeviceDirectory` held in memory (tests, drills, fixed fleets)."""

    def __init__(self, entries: dict[str, DirectoryEntry] | None = None) -> None:
        self.entries: dict[str, DirectoryEntry] = dict(entries or {})

    def add(
        self,
        device_id: str,
        kind: DeviceKind,
        unit: str | None = None,
        paired: tuple[str, ...] = (),
    ) -> None:
        self.entries[device_id] = (kind, unit, tuple(paired))

    def remove(self, device_id: str) -> None:
        self.entries.pop(device_id, None)

    def get(self, device_id: str) -> DirectoryEntry | None:
        return self.entries.get(device_id)


@dataclass(slots=True)
class LastFix:
    """Where a device was when it went offline (for the ledger's "offline" verdicts)."""

    lat: float
    lon: float
    acc: float | None
    ts: float


@dataclass(slots=True)
class DeviceRecord:
    """What anyone watching the wire knows about one device: what it is (kind, unit,
    pairing) and its presence and state. The engine's and dispatch's views extend it."""

    device_id: str
    kind: DeviceKind | None = None
    unit: str | None = None
    paired: tuple[str, ...] = ()
    online: bool = False
    state: DeviceState | None = None
    last_seen: float = 0.0
    offline_since: float | None = None

    @property
    def is_camera(self) -> bool:
        return self.kind in CAMERA_KINDS


@dataclass(slots=True)
class DeviceInfo(DeviceRecord):
    """What the engine knows about one device: the record, and its own bookkeeping."""

    last_fix: LastFix | None = None
    #: The device's telemetry token bucket (see ``EngineSettings.telemetry_rate_per_s``):
    #: tokens left, and when they were last counted (from 0: the first fix finds it full).
    tm_tokens: float = 0.0
    tm_counted: float = 0.0
    #: The reporting mode of the indexed fix (telemetry ``hb``, ``db`` and ``spd``), read
    #: and set as :attr:`motion`. Three floats, NaN for "not reported", not a tuple: a
    #: tuple per fix is an object the collector tracks, and since each replaces the
    #: last the count that schedules collections never grows, while every device's
    #: latest tuple waits in the young generation. The next young collection, usually
    #: set off by a trigger's own allocations, then walked one per device: 39 ms at
    #: 100,000 devices (docs/PERFORMANCE.md, "The collector after the fleet arrives").
    mode_hb: float = math.nan
    mode_db: float = math.nan
    mode_spd: float = math.nan
    #: The device's recent fixes (:mod:`.track`), the time of the newest one kept, and
    #: the time of the indexed fix: a late event is judged between two of them.
    track: bytes | None = None
    track_ts: float = -math.inf
    fix_ts: float = -math.inf

    @property
    def motion(self) -> MotionPromise | None:
        """``(hb, db, spd)`` of the indexed fix; None for a device that reports about
        once a second (geofence/policy.py)."""
        if math.isnan(self.mode_hb):
            return None
        spd = self.mode_spd
        return self.mode_hb, self.mode_db, None if math.isnan(spd) else spd

    @motion.setter
    def motion(self, motion: MotionPromise | None) -> None:
        if motion is None:
            self.mode_hb = self.mode_db = self.mode_spd = math.nan
            return
        hb, db, spd = motion
        self.mode_hb, self.mode_db = hb, db
        self.mode_spd = math.nan if spd is None else spd


class Fleet:
    """Every device the engine has heard of, by id.

    With a ``directory``, kind, unit and pairing come from it, never from presence;
    ``contradictions`` counts presence claims that disagreed with it, by what they
    claimed (``kind``, ``paired``, ``unregistered``).
    """

    def __init__(
        self,
        directory: DeviceDirectory | None = None,
        *,
        offline_memory_s: float = OFFLINE_MEMORY_S,
    ) -> None:
        self.directory = directory
        self.offline_memory_s = offline_memory_s
        self.contradictions: Counter[str] = Counter()
        self._devices: dict[str, DeviceInfo] = {}
        # Where devices switched off were last, for "offline" verdicts near an event: a
        # spatial index, so a trigger looks at the few near it, never at every device
        # that went dark this shift. ``_offline_order`` holds the same ids oldest first,
        # for pruning; each device is in both at most once.
        self._offline = GridIndex()
        self._offline_order: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def __iter__(self) -> Iterator[DeviceInfo]:
        return iter(self._devices.values())

    def get(self, device_id: str) -> DeviceInfo | None:
        return self._devices.get(device_id)

    def touch(self, device_id: str, now: float) -> DeviceInfo:
        """The device's record, created on first sight (from the directory, if any)."""
        info = self._devices.get(device_id)
        if info is None:
            info = self._devices[device_id] = DeviceInfo(device_id)
            self._from_directory(info)
        info.last_seen = now
        return info

    def kind_of(self, device_id: str) -> DeviceKind | None:
        """What ``device_id`` is, asking the directory afresh when there is one: a device
        removed from the registry stops raising triggers at once, and one registered
        after it announced itself gets its kind and pairing now."""
        info = self._devices.get(device_id)
        if self.directory is None:
            return None if info is None else info.kind
        if info is not None:
            self._from_directory(info)
            return info.kind
        entry = self.directory.get(device_id)
        return None if entry is None else entry[0]

    def _from_directory(self, info: DeviceInfo) -> bool:
        """Fill in what the directory says; False when it does not know the device."""
        if self.directory is None:
            return False
        entry = self.directory.get(info.device_id)
        if entry is None:
            info.kind, info.unit, info.paired = None, None, ()
            return False
        info.kind, info.unit, info.paired = entry[0], entry[1], tuple(entry[2])
        return True

    def _claims(self, info: DeviceInfo, msg: Presence) -> None:
        """Apply what a presence message says the device is."""
        if self.directory is None:
            if msg.device_kind is not None:
                info.kind = msg.device_kind
            if msg.unit is not None:
                info.unit = msg.unit
            if msg.paired:
                info.paired = msg.paired
            return
        if not self._from_directory(info):
            if msg.device_kind is not None:
                self._contradiction(info, "unregistered", "a device the registry does not know")
            return
        if msg.device_kind is not None and msg.device_kind is not info.kind:
            kind = info.kind.value if info.kind else None
            self._contradiction(info, "kind", f"kind {msg.device_kind.value}, registered {kind}")
        if msg.paired and set(msg.paired) != set(info.paired):
            self._contradiction(
                info, "paired", f"paired {list(msg.paired)}, registered {list(info.paired)}"
            )

    def _contradiction(self, info: DeviceInfo, what: str, detail: str) -> None:
        self.contradictions[what] += 1
        log.warning("presence of %s ignored for %s: claims %s", info.device_id, what, detail)

    def presence(
        self, device_id: str, msg: Presence, now: float, fix: LastFix | None = None
    ) -> DeviceInfo:
        """Apply a presence message. ``fix`` is the device's last position when it leaves."""
        info = self.touch(device_id, now)
        self._claims(info, msg)
        self._forget_offline(device_id)
        if msg.online:
            info.online = True
            info.offline_since = None
            info.last_fix = None
        else:
            info.online = False
            info.offline_since = now
            if msg.reason is OfflineReason.POWER_OFF:
                info.state = DeviceState.OFF
                # Switched off, it recorded nothing since: no bracket may span the time.
                info.track, info.track_ts, info.fix_ts = None, -math.inf, -math.inf
            info.last_fix = fix
            if fix is not None:
                self._offline.upsert(device_id, fix.lat, fix.lon, fix.acc, fix.ts)
                self._offline_order[device_id] = now
        self._prune_offline(now - self.offline_memory_s)
        return info

    def _forget_offline(self, device_id: str) -> None:
        if self._offline_order.pop(device_id, None) is not None:
            self._offline.remove(device_id)

    def _prune_offline(self, before: float) -> None:
        while self._offline_order:
            device_id, since = next(iter(self._offline_order.items()))
            if since >= before:
                return
            self._forget_offline(device_id)

    def offline_near(
        self, lat: float, lon: float, radius_m: float, since: float
    ) -> list[tuple[DeviceInfo, float]]:
        """Devices switched off within ``radius_m`` of a point, at their last position,
        with the distance to it, that went offline at or after ``since``."""
        out = []
        for fix, dist in self._offline.within(lat, lon, radius_m):
            info = self._devices.get(fix.device_id)
            if info is not None and (info.offline_since or 0.0) >= since:
                out.append((info, dist))
        return out

    def units(self) -> dict[str, list[str]]:
        """Device ids by unit, for display."""
        out: dict[str, list[str]] = {}
        for info in self._devices.values():
            if info.unit is not None:
                out.setdefault(info.unit, []).append(info.device_id)
        return out

    def cameras_of(self, device_ids: tuple[str, ...]) -> Iterator[DeviceInfo]:
        """Known devices among ``device_ids`` (unknown ones get a record made from the
        directory, or a bare one)."""
        for device_id in device_ids:
            info = self._devices.get(device_id)
            if info is None:
                info = DeviceInfo(device_id)
                self._from_directory(info)
            yield info
