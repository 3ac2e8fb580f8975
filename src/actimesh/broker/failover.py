"""Which broker listener a link tries next, and how long it waits first.

A NATS cluster gives every node an MQTT listener, and a client's persistent session
lives in JetStream (three replicas), not in the node it was connected to: after a node
dies, the same client id on another node finds its subscriptions and the QoS 1
messages queued for it meanwhile. So a link that knows every listener need not wait
for its node to come back; it moves on.

The rule, kept apart from the socket code so that it is tested without a broker:

* every failure (a connection lost, or a connect that did not succeed) moves to the
  next listener, in the order given, wrapping round. The one that just failed is the
  one least likely to answer, and a live one is at most ``len(listeners) - 1`` tries
  away;
* the wait before each try is exponential in the number of failures since the last
  good connection, capped, with full jitter over its upper half (as a single-listener
  link always waited), so a fleet that lost a node together does not arrive at the
  next one together; a good connection resets it;
* with one listener (Mosquitto on one machine) this is exactly the backoff the link
  had before: the same address every time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from actimesh.errors import ConfigError

__all__ = ["Listener", "Rotation"]

#: Doublings of the wait before it stops growing (it is capped by ``max_s`` long before).
_MAX_EXPONENT = 16


@dataclass(frozen=True, slots=True)
class Listener:
    """One MQTT listener a link may connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Rotation:
    """The listener to connect to, and the wait before the next try after a failure.

    ``uniform`` draws the jitter (``random.uniform`` unless a test fixes it)."""

    def __init__(
        self,
        listeners: Sequence[Listener],
        *,
        initial_s: float,
        max_s: float,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not listeners:
            raise ConfigError("a link needs at least one broker address")
        if len(set(listeners)) != len(listeners):
            raise ConfigError(
                f"broker addresses repeated ({', '.join(map(str, listeners))}): name each once"
            )
        self.listeners = tuple(listeners)
        self.initial_s = initial_s
        self.max_s = max_s
        self._uniform = uniform
        self._index = 0
        self._failures = 0

    @property
    def current(self) -> Listener:
        """Where the next connection goes."""
        return self.listeners[self._index]

    def connected(self) -> None:
        """A connection succeeded: the next failure waits the shortest time again."""
        self._failures = 0

    def failed(self) -> float:
        """The connection to :attr:`current` failed or was lost: move to the next
        listener and return how long to wait before trying it."""
        delay = min(self.max_s, self.initial_s * 2 ** min(self._failures, _MAX_EXPONENT))
        self._failures += 1
        self._index = (self._index + 1) % len(self.listeners)
        return self._uniform(delay / 2, delay)
