"""How the trigger engine behaves (the ``[engine]`` table of the config file)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from actimesh.broker.topics import IDENTIFIER_PATTERN, is_identifier
from actimesh.errors import ConfigError
from actimesh.triggers.storm import StormLimits

__all__ = ["EngineSettings"]

_ZERO_ALLOWED = frozenset(
    {"merge_window_s", "quiet_reserve", "quarantine_after", "slowdown_calm_per_s"}
)
#: The slowest heartbeat a slow-down may ask for (messages.MAX_SLOW_HEARTBEAT_S).
_MAX_SLOW_HEARTBEAT_S = 300.0
#: Storm control's defaults live in one place, :class:`StormLimits`.
_STORM = StormLimits()


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How the trigger engine behaves."""

    engine_id: str = "engine-1"
    #: Commands not delivered within this time expire in the broker (MQTT v5).
    command_expiry_s: float = 300.0
    #: Events older than this are rejected. Sensors that cache offline (Motorola APX
    #: caches 30 min) replay within it.
    max_event_age_s: float = 1800.0
    #: Timestamps further in the future than this are a broken or forged clock.
    max_clock_skew_s: float = 10.0
    #: Devices whose latest fix waits to be indexed (one each: a newer fix replaces
    #: the waiting one); beyond it the longest-waiting is dropped and counted (never
    #: events). Above the fleet's size, no device's fix is dropped, only superseded.
    telemetry_queue: int = 200_000
    #: Position fixes one device may send: ``telemetry_burst`` at once, refilled at
    #: ``telemetry_rate_per_s``. Devices send about one a second; a fix over the rate is
    #: dropped before it is decoded (the next one is as good), counted, and counts
    #: towards quarantine, so one device's flood costs other officers nothing.
    telemetry_rate_per_s: float = 10.0
    telemetry_burst: float = 20.0
    #: Control messages (events, acknowledgements, presence) one device may send:
    #: ``control_burst`` at once, refilled at ``control_rate_per_s``. An honest device
    #: sends a few a minute, a camera in an incident a few a second; beyond this they
    #: are refused unread (no decode, no ledger), counted, and count towards quarantine.
    control_rate_per_s: float = 20.0
    control_burst: float = 100.0
    #: At most this many dead-letter reports per second are published (all are counted).
    deadletters_per_s: float = 50.0
    #: Also publish each activation record as JSON (for integrators without msgpack).
    publish_json: bool = True
    #: A camera that has not answered a command within this time raises a no_ack alert;
    #: commands nobody acknowledged are re-sent with backoff up to ``retry_max_s``.
    ack_timeout_s: float = 3.0
    retry_max_s: float = 30.0
    #: The broker keeps the engine's subscriptions and unacknowledged trigger events
    #: this long while the engine is down (persistent session): long enough for a
    #: supervisor to restart it, short because a dead replica's session keeps taking
    #: its share of events until it expires. Devices re-send until confirmed, so
    #: nothing depends on the session alone.
    session_expiry_s: int = 30
    #: Engines in the same group share trigger events (MQTT v5 shared subscription):
    #: each event goes to one replica. Empty: a plain subscription.
    share_group: str = "engines"
    #: After (re)starting, trigger events are held this long before they are planned, so
    #: the engine first hears every device's retained presence and at least one round of
    #: telemetry. A broker redelivers queued events the instant the engine reconnects,
    #: before any of that; planned then they would find no camera at all. Keep it above
    #: the fleet's telemetry interval. Held events keep their event time, so pre-roll is
    #: unaffected.
    warmup_s: float = 2.5
    #: At the end of the warm-up, move every object alive to the collector's permanent
    #: generation (``gc.freeze``), and again after every full collection (triggers/
    #: heap.py): full collections then scan only what came since the last one.
    #: One setting per process; off for engines embedded in a host that manages its heap.
    freeze_heap: bool = True
    #: Events remembered in memory for dedupe; beyond that the ledger is asked, so a
    #: replay is refused however long ago its first copy was forgotten here.
    dedupe_memory: int = 200_000
    #: Storm control, flat in ``[engine]``: the fields of :class:`StormLimits`
    #: (triggers/storm.py says what each does), with its defaults.
    device_burst: float = _STORM.device_burst
    device_rate_per_s: float = _STORM.device_rate_per_s
    activations_burst: float = _STORM.activations_burst
    activations_per_s: float = _STORM.activations_per_s
    quiet_reserve: float = _STORM.quiet_reserve
    merge_window_s: float = _STORM.merge_window_s
    merge_radius_m: float = _STORM.merge_radius_m
    #: ``alert_every_s`` of :class:`StormLimits`.
    storm_alert_s: float = _STORM.alert_every_s
    #: A device whose messages the engine refuses this many times within
    #: ``quarantine_window_s`` is disabled live, with an alert (triggers/quarantine.py).
    #: Only refusals count, never valid traffic. 0 turns quarantine off.
    quarantine_after: int = 200
    quarantine_window_s: float = 10.0
    #: The engine publishes its online status again this often, each saying it holds
    #: for three times as long (``ttl``): a reader sees an engine killed outright go
    #: stale within that, even on a bus without a last will (a NATS cluster).
    status_every_s: float = 10.0
    #: Geographic partitions (triggers/partitions.py, docs/SCALING.md): the globe's
    #: cells are split over ``partitions`` partitions, and this engine holds the fixes
    #: of, and plans the triggers raised in, the partitions listed in ``partition``.
    #: 1 (the default): no partitions, every engine holds the whole fleet.
    partitions: int = 1
    #: The partitions this engine serves (0-based, below ``partitions``); an engine
    #: taking over a dead engine's partition lists it too. Empty means all of them.
    partition: tuple[int, ...] = ()
    #: Edge of a partition cell, metres (geofence/partition.py).
    partition_cell_m: float = 2000.0
    #: The slow-down (triggers/slowdown.py, docs/SCALING.md): when the engine sheds
    #: ``slowdown_shed_per_s`` positions a second or more over ``slowdown_window_s``, it
    #: asks devices (signed, retained) to report at most every ``slowdown_heartbeat_s``
    #: when nothing changes; it clears the request once shedding has stayed at or below
    #: ``slowdown_calm_per_s`` for ``slowdown_hold_s``. Each request expires
    #: ``slowdown_ttl_s`` after it is sent and is renewed every third of that.
    slowdown: bool = True
    slowdown_heartbeat_s: float = 30.0
    slowdown_shed_per_s: float = 500.0
    slowdown_calm_per_s: float = 50.0
    slowdown_window_s: float = 10.0
    slowdown_hold_s: float = 60.0
    slowdown_ttl_s: float = 120.0
    #: Follow-ups (triggers/followup.py): a camera left out ``stale`` at the trigger,
    #: whose last fix before the event was within the search band, is held this long
    #: after the event for a fix after it, and commanded in a follow-up activation if
    #: the two fixes put it within the radius. It must stay below what a camera's
    #: pre-event buffer keeps beyond the pre-roll (``late_allowance_s``, 30 s in the
    #: simulated camera), less the command's delivery time. Cameras held at once, at
    #: most, overall and per activation (beyond: refused, counted).
    follow_up_s: float = 20.0
    #: The hold for a held camera whose device the engine has not heard at all for
    #: ``max_fix_age_s`` when the trigger is judged (its connection lost, not only its
    #: GPS): it resumes once its MQTT keepalive notices and it reconnects elsewhere, up
    #: to twice its keepalive (15 s by default) plus the reconnection, which outlasts
    #: ``follow_up_s``. At least ``follow_up_s``; the same buffer caveat, longer.
    follow_up_silent_s: float = 45.0
    follow_up_max: int = 10_000
    follow_up_per_activation: int = 256
    #: How long a follow-up waits for other cameras of the same activation to join it.
    follow_up_coalesce_s: float = 0.25

    def storm_limits(self) -> StormLimits:
        """The storm-control part of these settings."""
        return StormLimits(
            device_burst=self.device_burst,
            device_rate_per_s=self.device_rate_per_s,
            activations_burst=self.activations_burst,
            activations_per_s=self.activations_per_s,
            quiet_reserve=self.quiet_reserve,
            merge_window_s=self.merge_window_s,
            merge_radius_m=self.merge_radius_m,
            alert_every_s=self.storm_alert_s,
        )

    def __post_init__(self) -> None:
        if self.share_group and not is_identifier(self.share_group):
            raise ConfigError(f"share_group {self.share_group!r} must match {IDENTIFIER_PATTERN}")
        if not is_identifier(self.engine_id):
            raise ConfigError(f"engine_id {self.engine_id!r} must match {IDENTIFIER_PATTERN}")
        if isinstance(self.quarantine_after, bool) or not isinstance(self.quarantine_after, int):
            raise ConfigError(
                f"engine.quarantine_after must be a whole number (0: off), got "
                f"{self.quarantine_after!r}"
            )
        if self.quarantine_after < 0:
            raise ConfigError("engine.quarantine_after must be 0 (off) or more refusals")
        if isinstance(self.dedupe_memory, bool) or not isinstance(self.dedupe_memory, int):
            raise ConfigError(
                f"engine.dedupe_memory must be a whole number, got {self.dedupe_memory!r}"
            )
        if self.follow_up_silent_s < self.follow_up_s:
            raise ConfigError(
                f"engine.follow_up_silent_s ({self.follow_up_silent_s!r}) must be at least "
                f"engine.follow_up_s ({self.follow_up_s!r}): a device that lost its "
                "connection needs longer to report again, not shorter"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _ZERO_ALLOWED:
                continue
            if (
                isinstance(value, float | int)
                and not isinstance(value, bool)
                and not (math.isfinite(value) and value > 0)
            ):
                raise ConfigError(f"engine.{f.name} must be a positive number, got {value!r}")
        self.storm_limits()  # checks the rest, where zero may mean "off"
        self._check_partitions()
        self._check_slowdown()

    def _check_slowdown(self) -> None:
        if not isinstance(self.slowdown, bool):
            raise ConfigError(f"engine.slowdown must be true or false, got {self.slowdown!r}")
        if not self.slowdown_heartbeat_s <= _MAX_SLOW_HEARTBEAT_S:
            raise ConfigError(
                f"engine.slowdown_heartbeat_s must be at most {_MAX_SLOW_HEARTBEAT_S:g} s, "
                f"got {self.slowdown_heartbeat_s!r}"
            )
        if not self.slowdown_calm_per_s >= 0:
            raise ConfigError(
                f"engine.slowdown_calm_per_s must be 0 or more, got {self.slowdown_calm_per_s!r}"
            )
        if not self.slowdown_calm_per_s < self.slowdown_shed_per_s:
            raise ConfigError(
                "engine.slowdown_calm_per_s must be below engine.slowdown_shed_per_s (the gap "
                f"keeps the request from flapping), got {self.slowdown_calm_per_s!r} and "
                f"{self.slowdown_shed_per_s!r}"
            )

    def _check_partitions(self) -> None:
        count = self.partitions
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(
                f"engine.partitions must be a whole number >= 1 (1: no partitions), got {count!r}"
            )
        owned: object = self.partition
        if isinstance(owned, int) and not isinstance(owned, bool):
            owned = (owned,)
        if not isinstance(owned, list | tuple) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 <= p < count for p in owned
        ):
            raise ConfigError(
                f"engine.partition must list partitions from 0 to {count - 1} "
                f"(engine.partitions = {count}), got {self.partition!r}"
            )
        if len(set(owned)) != len(owned):
            raise ConfigError(f"engine.partition lists a partition twice: {self.partition!r}")
        # A list from a config file is kept as a tuple: the settings stay hashable.
        object.__setattr__(self, "partition", tuple(sorted(owned)))

    @property
    def served(self) -> tuple[int, ...]:
        """The partitions this engine serves: ``partition``, or all when it is empty."""
        return self.partition or tuple(range(self.partitions))
