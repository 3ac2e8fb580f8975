"""Storm control: how many trigger events a device, and the whole fleet, may turn into
activations, and when a repeated trigger joins the incident it repeats.

Pure and clock-driven (time is passed in), like :mod:`.delivery`: the engine asks, this
module answers. Three guards, applied in this order to an event that has already passed
validation, the sender allow-list and dedupe:

1. **Per device**, a token bucket (``device_burst`` events at once, refilled at
   ``device_rate_per_s``). An event from a device whose bucket is empty is refused as
   ``rate_limited``. Duplicates of an event already handled never reach the bucket, so a
   device re-sending an unconfirmed event does not spend its budget.
2. **Incident merging.** A trigger of the same type from the same device, within
   ``merge_window_s`` (event time) and ``merge_radius_m`` of an activation already made,
   becomes part of that activation *only if every camera it would command was commanded
   by that activation* and (the engine checks) that activation is durable and each of
   those cameras still reports that it is recording. It is then written to the ledger as
   merged and confirmed to the device with the original activation id; no camera is
   commanded again. A real second incident nearby is never lost: if it would reach one
   camera more, or a camera that has since stopped, it is activated normally.
3. **Globally**, a token bucket on *activations* (``activations_burst`` at once,
   refilled at ``activations_per_s``). An activation over it is refused as ``storm``.

Why in this order, and why the global bound is generous. The worst failure here is an
officer's taser draw refused because some other device is flooding. So a device's own
limit comes first and a flooding device exhausts only its own bucket: one compromised or
broken sensor can never push the fleet to the global bound, however fast it sends.
The global bound is there for many devices misbehaving at once (a bad firmware push, a
stolen batch of credentials), so it sits far above what a real fleet raises (tens of
activations a minute) and only bounds the work a storm makes for cameras, broker and
ledger. Even then it keeps a **reserve for quiet devices**: an event from a device that
has used less than half its own burst may take the global bucket down to
``-quiet_reserve`` where a busy device stops at zero. A storm made of busy devices
therefore cannot use up the room a quiet officer's first taser draw needs; only a storm
of very many distinct quiet devices, beyond the reserve too, could. Refused events are
counted, dead-lettered, confirmed to their device as rejected (so it stops re-sending)
and raise one ``storm`` alert per device per ``alert_every_s``.

Replicas each keep their own buckets: with N engines sharing the events, the limits
are N times these.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

from actimesh.errors import ConfigError
from actimesh.geofence import distance_m

__all__ = ["Incident", "StormControl", "StormLimits", "Ticket", "TokenBucket"]

#: Recent activations remembered per (device, event type) for merging.
_INCIDENTS_PER_KEY = 8


@dataclass(frozen=True, slots=True)
class StormLimits:
    """The storm-control settings (fields of the ``[engine]`` config table)."""

    #: A device may raise this many events at once ...
    device_burst: float = 10.0
    #: ... and then this many per second (one every 2 s).
    device_rate_per_s: float = 0.5
    #: The whole engine makes at most this many activations at once ...
    activations_burst: float = 200.0
    #: ... and then this many per second.
    activations_per_s: float = 100.0
    #: How far below zero the global bucket may go for quiet devices (see above).
    quiet_reserve: float = 100.0
    #: A repeat of a trigger within this many seconds (event time) ... (0: never merge)
    merge_window_s: float = 10.0
    #: ... and this many metres of an activation may join it.
    merge_radius_m: float = 30.0
    #: At most one storm alert per device per this many seconds.
    alert_every_s: float = 60.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            zero_ok = f.name in ("merge_window_s", "quiet_reserve")
            if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
                need = "zero or more" if zero_ok else "a positive number"
                raise ConfigError(f"engine.{f.name} must be {need}, got {value!r}")
        if self.device_burst < 1 or self.activations_burst < 1:
            raise ConfigError("engine.device_burst and engine.activations_burst must be >= 1")


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` per second."""

    capacity: float
    rate: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        return cls(capacity, rate, capacity, now)

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (refills as a side effect)."""
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        return self.tokens

    def take(self, now: float, *, floor: float = 0.0) -> bool:
        """Spend one token if that leaves at least ``floor``."""
        if self.level(now) - 1.0 < floor:
            return False
        self.tokens -= 1.0
        return True

    def give(self) -> None:
        """Return one token (up to the capacity)."""
        self.tokens = min(self.capacity, self.tokens + 1.0)


@dataclass(frozen=True, slots=True)
class Ticket:
    """An event the device's bucket admitted; ``quiet`` if the device had used less
    than half its burst."""

    device_id: str
    quiet: bool


@dataclass(frozen=True, slots=True)
class Incident:
    """An activation made, as merging needs it."""

    aid: str
    src: str
    event_type: str
    ets: float
    lat: float | None
    lon: float | None
    cameras: frozenset[str]
    made: float


class StormControl:
    """Per-device buckets, the global activation bucket and recent incidents."""

    def __init__(self, limits: StormLimits | None = None, *, max_devices: int = 100_000) -> None:
        self.limits = limits or StormLimits()
        self.max_devices = max_devices
        self._devices: dict[str, TokenBucket] = {}
        self._global: TokenBucket | None = None
        self._incidents: dict[tuple[str, str], list[Incident]] = {}
        self._alerted: dict[str, float] = {}

    # ------------------------------------------------------------------ admission
    def admit_event(self, device_id: str, now: float) -> Ticket | None:
        """Spend one of ``device_id``'s tokens; None when it has none (``rate_limited``)."""
        limits = self.limits
        bucket = self._devices.get(device_id)
        if bucket is None:
            if len(self._devices) >= self.max_devices:
                self._prune_devices(now)
            bucket = TokenBucket.full(limits.device_burst, limits.device_rate_per_s, now)
            self._devices[device_id] = bucket
        quiet = bucket.level(now) >= limits.device_burst / 2
        if not bucket.take(now):
            return None
        return Ticket(device_id, quiet)

    def admit_activation(self, ticket: Ticket, now: float) -> bool:
        """Spend one global activation token; False (``storm``) gives the device its
        token back, since the device did nothing wrong."""
        limits = self.limits
        if self._global is None:
            self._global = TokenBucket.full(limits.activations_burst, limits.activations_per_s, now)
        floor = -limits.quiet_reserve if ticket.quiet else 0.0
        if self._global.take(now, floor=floor):
            return True
        bucket = self._devices.get(ticket.device_id)
        if bucket is not None:
            bucket.give()
        return False

    def should_alert(self, device_id: str, now: float) -> bool:
        """True at most once per device per ``alert_every_s``."""
        last = self._alerted.get(device_id)
        if last is not None and now - last < self.limits.alert_every_s:
            return False
        if last is None and len(self._alerted) >= self.max_devices:
            every = self.limits.alert_every_s
            self._alerted = {d: t for d, t in self._alerted.items() if now - t < every}
        self._alerted[device_id] = now
        return True

    # ------------------------------------------------------------------ merging
    def remember(self, incident: Incident) -> None:
        """An activation was made: later repeats may merge into it."""
        if self.limits.merge_window_s <= 0:
            return
        key = (incident.src, incident.event_type)
        recent = self._incidents.get(key)
        if recent is None:
            if len(self._incidents) >= self.max_devices:
                self._prune_incidents(incident.made)
            recent = self._incidents[key] = []
        recent.append(incident)
        del recent[:-_INCIDENTS_PER_KEY]

    def merge_into(
        self,
        *,
        src: str,
        event_type: str,
        ets: float,
        lat: float | None,
        lon: float | None,
        cameras: frozenset[str],
        usable: Callable[[Incident], bool] = lambda _incident: True,
    ) -> Incident | None:
        """The incident an event with this plan joins, or None to activate it normally.

        ``cameras`` are those the event's own plan would command; ``usable`` is the
        engine's last word (the incident is durable, its cameras still record).
        """
        limits = self.limits
        if limits.merge_window_s <= 0:
            return None
        for incident in reversed(self._incidents.get((src, event_type), ())):
            if abs(ets - incident.ets) > limits.merge_window_s:
                continue
            if (lat is None) != (incident.lat is None):
                continue
            if (
                lat is not None
                and lon is not None
                and incident.lat is not None
                and incident.lon is not None
                and distance_m(lat, lon, incident.lat, incident.lon) > limits.merge_radius_m
            ):
                continue
            if cameras <= incident.cameras and usable(incident):
                return incident
        return None

    # ------------------------------------------------------------------ memory
    def _prune_devices(self, now: float) -> None:
        # A bucket that has refilled is no different from a new one: forget it.
        self._devices = {d: b for d, b in self._devices.items() if b.level(now) < b.capacity}
        while len(self._devices) >= self.max_devices:  # all busy: drop the oldest
            del self._devices[next(iter(self._devices))]

    def _prune_incidents(self, now: float) -> None:
        # Incidents are kept a little longer than the window: event times may lag.
        horizon = now - 2 * self.limits.merge_window_s
        self._incidents = {
            key: kept
            for key, recent in self._incidents.items()
            if (kept := [i for i in recent if i.made >= horizon])
        }
        while len(self._incidents) >= self.max_devices:
            del self._incidents[next(iter(self._incidents))]
