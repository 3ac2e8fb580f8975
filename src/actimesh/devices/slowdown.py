"""What a device does with the engine's slow-down (messages.SlowDown): believe it only
when it is the engine's, still holds and is newer than the last one; apply it to the
heartbeat only.

**Why a device checks it at all.** The broker's ACL lets only the engine publish on
``engine/slowdown`` (security/acl.py), but a device must not depend on it, as it does not
for commands: a wrong ACL or a leaked service password would otherwise let anyone make
the whole fleet go quiet for as long as they like, every camera's position growing old
just when an incident needs it. So a device applies a slow-down only when it verifies
with the engine key it already trusts for commands (fail closed: no key, no slow-down),
and everything that bounds it is in the signed bytes:

* ``exp``: a slow-down ends by itself. A retained copy that outlives the engine (or an
  engine that died while overloaded) slows nobody for longer than that.
* ``seq``: a device keeps the highest it accepted and refuses a lower one
  (``replayed``): an attacker who captured an earlier "slow" cannot undo a later
  "clear" with it. The same message again (the broker re-sends retained messages on
  every connect) is a repeat, not a refusal. A device that restarts forgets its
  ``seq``; what it can be made to accept then is a genuine, unexpired message, whose
  harm ``exp`` bounds.

**What it changes.** Only the heartbeat, and only upwards: the device reports at
``max(own heartbeat, hb)`` until ``exp``. Motion beyond the dead-band, state changes,
accuracy and speed changes go out at once as before, and trigger events never wait for
telemetry at all. The device announces the heartbeat it uses in each report (``hb``),
so the engine judges its fix by what the device actually promised
(geofence/policy.py), never by what it asked for; and each report keeps the promise
the one before it made, so the first slow heartbeat goes out at the old pace: no fix
goes stale in the gap, and the fleet does not answer a slow-down with a burst of
reports all at once. A device reporting at 1 Hz reports motion-scaled while a
slow-down holds (its reports then carry ``hb``/``db``).

Refusals are counted by reason in :attr:`SlowDownState.refused` and logged; they never
change what the device does.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from actimesh.broker.codec import decode
from actimesh.broker.messages import SlowDown
from actimesh.errors import PayloadError
from actimesh.security.signing import CommandVerifier

__all__ = ["SlowDownState"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SlowDownState:
    """One device's view of the engine's slow-down (module docstring)."""

    agency: str
    #: Counts by outcome: ``accepted``, ``repeated``; refusals by reason code.
    accepted: int = 0
    repeated: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    _current: SlowDown | None = None

    @property
    def current(self) -> SlowDown | None:
        """The last slow-down (or clear) accepted."""
        return self._current

    def heartbeat_s(self, now: float) -> float | None:
        """The heartbeat the engine allows now, or None when no slow-down holds."""
        held = self._current
        if held is None or held.hb is None or now >= held.exp:
            return None
        return held.hb

    def offer(self, payload: bytes, verifier: CommandVerifier | None, now: float) -> str:
        """Take a payload from ``engine/slowdown``; return the outcome (``accepted``,
        ``repeated`` or the refusal's reason code)."""
        if not payload:
            # An empty retained message deletes the retained copy on the broker; it
            # says nothing signed, so the device keeps what it holds until its ``exp``.
            return self._refuse("empty", "empty payload (the retained copy was deleted)")
        if verifier is None:
            return self._refuse("no_engine_key", "no engine key to check it with")
        try:
            message = decode(SlowDown, payload)
            verifier.verify_slowdown(message, agency=self.agency, now=now)
        except PayloadError as exc:
            return self._refuse(exc.reason, exc.detail)
        held = self._current
        if held is not None and message.seq <= held.seq:
            if message == held:
                self.repeated += 1
                return "repeated"
            return self._refuse("replayed", f"seq {message.seq} is not after {held.seq}")
        self._current = message
        self.accepted += 1
        log.info(
            "engine slow-down %s: heartbeat %s until %.0f",
            message.seq,
            "as configured" if message.hb is None else f"{message.hb:g} s",
            message.exp,
        )
        return "accepted"

    def _refuse(self, reason: str, detail: str) -> str:
        self.refused[reason] += 1
        log.warning("engine slow-down refused: %s: %s", reason, detail)
        return reason
