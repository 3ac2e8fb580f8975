"""The live picture a dispatcher sees, built from what crosses the broker.

:class:`LiveState` is pure: messages and the time go in, JSON-ready dicts come out; it
does no I/O, so every rule below is unit-tested without a broker.

* **Devices** come from retained presence (kind, unit, pairing) and telemetry (position,
  recording state). The map colour follows Axon Respond: recording red, buffering green,
  offline grey. A position older than the engine's freshness limit
  (``InclusionPolicy.max_fix_age_s``) is marked stale: the engine would not count on it
  either.
* **Activations** come from the engine's activation records. Each commanded camera is
  ``commanded`` until it acknowledges: ``acknowledged`` (it got the command), then
  ``recording`` (with the pre-roll seconds it kept) or ``refused``; a camera still
  silent ``ack_timeout_s`` after the command is ``no_ack`` and raises an alert. A
  camera whose officer cancelled the activation on it within the cancel window is
  ``cancelled``: a false activation (who cancelled it is shown), final, and not an alert
  (the recording is kept on the camera, marked). The
  engine's own alerts (``am/v1/<agency>/alerts/#``) are merged in, one per camera and
  kind, so the map still raises them if the dispatch's clock and the engine's disagree.
  A late acknowledgement still updates the camera (and
  marks it late). Acknowledgements may overtake their activation record (commands go
  out before the ledger write that precedes the record), so they wait, bounded, for it.
* **Changes** are collected and taken as one delta per frame; **events** (a new
  activation, a camera outcome) are collected for the integrator stream.

Everything is bounded: devices, activations (count and age), early acknowledgements,
alerts. What is refused for lack of room is counted.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from actimesh.broker.messages import (
    Ack,
    Activation,
    DeviceKind,
    DeviceState,
    EngineStatus,
    Presence,
    Telemetry,
)
from actimesh.broker.messages import Alert as AlertMessage
from actimesh.dispatch.tracks import Fix, Tracks
from actimesh.geofence import InclusionPolicy
from actimesh.triggers.fleet import DeviceRecord

__all__ = [
    "ActivationView",
    "Alert",
    "CameraStatus",
    "CameraView",
    "DeviceStatus",
    "DeviceView",
    "LiveState",
    "StateStats",
]

_MAX_EARLY_ACKS = 10_000
_EARLY_ACK_TTL_S = 60.0
_MAX_ALERTS = 200


class DeviceStatus(StrEnum):
    """The map colour of a device."""

    RECORDING = "recording"
    BUFFERING = "buffering"
    OFFLINE = "offline"


class CameraStatus(StrEnum):
    """Where one commanded camera is with one activation."""

    COMMANDED = "commanded"
    #: The camera said it got the command (``received``) and is committing its buffer.
    ACKNOWLEDGED = "acknowledged"
    RECORDING = "recording"
    REFUSED = "refused"
    NO_ACK = "no_ack"
    #: The officer cancelled it on the camera as a false activation (final).
    CANCELLED = "cancelled"


_ACK_STATUS = {
    "recording": CameraStatus.RECORDING,
    "refused": CameraStatus.REFUSED,
    "cancelled": CameraStatus.CANCELLED,
}
_FINAL = frozenset({CameraStatus.RECORDING, CameraStatus.REFUSED, CameraStatus.CANCELLED})


@dataclass(slots=True)
class DeviceView(DeviceRecord):
    """What the dispatch knows about one device: the record the engine keeps too (kind,
    unit, pairing, presence and state, from the same retained messages), and what the
    map adds: its position, battery and pre-event buffer."""

    lat: float | None = None
    lon: float | None = None
    acc: float | None = None
    fix_ts: float | None = None
    batt: float | None = None
    pre_roll: float | None = None
    #: From the device registry: the radio call sign and who carries or drives it.
    call_sign: str | None = None
    officer: str | None = None
    #: The unit's dispatch status as its gateway reports it (telemetry ``duty``).
    duty: str | None = None
    #: How long its last fix stays fresh: ``max_fix_age_s`` for a 1 Hz device, longer
    #: for one that reports on motion with a heartbeat (``InclusionPolicy.max_age_s``).
    fresh_s: float | None = None

    @property
    def status(self) -> DeviceStatus:
        if not self.online or self.state in (None, DeviceState.OFF):
            return DeviceStatus.OFFLINE
        if self.state is DeviceState.RECORDING:
            return DeviceStatus.RECORDING
        return DeviceStatus.BUFFERING

    def is_stale(self, now: float, max_fix_age_s: float) -> bool:
        limit = self.fresh_s if self.fresh_s is not None else max_fix_age_s
        return self.fix_ts is not None and now - self.fix_ts > limit

    def to_json(self, now: float, max_fix_age_s: float) -> dict[str, Any]:
        return {
            "id": self.device_id,
            "kind": self.kind.value if self.kind is not None else None,
            "unit": self.unit,
            "call_sign": self.call_sign,
            "officer": self.officer,
            "duty": self.duty,
            "paired": list(self.paired),
            "online": self.online,
            "state": self.state.value if self.state is not None else None,
            "status": self.status.value,
            "lat": self.lat,
            "lon": self.lon,
            "acc": self.acc,
            "fix_ts": self.fix_ts,
            "stale": self.is_stale(now, max_fix_age_s),
            "fresh_s": self.fresh_s if self.fresh_s is not None else max_fix_age_s,
            "batt": self.batt,
            "pre_roll": self.pre_roll,
            "last_seen": self.last_seen,
        }


@dataclass(slots=True)
class CameraView:
    """One camera of one activation."""

    device_id: str
    kind: DeviceKind | None
    reason: str
    dist: float | None = None
    status: CameraStatus = CameraStatus.COMMANDED
    pre_cov: float | None = None
    recording: str | None = None
    ack_ts: float | None = None
    ack_latency_s: float | None = None
    late: bool = False
    detail: str | None = None
    #: Who cancelled it as a false activation, and when (camera clock).
    cancelled_by: str | None = None
    cancelled_ts: float | None = None
    #: Where the camera was at the event: the fix the engine judged (the record carries
    #: the ledger's position), or for a record without one the dispatch's track then.
    at: Fix | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.device_id,
            "kind": self.kind.value if self.kind is not None else None,
            "reason": self.reason,
            "dist": self.dist,
            "status": self.status.value,
            "pre_cov": self.pre_cov,
            "recording": self.recording,
            "ack_ts": self.ack_ts,
            "ack_latency_s": self.ack_latency_s,
            "late": self.late,
            "detail": self.detail,
            "cancelled_by": self.cancelled_by,
            "cancelled_ts": self.cancelled_ts,
            "at": None if self.at is None else [self.at.lat, self.at.lon],
        }


@dataclass(slots=True)
class ActivationView:
    """One activation on the live map."""

    record: Activation
    received: float
    #: When a silent camera turns into ``no_ack``.
    deadline: float
    cameras: dict[str, CameraView]
    unit: str | None
    units: tuple[str, ...]
    #: The dispatcher who acknowledged the incident, and when.
    acked_by: str | None = None
    acked_ts: float | None = None

    def summary(self) -> dict[str, int]:
        counts = {s.value: 0 for s in CameraStatus}
        for cam in self.cameras.values():
            counts[cam.status.value] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        r = self.record
        summary = self.summary()
        return {
            "aid": r.aid,
            "eid": r.eid,
            "src": r.src,
            "type": r.type,
            "ets": r.ets,
            "ts": r.ts,
            "lat": r.lat,
            "lon": r.lon,
            "radius": r.radius,
            "pre": r.pre,
            "by": r.by,
            "excluded": r.excluded,
            # A follow-up (cameras whose fix came after the trigger was judged) shows as
            # its own activation, linked to the one it follows.
            "follows": r.follows,
            "received": self.received,
            "deadline": self.deadline,
            "unit": self.unit,
            "units": list(self.units),
            "cameras": [c.to_json() for c in self.cameras.values()],
            "summary": summary,
            "alert": summary[CameraStatus.NO_ACK] + summary[CameraStatus.REFUSED] > 0,
            "acked_by": self.acked_by,
            "acked_ts": self.acked_ts,
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """Something a dispatcher must look at: a camera that did not start recording."""

    id: str
    kind: str  # no_ack, refused (dispatch or engine), expired, ledger (engine)
    aid: str | None
    device_id: str | None
    event_type: str | None
    unit: str | None
    ts: float
    message: str
    acked_by: str | None = None
    acked_ts: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "aid": self.aid,
            "device": self.device_id,
            "type": self.event_type,
            "unit": self.unit,
            "ts": self.ts,
            "message": self.message,
            "acked_by": self.acked_by,
            "acked_ts": self.acked_ts,
        }


@dataclass(slots=True)
class StateStats:
    """Counters for /metrics."""

    presence: int = 0
    telemetry: int = 0
    telemetry_out_of_order: int = 0
    #: Positions from a tracker app (OwnTracks) rather than the device's telemetry.
    tracker_fixes: int = 0
    #: ... skipped because the device is not in the registry (another agency's phone).
    tracker_unregistered: int = 0
    activations: int = 0
    duplicate_activations: int = 0
    #: Activations the bus never brought, read from the ledger instead (the service's
    #: catch-up), and catch-ups that failed because the ledger could not be read.
    activations_caught_up: int = 0
    catch_up_errors: int = 0
    acks: int = 0
    early_acks: int = 0
    early_acks_dropped: int = 0
    devices_refused: int = 0
    activations_pruned: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in CameraStatus})
    late_acks: int = 0
    #: Engines whose online status was not renewed within its ttl (killed, cut off).
    engines_stale: int = 0


class LiveState:
    """Devices, activations and alerts, with change tracking for frames and events."""

    def __init__(
        self,
        *,
        max_fix_age_s: float,
        ack_timeout_s: float = 5.0,
        max_devices: int = 50_000,
        max_activations: int = 1000,
        activation_retention_s: float = 4 * 3600.0,
        offline_retention_s: float = 12 * 3600.0,
        on_decision: Callable[[float], None] | None = None,
        on_ack_latency: Callable[[float], None] | None = None,
    ) -> None:
        """``on_decision`` and ``on_ack_latency`` observe latencies (metrics): event time
        to the engine's decision, and decision to each camera's acknowledgement."""
        self.max_fix_age_s = max_fix_age_s
        # The engine's freshness rule (its heartbeat limits are the policy's defaults).
        self.freshness = InclusionPolicy(max_fix_age_s=max_fix_age_s)
        self.ack_timeout_s = ack_timeout_s
        self.max_devices = max_devices
        self.max_activations = max_activations
        self.activation_retention_s = activation_retention_s
        self.offline_retention_s = offline_retention_s
        self.on_decision = on_decision
        self.on_ack_latency = on_ack_latency
        self.stats = StateStats()
        self.devices: dict[str, DeviceView] = {}
        self.activations: OrderedDict[str, ActivationView] = OrderedDict()
        self.engines: dict[str, dict[str, Any]] = {}
        self.alerts: OrderedDict[str, Alert] = OrderedDict()
        self.tracks = Tracks()
        #: Call sign and officer per device, from the registry (see :meth:`set_roster`).
        self.roster: dict[str, tuple[str | None, str | None]] = {}
        #: The registry's device ids (None: no registry here): whose tracker fixes count.
        self.registered: frozenset[str] | None = None
        self._deadlines: list[tuple[float, str]] = []
        self._early_acks: OrderedDict[str, list[tuple[str, Ack, float]]] = OrderedDict()
        self._early_count = 0
        self._dirty_devices: set[str] = set()
        self._removed_devices: set[str] = set()
        self._dirty_activations: set[str] = set()
        self._removed_activations: set[str] = set()
        self._new_alerts: list[Alert] = []
        self._engines_dirty = False
        self._events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ devices
    def _device(self, device_id: str, now: float) -> DeviceView | None:
        view = self.devices.get(device_id)
        if view is None:
            if len(self.devices) >= self.max_devices:
                self.stats.devices_refused += 1
                return None
            view = self.devices[device_id] = DeviceView(device_id)
            view.call_sign, view.officer = self.roster.get(device_id, (None, None))
            self._removed_devices.discard(device_id)
        view.last_seen = now
        self._dirty_devices.add(device_id)
        return view

    def presence(self, device_id: str, msg: Presence | None, now: float) -> None:
        """Apply a retained presence message; None (an empty payload) removes the device."""
        self.stats.presence += 1
        if msg is None:
            self.tracks.forget(device_id)
            if self.devices.pop(device_id, None) is not None:
                self._dirty_devices.discard(device_id)
                self._removed_devices.add(device_id)
            return
        view = self._device(device_id, now)
        if view is None:
            return
        if msg.device_kind is not None:
            view.kind = msg.device_kind
        if msg.unit is not None:
            view.unit = msg.unit
        if msg.paired:
            view.paired = msg.paired
        if msg.pre_roll is not None:
            view.pre_roll = msg.pre_roll
        view.online = msg.online
        if msg.online:
            view.offline_since = None
            if view.state is DeviceState.OFF:
                view.state = None
        else:
            view.offline_since = now
            view.state = DeviceState.OFF

    def telemetry(self, device_id: str, msg: Telemetry, now: float) -> None:
        """Apply a position and state report."""
        self.stats.telemetry += 1
        view = self._device(device_id, now)
        if view is None:
            return
        # Telemetry proves the device is on even if its retained birth was missed.
        view.online = True
        view.offline_since = None
        view.state = msg.state
        if msg.batt is not None:
            view.batt = msg.batt
        if msg.duty is not None:
            view.duty = msg.duty.value
        # A device reporting on motion promises a report within its heartbeat: its last
        # fix is as fresh as the engine takes it to be, not stale between heartbeats.
        view.fresh_s = self.freshness.max_age_s(msg.hb)
        if msg.lat is not None and msg.lon is not None:
            self._place(view, msg.ts, msg.lat, msg.lon, msg.acc)

    def tracker_fix(
        self,
        device_id: str,
        fix: tuple[float, float, float, float | None, float | None],
        now: float,
    ) -> None:
        """Apply a tracker's position (``ts, lat, lon, acc, batt``: the OwnTracks app's).
        A tracker says nothing of recording: a device's known state is kept, and one
        heard of only this way is shown ``buffering`` (as the engine takes it). A device
        not in :attr:`registered` (when known) is skipped and counted."""
        if self.registered is not None and device_id not in self.registered:
            self.stats.tracker_unregistered += 1
            return
        self.stats.tracker_fixes += 1
        view = self._device(device_id, now)
        if view is None:
            return
        view.online = True
        view.offline_since = None
        if view.state is None:
            view.state = DeviceState.BUFFERING
        ts, lat, lon, acc, batt = fix
        if batt is not None:
            view.batt = batt
        self._place(view, ts, lat, lon, acc)

    def _place(
        self, view: DeviceView, ts: float, lat: float, lon: float, acc: float | None
    ) -> None:
        """Move ``view`` to a fix, unless it is older than the one shown (counted)."""
        if view.fix_ts is not None and ts < view.fix_ts:
            self.stats.telemetry_out_of_order += 1
            return
        view.lat, view.lon, view.acc, view.fix_ts = lat, lon, acc, ts
        state = view.state.value if view.state is not None else DeviceState.BUFFERING.value
        self.tracks.add(view.device_id, Fix(ts, lat, lon, acc, state))

    def set_roster(self, roster: Mapping[str, tuple[str | None, str | None]]) -> None:
        """Call sign and officer per device id (the registry's); changed devices are sent."""
        self.roster = dict(roster)
        for device_id, view in self.devices.items():
            names = self.roster.get(device_id, (None, None))
            if (view.call_sign, view.officer) != names:
                view.call_sign, view.officer = names
                self._dirty_devices.add(device_id)

    # ------------------------------------------------------------------ dispatcher acks
    def acknowledge(self, aid: str, alert_id: str | None, by: str, ts: float) -> bool:
        """Show an incident (or one of its alerts) as acknowledged by ``by`` at ``ts``.
        False when the live map does not hold it (the ledger record is what counts)."""
        if alert_id is not None:
            alert = self.alerts.get(alert_id)
            if alert is None or alert.aid != aid:
                return False
            acked = dataclasses.replace(alert, acked_by=by, acked_ts=ts)
            self.alerts[alert_id] = acked
            self._new_alerts.append(acked)
            return True
        view = self.activations.get(aid)
        if view is None:
            return False
        view.acked_by, view.acked_ts = by, ts
        self._dirty_activations.add(aid)
        return True

    def engine_status(self, engine_id: str, msg: EngineStatus | None, now: float) -> None:
        """An engine's status as published. An ``online`` one with a ``ttl`` goes stale
        (offline, ``stale: true``) if not renewed within it: :meth:`expire`."""
        if msg is None:
            self.engines.pop(engine_id, None)
        else:
            self.engines[engine_id] = {
                "id": engine_id,
                "online": msg.online,
                "version": msg.version,
                "since": msg.ts,
                "seen": now,
                "ttl": msg.ttl,
                "stale": False,
            }
        self._engines_dirty = True

    def _expire_engines(self, now: float) -> None:
        for engine in self.engines.values():
            ttl = engine["ttl"]
            if engine["online"] and ttl is not None and now - engine["seen"] > ttl:
                # Killed outright (no will on this bus) or cut off: no longer vouched for.
                engine["online"] = False
                engine["stale"] = True
                self.stats.engines_stale += 1
                self._engines_dirty = True

    # ------------------------------------------------------------------ activations
    def activation(self, record: Activation, now: float, *, replay: bool = False) -> bool:
        """Add an activation record. False if it was already known (redelivery).

        ``replay``: an old record read back from the ledger at start-up, which counts
        from its own decision time rather than from now.
        """
        if record.aid in self.activations:
            self.stats.duplicate_activations += 1
            return False
        self.stats.activations += 1
        cameras: dict[str, CameraView] = {}
        for cam in record.cameras:
            judged = (
                None
                if cam.lat is None or cam.lon is None
                else Fix(record.ets, cam.lat, cam.lon, None, None)
            )
            cameras[cam.id] = CameraView(
                cam.id,
                cam.device_kind,
                cam.reason.value,
                cam.dist,
                at=judged or self.tracks.at(cam.id, record.ets, self.max_fix_age_s),
            )
        src = self.devices.get(record.src)
        unit = src.unit if src is not None else None
        units = {unit} if unit is not None else set()
        for cam_id in cameras:
            dev = self.devices.get(cam_id)
            if dev is not None and dev.unit is not None:
                units.add(dev.unit)
        # The timeout runs from the command (the record's decision time) when that time is
        # plausible; a record that arrives with an implausible clock runs from receipt.
        plausible = 0.0 <= now - record.ts <= self.ack_timeout_s
        start = record.ts if plausible or replay else now
        view = ActivationView(
            record=record,
            received=record.ts if replay else now,
            deadline=start + self.ack_timeout_s,
            cameras=cameras,
            unit=unit,
            units=tuple(sorted(units)),
        )
        self.activations[record.aid] = view
        self._dirty_activations.add(record.aid)
        self._removed_activations.discard(record.aid)
        if cameras:
            heapq.heappush(self._deadlines, (view.deadline, record.aid))
        self._events.append({"event": "activation", "data": view.to_json()})
        if self.on_decision is not None and not replay:
            self.on_decision(max(0.0, record.ts - record.ets))
        for device_id, ack, ack_now in self._early_acks.pop(record.aid, ()):
            self._early_count -= 1
            self._apply_ack(view, device_id, ack, ack_now)
        self._prune(now)
        return True

    def ack(self, device_id: str, ack: Ack, now: float) -> None:
        """Apply a camera's acknowledgement (it may come before its activation record)."""
        self.stats.acks += 1
        view = self.activations.get(ack.aid)
        if view is not None:
            self._apply_ack(view, device_id, ack, now)
            return
        if ack.aid.startswith("local-"):  # pragma: no cover - cameras ack engine commands only
            return
        self.stats.early_acks += 1
        if self._early_count >= _MAX_EARLY_ACKS:
            _, dropped = self._early_acks.popitem(last=False)
            self._early_count -= len(dropped)
            self.stats.early_acks_dropped += len(dropped)
        self._early_acks.setdefault(ack.aid, []).append((device_id, ack, now))
        self._early_count += 1

    def _apply_ack(self, view: ActivationView, device_id: str, ack: Ack, now: float) -> None:
        cam = view.cameras.get(device_id)
        if cam is None:
            dev = self.devices.get(device_id)
            cam = CameraView(device_id, dev.kind if dev is not None else None, "unlisted")
            view.cameras[device_id] = cam
        status = _ACK_STATUS.get(ack.status.value, CameraStatus.ACKNOWLEDGED)
        # A cancel follows the camera's final answer (it cancels a recording), so it is
        # the one final answer that may replace another; nothing replaces it.
        replaces = status is CameraStatus.CANCELLED and cam.status is not status
        if (cam.status in _FINAL and not replaces) or status is cam.status:
            return  # a repeated (or overtaken) acknowledgement changes nothing
        if cam.ack_ts is None:
            # The first answer of any kind is the acknowledgement latency.
            cam.ack_ts = ack.ts
            cam.ack_latency_s = max(0.0, ack.ts - view.record.ts)
            if self.on_ack_latency is not None:
                self.on_ack_latency(cam.ack_latency_s)
        if cam.status is CameraStatus.NO_ACK:
            cam.late = True
            self.stats.late_acks += 1
        cam.status = status
        self.stats.outcomes[status.value] += 1
        if status in _FINAL:
            cam.pre_cov = ack.pre_cov
            cam.recording = ack.rec
            cam.detail = ack.detail
        if status is CameraStatus.CANCELLED:
            cam.cancelled_by, cam.cancelled_ts = ack.by, ack.ts
        if cam.status is CameraStatus.REFUSED:
            reason = ack.detail or "could not record"
            self._alert(view, cam, "refused", now, f"{device_id} refused: {reason}")
        self._camera_changed(view, cam)

    def _camera_changed(self, view: ActivationView, cam: CameraView) -> None:
        self._dirty_activations.add(view.record.aid)
        self._events.append(
            {
                "event": "camera",
                "data": {"aid": view.record.aid, "type": view.record.type, **cam.to_json()},
            }
        )

    def _alert(
        self, view: ActivationView, cam: CameraView, kind: str, now: float, message: str
    ) -> None:
        self._raise(
            kind,
            aid=view.record.aid,
            device_id=cam.device_id,
            event_type=view.record.type,
            ts=now,
            message=message,
        )

    def _raise(
        self,
        kind: str,
        *,
        aid: str | None,
        device_id: str | None,
        event_type: str | None,
        ts: float,
        message: str,
    ) -> None:
        alert_id = f"{aid or '-'}:{device_id or '-'}:{kind}"
        if alert_id in self.alerts:
            return  # the engine and the dispatch may both notice the same silence
        dev = self.devices.get(device_id) if device_id is not None else None
        alert = Alert(
            id=alert_id,
            kind=kind,
            aid=aid,
            device_id=device_id,
            event_type=event_type,
            unit=dev.unit if dev is not None else None,
            ts=ts,
            message=message,
        )
        self.alerts[alert_id] = alert
        if len(self.alerts) > _MAX_ALERTS:
            self.alerts.popitem(last=False)
        self._new_alerts.append(alert)

    def engine_alert(self, msg: AlertMessage) -> None:
        """An alert the engine raised: shown as is, and applied to the camera it names."""
        kind = msg.alert.value
        view = self.activations.get(msg.aid) if msg.aid is not None else None
        cam = view.cameras.get(msg.device) if view is not None and msg.device else None
        if (
            view is not None
            and cam is not None
            and kind in ("no_ack", "expired")
            and cam.status is CameraStatus.COMMANDED
        ):
            cam.status = CameraStatus.NO_ACK
            cam.detail = msg.detail
            self.stats.outcomes[CameraStatus.NO_ACK.value] += 1
            self._camera_changed(view, cam)
        detail = msg.detail or kind.replace("_", " ")
        device = msg.device or "a camera"
        message = {
            "no_ack": f"no acknowledgement from {device} (engine: {detail})",
            "refused": f"{device} refused (engine: {detail})",
            "expired": f"command to {device} expired (engine: {detail})",
            "ledger": f"activation not written to the ledger (engine: {detail})",
        }.get(kind, f"engine: {kind}: {detail}")
        self._raise(
            kind,
            aid=msg.aid,
            device_id=msg.device,
            event_type=view.record.type if view is not None else None,
            ts=msg.ts,
            message=message,
        )

    # ------------------------------------------------------------------ time
    def expire(self, now: float) -> None:
        """Turn silent cameras past their deadline into ``no_ack``; prune old things."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, aid = heapq.heappop(self._deadlines)
            view = self.activations.get(aid)
            if view is None:
                continue
            for cam in view.cameras.values():
                if cam.status is CameraStatus.COMMANDED:
                    cam.status = CameraStatus.NO_ACK
                    self.stats.outcomes[CameraStatus.NO_ACK.value] += 1
                    self._alert(
                        view,
                        cam,
                        "no_ack",
                        view.deadline,
                        f"no acknowledgement from {cam.device_id} within {self.ack_timeout_s:g} s",
                    )
                    self._camera_changed(view, cam)
        self._expire_engines(now)
        self._prune(now)

    def _prune(self, now: float) -> None:
        horizon = now - self.activation_retention_s
        while self.activations:
            aid, view = next(iter(self.activations.items()))
            if len(self.activations) <= self.max_activations and view.received >= horizon:
                break
            del self.activations[aid]
            self._dirty_activations.discard(aid)
            self._removed_activations.add(aid)
            self.stats.activations_pruned += 1
        while self._early_acks:
            aid, acks = next(iter(self._early_acks.items()))
            if acks[0][2] >= now - _EARLY_ACK_TTL_S:
                break
            del self._early_acks[aid]
            self._early_count -= len(acks)
            self.stats.early_acks_dropped += len(acks)
        gone = [
            d.device_id
            for d in self.devices.values()
            if d.offline_since is not None and d.offline_since < now - self.offline_retention_s
        ]
        for device_id in gone:
            del self.devices[device_id]
            self.tracks.forget(device_id)
            self._dirty_devices.discard(device_id)
            self._removed_devices.add(device_id)

    def next_deadline(self) -> float | None:
        """When the earliest silent camera times out, if any is waiting."""
        return self._deadlines[0][0] if self._deadlines else None

    # ------------------------------------------------------------------ output
    def activations_newest_first(self) -> Iterator[ActivationView]:
        return reversed(self.activations.values())

    def counts(self) -> dict[str, int]:
        """Devices by map status."""
        out = {s.value: 0 for s in DeviceStatus}
        for d in self.devices.values():
            out[d.status.value] += 1
        return out

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything, for a page or client that has just connected."""
        return {
            "type": "snapshot",
            "now": now,
            "devices": [d.to_json(now, self.max_fix_age_s) for d in self.devices.values()],
            "activations": [a.to_json() for a in self.activations_newest_first()],
            "alerts": [a.to_json() for a in self.alerts.values()],
            "engines": list(self.engines.values()),
        }

    def take_delta(self, now: float) -> dict[str, Any] | None:
        """What changed since the last call, or None if nothing did."""
        if not (
            self._dirty_devices
            or self._removed_devices
            or self._dirty_activations
            or self._removed_activations
            or self._new_alerts
            or self._engines_dirty
        ):
            return None
        delta: dict[str, Any] = {
            "type": "delta",
            "now": now,
            "devices": [
                self.devices[d].to_json(now, self.max_fix_age_s)
                for d in self._dirty_devices
                if d in self.devices
            ],
            "removed_devices": sorted(self._removed_devices),
            "activations": [
                self.activations[a].to_json()
                for a in self._dirty_activations
                if a in self.activations
            ],
            "removed_activations": sorted(self._removed_activations),
            "alerts": [a.to_json() for a in self._new_alerts],
        }
        if self._engines_dirty:
            delta["engines"] = list(self.engines.values())
        self.clear_changes()
        return delta

    def clear_changes(self) -> None:
        """Forget what changed (no client to tell); a new client starts from a snapshot."""
        self._dirty_devices.clear()
        self._removed_devices.clear()
        self._dirty_activations.clear()
        self._removed_activations.clear()
        self._new_alerts.clear()
        self._engines_dirty = False

    def take_events(self) -> list[dict[str, Any]]:
        """Activation and camera-outcome events since the last call, oldest first."""
        events, self._events = self._events, []
        return events
