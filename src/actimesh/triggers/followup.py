"""Follow-ups: cameras whose fix was stale when their trigger was judged, commanded once
a fix after the event puts them within the radius.

When a device's telemetry stops reaching the engine for more than ``max_fix_age_s``
(a cluster node killed or cut off, telemetry shed under overload) and a trigger arrives
promptly, a camera standing within 30 ft of it has only a fix from before the event:
the plan leaves it out ``stale``, and no pair of fixes brackets the event yet
(:func:`.fanout._between`). Its next fix, once telemetry resumes, completes the pair.

So the planner hands every such camera here (:meth:`FollowUps.hold`): one left out
``stale``, with a fix before the event (and none after it) no more than
``max_still_bracket_s`` before it (a still camera's bracket may be that wide), found
within the band the planner searches (the radius plus ``max(max_margin_m,
DECISION_BAND_M)``, 6 m by default). That band is the movement allowance: a camera
further away when its telemetry stopped is not held, and a camera moving fast enough to
have crossed more than 6 m in the gap is judged by the speed its two fixes report
(:meth:`~actimesh.geofence.InclusionPolicy.judge_between`).

Held cameras wait ``follow_up_s`` (20 s) after the event, or ``follow_up_silent_s``
(45 s) when the engine has heard nothing at all from the device (no telemetry, with or
without a position, no presence) for ``max_fix_age_s`` when the trigger is judged: its
connection is lost, not only its GPS, and it reports again only once its MQTT keepalive
has noticed (up to twice the keepalive, 30 s at the default 15 s) and it has connected
to another node. A node cut off the network silences its devices that long while
triggers raised through the other nodes arrive at once, and a 20 s hold let such a
camera go a few seconds before its next fix came. The longer hold asks more of the
camera's pre-event buffer (below) and keeps the camera in memory longer; a device heard
without a position (its GPS lost, its link fine) gets no more than ``follow_up_s``,
because nothing says its next fix is near. The intake tells this module of each fix it
indexes after a gap in a device's telemetry of ``max_fix_age_s`` or more
(:meth:`FollowUps.on_fix`; the engine's hot path, a device reporting every second, never
calls it), which every held camera's next fix follows: a held camera's first fix after
the event is judged with its fix before it, exactly as a late trigger is (reason
``proximity_between``). WITHIN: it is commanded in a **follow-up activation**. Anything
else: it stays left out, its ``stale`` row stands, counted ``follow_up_too_far``. No fix
by the deadline: it stays ``stale``, counted ``follow_up_expired``.

A follow-up activation is an ordinary activation of the same trigger event (same
source, event time, position, radius and pre-roll), with its own id, written as its own
ledger row with its own decision rows, so the ledger's chain and ``audit verify`` are
unchanged, and cameras' answers reference its id as any other. The ledger keeps one
activation per ``(src, eid)``, so its row's ``eid`` is derived (``fu-`` and 24 hex digits
of the SHA-256 of the first activation's id and the follow-up's number) and its rule
document names the activation it ``follows`` and the event's own ``eid``; the commands
and the activation record carry the event's own ``eid`` and the record names the first
activation in ``follows``. Cameras that complete their pairs within
``follow_up_coalesce_s`` of one another are commanded in one follow-up.

The pre-roll of a follow-up is counted back from the event, like any command's: the
camera's buffer must keep ``follow_up_s`` plus the command's delivery time beyond the
pre-roll (the simulated camera keeps 30 s, ``late_allowance_s``).

Held cameras live in the memory of the engine that planned the trigger: if it dies,
they are lost (docs/SCALING.md). Bounded: ``follow_up_max`` overall and
``follow_up_per_activation`` per activation; beyond them a camera is refused, counted
``follow_up_refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from actimesh.broker.intake import Delivery
from actimesh.broker.messages import Event, activation_id
from actimesh.geofence import InclusionPolicy
from actimesh.ledger import DecisionRow
from actimesh.triggers.commands import Commander
from actimesh.triggers.fanout import Exclusion, Plan, Target, judged_between
from actimesh.triggers.fleet import Fleet
from actimesh.triggers.persistence import Decided, Persister
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats
from actimesh.triggers.track import PastFix

__all__ = ["FollowUps", "follow_up_eid"]

log = logging.getLogger(__name__)

#: How often held cameras past their deadline are let go, at most a second late.
_EXPIRE_EVERY_S = 1.0


def follow_up_eid(aid: str, n: int) -> str:
    """The ledger ``eid`` of follow-up ``n`` (1, 2, ...) of activation ``aid``."""
    digest = hashlib.sha256(f"{aid}\x00{n}".encode()).hexdigest()
    return f"fu-{digest[:24]}"


@dataclass(slots=True)
class _Origin:
    """The first activation of a trigger, while any of its cameras are held."""

    plan: Plan
    event: Event
    source: str
    rule: dict[str, object]
    #: Held cameras, their fix before the event, and when each is let go.
    held: dict[str, PastFix] = field(default_factory=dict)
    until: dict[str, float] = field(default_factory=dict)
    #: Cameras judged within, waiting to be commanded.
    ready: list[tuple[Target, DecisionRow]] = field(default_factory=list)
    sent: int = 0


class FollowUps:
    """Held cameras of this engine's activations. ``await run()`` in the engine's group."""

    def __init__(
        self,
        *,
        policy: Callable[[], InclusionPolicy],
        fleet: Fleet,
        commander: Commander,
        persister: Persister,
        settings: EngineSettings,
        stats: EngineStats,
        clock: Callable[[], float],
    ) -> None:
        self._policy = policy
        self._fleet = fleet
        self._commander = commander
        self._persister = persister
        self._settings = settings
        self._stats = stats
        self._clock = clock
        self._origins: dict[str, _Origin] = {}
        #: Held camera → the activations holding it.
        self._by_camera: dict[str, set[str]] = {}
        self._count = 0
        self._wake = asyncio.Event()

    @property
    def gap_s(self) -> float:
        """The shortest gap in a camera's telemetry that can have made it held."""
        return self._policy().max_fix_age_s

    def __len__(self) -> int:
        """Cameras held now."""
        return self._count

    def hold(self, plan: Plan, event: Event, source: str, rule: dict[str, object]) -> None:
        """Hold the cameras ``plan`` left out ``stale`` that a fix after the event may
        yet put within its radius (see the module docstring for which)."""
        if plan.lat is None or plan.lon is None:
            return
        policy = self._policy()
        s = self._settings
        now = self._clock()
        origin: _Origin | None = None
        for d in plan.decisions:
            if d.commanded or d.reason != Exclusion.STALE or d.fix_age_s is None:
                continue
            if d.lat is None or d.lon is None:
                continue
            if not 0.0 < d.fix_age_s < policy.max_still_bracket_s:
                continue  # a fix after the event, or one no bracket can bridge
            if self._count >= s.follow_up_max or (
                origin is not None and len(origin.held) >= s.follow_up_per_activation
            ):
                self._stats.follow_up_refused += 1
                continue
            if origin is None:
                origin = _Origin(plan, event, source, rule)
            info = self._fleet.get(d.device_id)
            spd = None if info is None or info.motion is None else info.motion[2]
            origin.held[d.device_id] = PastFix(event.ts - d.fix_age_s, d.lat, d.lon, d.acc_m, spd)
            silent = info is None or now - info.last_seen >= policy.max_fix_age_s
            if silent:
                self._stats.follow_up_silent += 1
            hold_s = s.follow_up_silent_s if silent else s.follow_up_s
            origin.until[d.device_id] = event.ts + hold_s
            self._by_camera.setdefault(d.device_id, set()).add(plan.aid)
            self._count += 1
            self._stats.follow_up_held += 1
        if origin is not None:
            self._origins[plan.aid] = origin

    def on_fix(self, device_id: str, fix: PastFix) -> None:
        """A fix the intake indexed after a gap in ``device_id``'s telemetry."""
        aids = self._by_camera.get(device_id)
        if aids is None:
            return
        for aid in tuple(aids):
            origin = self._origins[aid]
            before = origin.held[device_id]
            if fix.ts < origin.event.ts:
                if fix.ts > before.ts:
                    origin.held[device_id] = fix  # a tighter bracket to come
                continue
            self._let_go(aid, origin, device_id)
            self._judge(origin, device_id, before, fix)

    def _judge(self, origin: _Origin, device_id: str, before: PastFix, after: PastFix) -> None:
        info = self._fleet.get(device_id)
        plan = origin.plan
        if info is None or plan.lat is None or plan.lon is None:
            return
        targets: dict[str, Target] = {}
        row = judged_between(
            (before, after),
            origin.event,
            at=(plan.lat, plan.lon, plan.acc),
            radius=plan.radius_m,
            info=info,
            policy=self._policy(),
            targets=targets,
        )
        target = targets.get(device_id)
        if target is None:
            self._stats.follow_up_too_far += 1
            log.info("follow-up of %s: %s stays left out (%s)", plan.aid, device_id, row.reason)
            return
        origin.ready.append((target, row))
        self._wake.set()

    def _let_go(self, aid: str, origin: _Origin, device_id: str) -> None:
        del origin.held[device_id]
        del origin.until[device_id]
        self._count -= 1
        aids = self._by_camera[device_id]
        aids.discard(aid)
        if not aids:
            del self._by_camera[device_id]

    def _expire(self, now: float) -> None:
        for aid, origin in list(self._origins.items()):
            for device_id, until in list(origin.until.items()):
                if until <= now:
                    self._let_go(aid, origin, device_id)
                    self._stats.follow_up_expired += 1
            if not origin.held and not origin.ready:
                del self._origins[aid]

    async def run(self) -> None:
        """Command the cameras judged within, in follow-ups; let go of the expired."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXPIRE_EVERY_S):
                    await self._wake.wait()
            if self._wake.is_set():
                # Others whose telemetry resumes with this camera's join its follow-up.
                await asyncio.sleep(self._settings.follow_up_coalesce_s)
                self._wake.clear()
            for origin in list(self._origins.values()):
                if origin.ready:
                    ready, origin.ready = origin.ready, []
                    await self._send(origin, ready)
            self._expire(self._clock())

    async def _send(self, origin: _Origin, ready: list[tuple[Target, DecisionRow]]) -> None:
        first = origin.plan
        origin.sent += 1
        eid = follow_up_eid(first.aid, origin.sent)
        plan = replace(
            first,
            aid=activation_id(origin.source, eid),
            targets=tuple(t for t, _ in ready),
            decisions=tuple(d for _, d in ready),
        )
        now = self._clock()
        await self._commander.send(plan, origin.event, origin.source, now)
        self._stats.follow_up_activations += 1
        self._stats.follow_up_commanded += len(ready)
        log.info("follow-up %s of %s: %d camera(s) commanded", plan.aid, first.aid, len(ready))
        rule = {**origin.rule, "follows": first.aid, "eid": origin.event.eid}
        item = Decided(
            plan,
            origin.event,
            origin.source,
            now,
            now,
            rule,
            Delivery("", b""),  # nothing to acknowledge: the trigger was, with the first
            follows=first.aid,
            ledger_eid=eid,
        )
        await self._persister.put(item)
