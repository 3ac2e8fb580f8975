"""Fan-out planning: which cameras one trigger event activates, and why.

This is the pure heart of the engine (no I/O, time passed in), so every rule of "who
records" is unit-tested without a broker:

1. The event's position is its own fix when it has one; otherwise the trigger device's
   last fresh fix; otherwise the freshest fix among its paired devices (a CEW has no GPS
   and borrows its officer's body camera's). With none, only paired cameras activate and
   the ledger says so.
2. Paired cameras (the rule permitting) are commanded whatever GPS says.
3. Every camera of a kind the rule names whose fix the inclusion policy judges within the
   radius is commanded; the others found near the event are recorded with the reason they
   were left out (too far, stale fix, offline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from actimesh.broker.messages import (
    CAMERA_KINDS,
    ActivationReason,
    DeviceKind,
    Event,
    activation_id,
)
from actimesh.geofence import Fix, InclusionPolicy, SpatialIndex, Verdict, distance_m
from actimesh.ledger import DecisionRow
from actimesh.triggers.fleet import DeviceInfo, Fleet
from actimesh.triggers.rules import Rule
from actimesh.triggers.track import PastFix, around

__all__ = ["Exclusion", "Plan", "PositionSource", "Target", "judged_between", "plan_activation"]


class PositionSource(StrEnum):
    """Where the event's position came from."""

    EVENT = "event"
    SOURCE_DEVICE = "source_device"
    PAIRED_DEVICE = "paired_device"
    NONE = "none"


class Exclusion(StrEnum):
    """Why a camera near the event was not commanded."""

    TOO_FAR = "too_far"
    STALE = "stale"
    OFFLINE = "offline"
    KIND_NOT_IN_RULE = "kind_not_in_rule"


@dataclass(frozen=True, slots=True)
class Target:
    """A camera to command."""

    device_id: str
    kind: DeviceKind | None
    reason: ActivationReason
    distance_m: float | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the engine will do about one event."""

    aid: str
    lat: float | None
    lon: float | None
    acc: float | None
    position_source: PositionSource
    radius_m: float
    pre_roll_s: float
    targets: tuple[Target, ...]
    decisions: tuple[DecisionRow, ...] = field(default=())

    @property
    def excluded(self) -> int:
        return sum(1 for d in self.decisions if not d.commanded)


def _event_position(
    event: Event, source: str, fleet: Fleet, index: SpatialIndex, policy: InclusionPolicy
) -> tuple[float | None, float | None, float | None, PositionSource]:
    if event.lat is not None and event.lon is not None:
        return event.lat, event.lon, event.acc, PositionSource.EVENT
    own = index.get(source)
    info = fleet.get(source)
    own_hb = info.motion[0] if info is not None and info.motion is not None else None
    if own is not None and abs(own.ts - event.ts) <= policy.max_age_s(own_hb):
        return own.lat, own.lon, own.acc, PositionSource.SOURCE_DEVICE
    best = None
    for peer in info.paired if info is not None else ():
        fix = index.get(peer)
        peer_info = fleet.get(peer)
        peer_hb = (
            peer_info.motion[0] if peer_info is not None and peer_info.motion is not None else None
        )
        if fix is None or abs(fix.ts - event.ts) > policy.max_age_s(peer_hb):
            continue
        if best is None or fix.ts > best.ts:
            best = fix
    if best is not None:
        return best.lat, best.lon, best.acc, PositionSource.PAIRED_DEVICE
    # A late event: no fix is fresh any more, but the device's (or its partner's)
    # fixes on either side of the event's time still say where it happened.
    candidates = [(source, PositionSource.SOURCE_DEVICE)]
    paired = info.paired if info is not None else ()
    candidates += [(peer, PositionSource.PAIRED_DEVICE) for peer in paired]
    for device_id, how in candidates:
        device = fleet.get(device_id)
        fix = index.get(device_id)
        if device is None or fix is None:
            continue
        found = _between(device, fix, event.ts, policy)
        if found is not None:
            before, after = found
            lat, lon = _interpolate(before, after, event.ts)
            speed = _speed(before, after)
            nearest = min(event.ts - before.ts, after.ts - event.ts)
            # How far it can have left the line between them, as an accuracy.
            spread = policy.max_margin_m if speed is None else speed * nearest
            return lat, lon, _worse(before.acc, after.acc) + spread, how
    return None, None, None, PositionSource.NONE


def _between(
    info: DeviceInfo, fix: Fix, ts: float, policy: InclusionPolicy
) -> tuple[PastFix, PastFix] | None:
    """The device's fixes on either side of ``ts`` (:mod:`.track`), if they are close
    enough in time to bridge (``max_bracket_s``, or ``max_still_bracket_s`` for a
    device that did not move between them: :meth:`InclusionPolicy.bridges`)."""
    spd = None if info.motion is None else info.motion[2]
    before, after = around(info.track, PastFix(fix.ts, fix.lat, fix.lon, fix.acc, spd), ts)
    if before is None or after is None:
        return None
    if not policy.bridges(
        before_ts=before.ts,
        after_ts=after.ts,
        moved_m=_moved(before, after),
        acc_m=_worse(before.acc, after.acc),
    ):
        return None
    return before, after


def _moved(before: PastFix, after: PastFix) -> float:
    """How far apart two fixes of a device are (whether it moved across a gap): asked
    on the trigger path for a camera already ``stale``, never on the telemetry path."""
    return distance_m(before.lat, before.lon, after.lat, after.lon)


def _interpolate(before: PastFix, after: PastFix, ts: float) -> tuple[float, float]:
    """Where the device was at ``ts`` on the straight line between two fixes."""
    span = after.ts - before.ts
    f = 0.0 if span <= 0.0 else (ts - before.ts) / span
    # The shorter way round, across the antimeridian if need be.
    dlon = (after.lon - before.lon + 540.0) % 360.0 - 180.0
    lon = (before.lon + f * dlon + 540.0) % 360.0 - 180.0
    return before.lat + f * (after.lat - before.lat), lon


def _speed(before: PastFix, after: PastFix) -> float | None:
    if before.spd is None or after.spd is None:
        return None
    return max(before.spd, after.spd)


def _worse(a: float | None, b: float | None) -> float:
    return max(a if a is not None and a >= 0.0 else 0.0, b if b is not None and b >= 0.0 else 0.0)


def _paired(
    source: str, fleet: Fleet, targets: dict[str, Target], decisions: dict[str, DecisionRow]
) -> None:
    src_info = fleet.get(source)
    paired = src_info.paired if src_info is not None else ()
    if src_info is not None and src_info.is_camera:
        paired = (source, *paired)
    for info in fleet.cameras_of(paired):
        # A pairing names cameras; a device of a known non-camera kind cannot record.
        if info.kind is not None and info.kind not in CAMERA_KINDS:
            continue
        targets[info.device_id] = Target(info.device_id, info.kind, ActivationReason.PAIRED)
        kind = info.kind.value if info.kind else None
        reason = "paired" if info.online else "paired_offline_queued"
        decisions[info.device_id] = DecisionRow(info.device_id, kind, True, reason)


def _nearby(
    *,
    event: Event,
    at: tuple[float, float, float | None],
    radius: float,
    rule: Rule,
    fleet: Fleet,
    index: SpatialIndex,
    policy: InclusionPolicy,
    targets: dict[str, Target],
    decisions: dict[str, DecisionRow],
) -> None:
    lat, lon, acc = at
    search = policy.search_radius_m(radius)
    for fix, dist in index.within(lat, lon, search):
        info = fleet.get(fix.device_id)
        if info is None or info.kind is None or not info.is_camera:
            continue
        device_id, kind = fix.device_id, info.kind.value
        age = event.ts - fix.ts
        # Each row is built once, whole: this loop runs for every camera in the band,
        # on the trigger path, before any command leaves.
        if device_id in targets:
            # Paired and also near: keep "paired" as the reason, note the distance.
            decisions[device_id] = DecisionRow(
                device_id, kind, True, "paired", dist, None, age, fix.acc, fix.lat, fix.lon
            )
            continue
        if info.kind not in rule.camera_kinds:
            decisions[device_id] = DecisionRow(
                device_id,
                kind,
                False,
                Exclusion.KIND_NOT_IN_RULE,
                dist,
                None,
                age,
                fix.acc,
                fix.lat,
                fix.lon,
            )
            continue
        verdict, margin = policy.judge(
            distance_m=dist,
            radius_m=radius,
            fix_ts=fix.ts,
            event_ts=event.ts,
            acc_device=fix.acc,
            acc_event=acc,
            motion=info.motion,
        )
        if verdict is Verdict.STALE:
            found = _between(info, fix, event.ts, policy)
            if found is not None:
                decisions[device_id] = judged_between(
                    found,
                    event,
                    at=(lat, lon, acc),
                    radius=radius,
                    info=info,
                    policy=policy,
                    targets=targets,
                )
                continue
        if verdict is Verdict.WITHIN:
            targets[device_id] = Target(device_id, info.kind, ActivationReason.PROXIMITY, dist)
            # Link lost but still buffering: the command waits in its broker session.
            reason = "proximity" if info.online else "proximity_queued"
            decisions[device_id] = DecisionRow(
                device_id, kind, True, reason, dist, margin, age, fix.acc, fix.lat, fix.lon
            )
        else:
            decisions[device_id] = DecisionRow(
                device_id,
                kind,
                False,
                verdict.value,
                dist,
                margin,
                age,
                fix.acc,
                fix.lat,
                fix.lon,
            )
    since = event.ts - fleet.offline_memory_s
    for info, dist in fleet.offline_near(lat, lon, search, since):
        last = info.last_fix
        if last is None or info.device_id in decisions or not info.is_camera:
            continue
        last_kind = info.kind.value if info.kind else None
        age = event.ts - last.ts
        decisions[info.device_id] = DecisionRow(
            info.device_id,
            last_kind,
            False,
            Exclusion.OFFLINE,
            dist,
            None,
            age,
            last.acc,
            last.lat,
            last.lon,
        )


def judged_between(
    found: tuple[PastFix, PastFix],
    event: Event,
    *,
    at: tuple[float, float, float | None],
    radius: float,
    info: DeviceInfo,
    policy: InclusionPolicy,
    targets: dict[str, Target],
) -> DecisionRow:
    """A camera whose latest fix is stale for this event, judged on the two fixes on
    either side of the event's time; the row holds where that puts it at the event."""
    before, after = found
    lat, lon = _interpolate(before, after, event.ts)
    dist = distance_m(at[0], at[1], lat, lon)
    acc = _worse(before.acc, after.acc)
    verdict, margin = policy.judge_between(
        distance_m=dist,
        radius_m=radius,
        before_ts=before.ts,
        after_ts=after.ts,
        event_ts=event.ts,
        acc_device=acc,
        acc_event=at[2],
        speed_mps=_speed(before, after),
        moved_m=_moved(before, after),
    )
    nearest = before if event.ts - before.ts <= after.ts - event.ts else after
    age = event.ts - nearest.ts
    kind = info.kind.value if info.kind is not None else None
    if verdict is Verdict.WITHIN:
        targets[info.device_id] = Target(
            info.device_id, info.kind, ActivationReason.PROXIMITY, dist
        )
        reason = "proximity_between" if info.online else "proximity_queued"
        return DecisionRow(info.device_id, kind, True, reason, dist, margin, age, acc, lat, lon)
    return DecisionRow(info.device_id, kind, False, verdict.value, dist, margin, age, acc, lat, lon)


def plan_activation(
    *,
    event: Event,
    source: str,
    rule: Rule,
    fleet: Fleet,
    index: SpatialIndex,
    policy: InclusionPolicy,
) -> Plan:
    """Decide which cameras ``event`` from device ``source`` activates under ``rule``."""
    lat, lon, acc, position_source = _event_position(event, source, fleet, index, policy)
    radius = rule.radius_for(event.radius)
    targets: dict[str, Target] = {}
    decisions: dict[str, DecisionRow] = {}
    if rule.include_paired:
        _paired(source, fleet, targets, decisions)
    if lat is not None and lon is not None:
        _nearby(
            event=event,
            at=(lat, lon, acc),
            radius=radius,
            rule=rule,
            fleet=fleet,
            index=index,
            policy=policy,
            targets=targets,
            decisions=decisions,
        )
    return Plan(
        aid=activation_id(source, event.eid),
        lat=lat,
        lon=lon,
        acc=acc,
        position_source=position_source,
        radius_m=radius,
        pre_roll_s=rule.pre_roll_s,
        targets=tuple(targets.values()),
        decisions=tuple(decisions.values()),
    )
