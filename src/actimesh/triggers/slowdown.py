"""The engine asks devices to slow down when it sheds telemetry, and stops asking when
it no longer does.

**The signal: telemetry shed.** The engine's telemetry reader holds a bounded queue
(``[engine] telemetry_queue``); when the engine cannot keep up, the oldest positions
are dropped and counted (``dropped_incoming`` of the ``tm`` link, and of the relay's
link with partitions). That count is the one thing that says "more positions arrive
than this engine can index", whatever the cause (a slow machine, a burst, a broker
delivering faster than usual), and it never counts a trigger, a command or an answer,
which travel on other links. CPU or the event loop's lag would say it less directly,
and a broker-side figure is not visible to the engine on both brokers.

**Hysteresis.** The rate shed is measured over ``slowdown_window_s``. The engine asks
devices to slow down when it reaches ``slowdown_shed_per_s``, and clears the request
only once it has stayed at or below ``slowdown_calm_per_s`` (lower) for
``slowdown_hold_s``: a fleet that slows down sheds nothing, and without the hold the
engine would clear at once, the fleet would speed up, and it would shed again (flap).

**The message** (messages.SlowDown): signed with the command key, retained, with an
expiry ``slowdown_ttl_s`` ahead, renewed every third of that while the overload lasts
(on the NATS cluster, where ``retain`` means nothing to a native publisher, the renewal
is what reaches devices that connect later). Clearing is a signed message without
``hb``, newer than every "slow" before it, so it supersedes the retained copy at once.
``seq`` is the milliseconds it was issued (strictly increasing here), so an engine
restarted, or another replica, never issues one older than what devices hold.

**Freshness stays honest.** Devices announce the heartbeat they use in each report, and
the policy trusts a heartbeat up to ``max_heartbeat_s``. While devices may use the
slower one (until the last request's expiry, plus one slow heartbeat and the grace) the
planner trusts heartbeats up to it (:meth:`Planner.trust_heartbeat`); a device that
did not slow down still announces its own shorter heartbeat and is judged by that.

An engine that starts trusts the slower heartbeat for one ``slowdown_ttl_s`` and one
slow heartbeat, since a slow-down sent before it (re)started may still hold.

With several replicas, only an engine that asked clears its request; a calm replica
says nothing. Two replicas that disagree can still flap (one clears, the other's
renewal asks again within ``slowdown_ttl_s / 3``): not handled yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from actimesh.broker.codec import encode
from actimesh.broker.topics import Topics
from actimesh.broker.transport import Outbound
from actimesh.errors import BrokerError
from actimesh.security.signing import CommandSigner
from actimesh.triggers.settings import EngineSettings
from actimesh.triggers.stats import EngineStats

__all__ = ["Overload", "SlowDownControl"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Overload:
    """The hysteresis on the shed rate, pure (time and counts passed in)."""

    shed_per_s: float
    calm_per_s: float
    window_s: float
    hold_s: float
    active: bool = False
    #: Since when the rate has been calm while active (None: not calm now).
    _calm_since: float | None = None
    _since: float = 0.0
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def rate(self) -> float:
        """Positions shed a second over the last window (0 until a window is full)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        if t1 - t0 < self.window_s * 0.5:
            return 0.0
        return max(0, n1 - n0) / (t1 - t0)

    def observe(self, now: float, shed_total: int) -> bool | None:
        """Take the shed counter at ``now``; True: overload began, False: it ended,
        None: no change."""
        samples = self._samples
        samples.append((now, shed_total))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()
        rate = self.rate()
        if not self.active:
            if rate >= self.shed_per_s and rate > 0:
                self.active, self._since, self._calm_since = True, now, None
                return True
            return None
        if rate > self.calm_per_s:
            self._calm_since = None
            return None
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since >= self.hold_s and now - self._since >= self.hold_s:
            self.active = False
            return False
        return None


class SlowDownControl:
    """Publishes and clears the engine's slow-down (module docstring). ``shed`` reads
    the engine's count of positions shed so far; ``trust`` tells the planner the slowest
    heartbeat to trust now."""

    def __init__(
        self,
        *,
        out: Outbound,
        signer: CommandSigner,
        topics: Topics,
        settings: EngineSettings,
        stats: EngineStats,
        clock: Callable[[], float],
        shed: Callable[[], int],
        trust: Callable[[float], None],
    ) -> None:
        s = settings
        self._out = out
        self._signer = signer
        self._topics = topics
        self._settings = s
        self._stats = stats
        self._clock = clock
        self.shed = shed
        self._trust = trust
        self.overload = Overload(
            shed_per_s=s.slowdown_shed_per_s,
            calm_per_s=s.slowdown_calm_per_s,
            window_s=s.slowdown_window_s,
            hold_s=s.slowdown_hold_s,
        )
        self._seq = 0
        self._next_renewal = 0.0
        #: Until when devices may still be on the slow heartbeat (the planner trusts it).
        self._trust_until = 0.0
        self._trusting = False
        self._owes_clear = False

    @property
    def tick_s(self) -> float:
        """How often the shed counter is read: five samples a window."""
        return self._settings.slowdown_window_s / 5

    async def run(self) -> None:
        """Read the signal every :attr:`tick_s` and publish what it calls for.

        A slow-down this engine (or a replica) sent before a restart may still hold on
        the devices, retained, until its expiry: the slower heartbeat is trusted from
        the start for as long as that can be, or their still cameras' fixes would be
        judged stale meanwhile.
        """
        s = self._settings
        self._trust_until = self._clock() + s.slowdown_ttl_s + s.slowdown_heartbeat_s
        self._trusting = True
        self._trust(s.slowdown_heartbeat_s)
        while True:
            await asyncio.sleep(self.tick_s)
            await self.step()

    async def step(self) -> None:
        """One reading of the signal, and the publish it calls for (if any)."""
        now = self._clock()
        change = self.overload.observe(now, self.shed())
        self._stats.telemetry_shed_per_s = self.overload.rate()
        s = self._settings
        if change is True:
            log.warning(
                "engine overloaded (%.0f positions shed a second): asking devices to "
                "report every %g s at most",
                self.overload.rate(),
                s.slowdown_heartbeat_s,
            )
        if self.overload.active and (change is True or now >= self._next_renewal):
            await self._publish(now, s.slowdown_heartbeat_s)
        elif (change is False or self._owes_clear) and not self.overload.active:
            log.info("engine load back to normal: clearing the slow-down")
            await self._publish(now, None)
        if self._trusting and now > self._trust_until and not self.overload.active:
            self._trusting = False
            self._trust(0.0)
        self._stats.slowdown_active = self.overload.active

    async def _publish(self, now: float, hb: float | None) -> None:
        s = self._settings
        self._seq = max(self._seq + 1, int(now * 1000))
        exp = now + s.slowdown_ttl_s
        message = self._signer.slowdown(
            agency=self._topics.agency, seq=self._seq, ts=now, exp=exp, hb=hb
        )
        if hb is not None:
            # Trusted before devices hear of it, and until they may have stopped using it.
            self._trust_until = exp + hb + s.slowdown_ttl_s / 3
            if not self._trusting:
                self._trusting = True
                self._trust(hb)
        try:
            await self._out.publish(self._topics.slowdown(), encode(message), qos=1, retain=True)
        except BrokerError as exc:
            log.info("slow-down not published (sent again at the next reading): %s", exc)
            self._owes_clear = hb is None
            self._next_renewal = now  # try again at the next tick
            return
        self._owes_clear = False
        self._next_renewal = now + s.slowdown_ttl_s / 3
        self._stats.slowdowns_sent += 1
