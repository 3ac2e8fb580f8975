"""The trigger path: from a device's event to commands sent and a ledger write queued.

validate → check the sender may raise this trigger type → dedupe → the device's rate
limit → plan (pure, :mod:`.fanout`) → merge into the incident it repeats, or pass the
global storm bound (:mod:`.storm`) → sign and send every command (:mod:`.commands`) →
hand the ledger write and the activation record to the persister
(:mod:`.persistence`).

Who may raise a trigger comes from the rule (``senders``) and what the sender is from
the fleet: the device registry when one is given, the device's own presence otherwise.
Replays are refused by the dedupe memory, backed by the ledger once that memory has had
to forget, and by the event age limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from actimesh.broker.codec import check_clock, decode
from actimesh.broker.intake import Delivery
from actimesh.broker.messages import ConfirmStatus, DeviceState, Event
from actimesh.errors import PayloadError
from actimesh.geofence import InclusionPolicy, SpatialIndex
from actimesh.triggers.alerts import Alerts
from actimesh.triggers.commands import Commander
from actimesh.triggers.dedupe import Dedupe
from actimesh.triggers.fanout import Plan, PositionSource, plan_activation
from actimesh.triggers.fleet import Fleet
from actimesh.triggers.followup import FollowUps
from actimesh.triggers.partitions import Partitioning
from actimesh.triggers.persistence import Decided, Persister
from actimesh.triggers.rules import Rule, RuleTable
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats
from actimesh.triggers.storm import Incident, StormControl

__all__ = ["Planner", "TriggerTracer"]

log = logging.getLogger(__name__)


class TriggerTracer(Protocol):
    """Told when a trigger's handling starts and when all of its commands have left:
    how the bench splits a trigger's latency into its hops (``actimesh bench --trace``).
    Called on the trigger path itself, so it must be quick and must not raise."""

    def handling(self) -> None:
        """A trigger event's handling starts (before it is decoded)."""
        ...

    def commanded(self, eid: str) -> None:
        """Every command of event ``eid`` has been handed to the connection."""
        ...


class Planner:
    """Handles trigger events. One per engine."""

    def __init__(
        self,
        *,
        rules: RuleTable,
        policy: InclusionPolicy,
        fleet: Fleet,
        index: SpatialIndex,
        storm: StormControl,
        dedupe: Dedupe,
        commander: Commander,
        persister: Persister,
        alerts: Alerts,
        settings: EngineSettings,
        stats: EngineStats,
        clock: Callable[[], float],
        dispatch_source: str | None,
        tracer: TriggerTracer | None = None,
        partitioning: Partitioning | None = None,
        follow_ups: FollowUps | None = None,
    ) -> None:
        self._follow_ups = follow_ups
        self._partitioning = partitioning
        self._rules = rules
        self._policy = self._base_policy = policy
        self._fleet = fleet
        self._index = index
        self._storm = storm
        self._dedupe = dedupe
        self._commander = commander
        self._persister = persister
        self._alerts = alerts
        self._settings = settings
        self._stats = stats
        self._clock = clock
        self._dispatch_source = dispatch_source
        self._tracer = tracer

    @property
    def policy(self) -> InclusionPolicy:
        """The inclusion policy triggers are judged by now."""
        return self._policy

    def trust_heartbeat(self, seconds: float) -> None:
        """Trust devices' heartbeats up to ``seconds`` (the engine's slow-down allows
        that long: triggers/slowdown.py); 0 or less: back to the configured policy.

        Only the bound moves: each fix is still judged by the heartbeat its own device
        announced with it, so no device's fix is fresh longer than it promised.
        """
        base = self._base_policy
        if seconds <= base.max_heartbeat_s:
            self._policy = base
        else:
            self._policy = replace(base, max_heartbeat_s=seconds)

    async def handle(
        self, source: str, payload: bytes, delivery: Delivery, partition: int | None = None
    ) -> bool:
        """Handle a trigger. True when the persister now owns the acknowledgement.
        Raises :class:`PayloadError` for an event refused (the caller answers it).

        ``partition``: the partition whose share of events this one came in (geographic
        partitions, :mod:`.partitions`); an event another partition owns is left to
        it: False, nothing done, nothing refused."""
        if self._tracer is not None:
            self._tracer.handling()
        received = self._clock()
        event = self._decode(source, payload, partition)
        if event is None:
            self._stats.events_elsewhere += 1
            return False
        check_clock(
            event.ts,
            received,
            max_age_s=self._settings.max_event_age_s,
            max_skew_s=self._settings.max_clock_skew_s,
        )
        rule = self._rules.get(event.type)
        if rule is None:
            known = ", ".join(r.event_type for r in self._rules)
            raise PayloadError("unknown_event_type", f"{event.type!r} (known: {known})")
        self.check_sender(source, rule)
        self._stats.events += 1
        key = (source, event.eid)
        seen = await self._dedupe.lookup(key)
        if seen is not None:
            # A repeat: the device did not get our confirmation (or the broker redelivered).
            # Confirm it only if the original is durable: confirming one still waiting for
            # its ledger write would let the device stop re-sending, and a crash now
            # would lose the activation.
            self._stats.duplicates += 1
            if self._dedupe.is_durable(seen):
                log.info("duplicate event %s from %s: confirmed again", event.eid, source)
                self._commander.confirm(
                    source, event.eid, ConfirmStatus.ACTIVATED, self._dedupe.activation_of(seen)
                )
            return False
        ticket = self._storm.admit_event(source, received)
        if ticket is None:
            limits = self._storm.limits
            detail = (
                f"{source} raised more than {limits.device_burst:g} events at once or "
                f"{limits.device_rate_per_s:g} a second"
            )
            self._alerts.storm(source, received, f"rate_limited: {detail}")
            raise PayloadError("rate_limited", detail)
        plan = plan_activation(
            event=event,
            source=source,
            rule=rule,
            fleet=self._fleet,
            index=self._index,
            policy=self._policy,
        )
        self._count(plan)
        cameras = frozenset(t.device_id for t in plan.targets)
        joined = self._storm.merge_into(
            src=source,
            event_type=event.type,
            ets=event.ts,
            lat=plan.lat,
            lon=plan.lon,
            cameras=cameras,
            usable=lambda incident: self._mergeable(incident, cameras),
        )
        if joined is not None:
            self._dedupe.remember(key, plan.aid)
            item = Decided(
                plan,
                event,
                source,
                received,
                self._clock(),
                {},
                delivery,
                merged_into=joined.aid,
            )
            await self._persister.put(item)
            return True
        if not self._storm.admit_activation(ticket, received):
            detail = (
                f"over {self._storm.limits.activations_per_s:g} activations a second "
                "across the fleet"
            )
            self._alerts.storm(source, received, f"storm: {detail}")
            raise PayloadError("storm", detail)
        self._dedupe.remember(key, plan.aid)
        decided = self._clock()
        self._storm.remember(
            Incident(plan.aid, source, event.type, event.ts, plan.lat, plan.lon, cameras, decided)
        )
        await self._commander.send(plan, event, source, decided)
        if self._tracer is not None:
            self._tracer.commanded(event.eid)
        doc = self._rule_doc(rule)
        if self._follow_ups is not None:
            # Cameras left out stale may be commanded once a fix after the event comes.
            self._follow_ups.hold(plan, event, source, doc)
        # Waits (never drops) when the persister is behind: back-pressure, not loss.
        item = Decided(plan, event, source, received, decided, doc, delivery)
        await self._persister.put(item)
        return True

    def _decode(self, source: str, payload: bytes, partition: int | None) -> Event | None:
        """The event, or None when another partition owns it (geographic partitions). An
        unreadable one belongs to its sender's home partition, which refuses it (once,
        not once per partition)."""
        part = self._partitioning
        if partition is None or part is None:
            return decode(Event, payload)
        try:
            event = decode(Event, payload)
        except PayloadError:
            if part.home(source) != partition:
                return None
            raise
        return event if part.event_owner(event, source, self._index) == partition else None

    def _rule_doc(self, rule: Rule) -> dict[str, object]:
        """The rule and policy applied, as the ledger keeps them with the activation."""
        return {
            "event_type": rule.event_type,
            "camera_kinds": sorted(k.value for k in rule.camera_kinds),
            "radius_m": rule.radius_m,
            "pre_roll_s": rule.pre_roll_s,
            "include_paired": rule.include_paired,
            "policy": {
                "mode": self._policy.mode.value,
                "max_fix_age_s": self._policy.max_fix_age_s,
                "max_margin_m": self._policy.max_margin_m,
            },
        }

    def check_sender(self, source: str, rule: Rule) -> None:
        """Refuse a trigger type the sending device may not raise (``sender_not_allowed``)."""
        dispatch = self._dispatch_source is not None and source == self._dispatch_source
        kind = None if dispatch else self._fleet.kind_of(source)
        if rule.allows(kind, dispatch=dispatch):
            return
        what = "the dispatch source" if dispatch else (kind.value if kind else "of unknown kind")
        allowed = ", ".join(sorted(rule.senders)) or "nobody"
        raise PayloadError(
            "sender_not_allowed",
            f"{source} is {what}; {rule.event_type} may be raised by {allowed}",
        )

    def _count(self, plan: Plan) -> None:
        """Count who the plan leaves out, and why: a stale fix costs a command silently."""
        if plan.position_source is PositionSource.NONE:
            self._stats.events_without_position += 1  # only paired cameras commanded
        left_out = self._stats.left_out
        for decision in plan.decisions:
            if not decision.commanded:
                left_out[decision.reason] += 1

    def _mergeable(self, incident: Incident, cameras: frozenset[str]) -> bool:
        """May a repeat that would command ``cameras`` join ``incident``? Only once the
        incident is durable, and while every one of those cameras still reports that it
        is recording: one an officer has since stopped must be commanded again."""
        if not self._dedupe.is_durable(incident.aid):
            return False
        for device_id in cameras:
            info = self._fleet.get(device_id)
            if info is None or info.state is not DeviceState.RECORDING:
                return False
        return True
