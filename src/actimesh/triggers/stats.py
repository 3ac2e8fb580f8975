"""The engine's counters: what metrics, the terminal view, the drills and tests read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["EngineStats"]


@dataclass(slots=True)
class EngineStats:
    """Counters for metrics, the terminal view and tests."""

    telemetry: int = 0
    events: int = 0
    activations: int = 0  # activations this engine wrote to the ledger first
    duplicates: int = 0  # repeats of an event already handled here or by a replica
    commands: int = 0
    command_failures: int = 0
    acks: int = 0
    presence: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    deadletters_suppressed: int = 0
    ledger_failures: int = 0
    confirmations: int = 0
    retries: int = 0
    alerts: Counter[str] = field(default_factory=Counter)
    merged: int = 0  # triggers that joined the activation they repeat (storm control)
    #: Refusals by cameras that could not verify a command (forged ones provoke them).
    unverified_refusals: int = 0
    #: Dedupe questions the ledger answered because the memory had forgotten.
    ledger_lookups: int = 0
    #: Cameras whose officer cancelled the activation as false (``cancelled`` acks).
    false_activations: int = 0
    #: Answers from cameras their activation did not command: counted, never written
    #: (not dead-lettered either: one per ack of a flood would be a flood of its own).
    acks_not_commanded: int = 0
    #: Refused answers written again because their activation was in the ledger by the
    #: time the refusal was looked at (it was committed between the check and the look).
    acks_rechecked: int = 0
    #: Devices disabled for flooding refused messages, and quarantines not queued
    #: (the queue was full) or not carried out.
    quarantined: int = 0
    quarantines_failed: int = 0
    #: Telemetry batches that waited for a control batch being handled (intake.py).
    telemetry_deferred: int = 0
    #: Position fixes dropped because their device sent them over its rate.
    telemetry_over_rate: int = 0
    #: Device messages whose handling raised something unexpected (logged).
    handler_errors: int = 0
    #: Alerts not raised because their queue was full (a thousand waiting).
    alerts_dropped: int = 0
    #: OwnTracks locations taken (also counted in ``telemetry``), and OwnTracks
    #: messages with nothing to do (the app's last will).
    owntracks: int = 0
    owntracks_ignored: int = 0
    #: Geographic partitions (triggers/partitions.py): trigger events left to the
    #: partition that owns their position; raw fixes this engine relayed, the copies it
    #: published (one per partition that must hold the fix: more than ``relayed`` by
    #: the halo's share), those it could place by no fix (sent to the device's home
    #: partition), and those dropped because the relay's own link was down.
    events_elsewhere: int = 0
    relayed: int = 0
    relay_copies: int = 0
    relay_unplaced: int = 0
    relay_dropped: int = 0
    #: Cameras an activation considered and left out, by reason (``stale``,
    #: ``too_far``, ``offline``...): how an overloaded intake that let fixes go stale
    #: shows, since those cameras get no command.
    left_out: Counter[str] = field(default_factory=Counter)
    #: Events with no position of their own and no fresh fix of their source or its
    #: pairings: only the paired cameras are commanded, nobody is left out by distance.
    events_without_position: int = 0
    #: Follow-ups (triggers/followup.py): cameras left out ``stale`` held for a fix
    #: after the event; of them, those commanded in follow-up activations, judged not
    #: within, let go at the deadline with no fix, and refused over the bounds;
    #: ``follow_up_silent``: held ones whose device was not heard at all, held longer
    #: (``follow_up_silent_s``).
    follow_up_held: int = 0
    follow_up_silent: int = 0
    follow_up_commanded: int = 0
    follow_up_activations: int = 0
    follow_up_too_far: int = 0
    follow_up_expired: int = 0
    follow_up_refused: int = 0

    #: The slow-down (triggers/slowdown.py): whether this engine is asking devices to
    #: report more slowly now, the positions it shed a second over the last window, and
    #: the signed slow-downs (requests, renewals, clears) it published.
    slowdown_active: bool = False
    telemetry_shed_per_s: float = 0.0
    slowdowns_sent: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())
