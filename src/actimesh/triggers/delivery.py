"""Delivery tracking: every commanded camera until it says it is recording.

A camera answers each command twice: ``received`` at once, then ``recording`` (with the
pre-roll it kept) or ``refused``. Until the final answer the engine re-sends the
command with exponential backoff, but only while the camera is online: an offline
camera's persistent session already holds the command in the broker, and piling copies
there helps no one. Re-sending stops at the final answer, not at ``received``, because
a camera answers a repeated command with the answers it gave (``received`` and its
final one) and that is the only way back for a final answer lost after the camera's
broker took it: a Mosquitto killed before it saved a session it made since its last
save drops what it took for that session's subscriber, and the camera, holding its
PUBACK, never sends it again.

A camera that has not finished within the acknowledgement timeout raises one
``no_ack`` alert for dispatch; a command that outlives its expiry raises ``expired``.
Re-sending is safe because cameras dedupe by activation id.

Any answer but ``received`` finishes a delivery, ``cancelled`` included: the officer
cancelled the activation on the camera as a false one, which is that camera's final
word on it. It is neither re-sent nor alerted on.

Pure and clock-driven: the engine feeds it events and performs the actions it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from actimesh.broker.messages import AckStatus

__all__ = ["Action", "ActionKind", "Delivery", "DeliveryTracker"]


class ActionKind(StrEnum):
    RETRY = "retry"
    ALERT_NO_ACK = "no_ack"
    EXPIRED = "expired"


@dataclass(slots=True)
class Delivery:
    """One command to one camera, until the camera finishes with it."""

    aid: str
    device_id: str
    payload: bytes
    commanded_at: float
    expires_at: float
    next_retry_at: float
    attempts: int = 1
    received: bool = False
    alerted: bool = False
    #: The camera said it could not verify a command with this id (alerted once).
    unverified: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    delivery: Delivery


class DeliveryTracker:
    """Outstanding commands by (activation id, camera)."""

    def __init__(self, *, ack_timeout_s: float = 3.0, retry_max_s: float = 30.0) -> None:
        self.ack_timeout_s = ack_timeout_s
        self.retry_max_s = retry_max_s
        self._pending: dict[tuple[str, str], Delivery] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def get(self, aid: str, device_id: str) -> Delivery | None:
        return self._pending.get((aid, device_id))

    def track(
        self, aid: str, device_id: str, payload: bytes, *, now: float, expires_at: float
    ) -> None:
        """A command was sent (again, after a restart, is fine: the first one stays)."""
        key = (aid, device_id)
        if key not in self._pending:
            self._pending[key] = Delivery(
                aid, device_id, payload, now, expires_at, now + self.ack_timeout_s
            )

    def on_ack(self, aid: str, device_id: str, status: AckStatus) -> Delivery | None:
        """Apply a camera's answer; returns the delivery when this answer finishes it
        (``recording``, ``refused`` or ``cancelled``)."""
        key = (aid, device_id)
        delivery = self._pending.get(key)
        if delivery is None:
            return None
        if status is AckStatus.RECEIVED:
            delivery.received = True
            return None
        del self._pending[key]
        return delivery

    def expedite(self, device_id: str, now: float) -> None:
        """``device_id`` is back online: re-send at once what it has not received."""
        for d in self._pending.values():
            if d.device_id == device_id and not d.received:
                d.next_retry_at = now

    def due(self, now: float, is_online: Callable[[str], bool]) -> list[Action]:
        """What to do now: re-send, alert, or give up on expired commands."""
        actions: list[Action] = []
        for key, d in list(self._pending.items()):
            if now >= d.expires_at:
                del self._pending[key]
                actions.append(Action(ActionKind.EXPIRED, d))
                continue
            if not d.alerted and now - d.commanded_at >= self.ack_timeout_s:
                d.alerted = True
                actions.append(Action(ActionKind.ALERT_NO_ACK, d))
            if now >= d.next_retry_at and is_online(d.device_id):
                d.attempts += 1
                backoff = self.ack_timeout_s * 2 ** (d.attempts - 1)
                d.next_retry_at = now + min(self.retry_max_s, backoff)
                actions.append(Action(ActionKind.RETRY, d))
        return actions
