"""Failed logins, limited per name and client address with growing lock-outs.

Shared by the dispatch's logins and the evidence listener's HTTP Basic checks: both
must stop guessing before the costly password hash runs, and neither may let a stranger
lock a user or a device out by failing on purpose.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

__all__ = ["LoginLimiter"]


class LoginLimiter:
    """Failed logins per user name *from one client address*, and per address.

    Keyed on the name alone, a limit lets anyone who knows a dispatcher's user name lock
    them out by failing on purpose. So a name is limited per address: ``per_user``
    failures within ``window_s`` lock that name from that address only, for ``window_s``,
    doubling with each lock-out in a row (up to ``max_lockout_s``); a success ends the
    streak. ``per_client`` failures within the window lock the address out for every
    name, which bounds guessing many names from one place.

    An attempt counts as a failure from the moment it starts until it succeeds, so a
    burst of parallel guesses is limited as well as a sequence. Memory is bounded: the
    least recently seen keys are forgotten first.
    """

    def __init__(
        self,
        *,
        per_user: int,
        per_client: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
        max_lockout_s: float = 24 * 3600.0,
    ) -> None:
        self.per_user = per_user
        self.per_client = per_client
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        self.max_lockout_s = max_lockout_s
        self._pairs: OrderedDict[str, deque[float]] = OrderedDict()
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        # Per (name, address): lock-outs in a row, and until when the current one holds.
        self._locks: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._announced: OrderedDict[str, float] = OrderedDict()

    @staticmethod
    def _pair(user: str, client: str) -> str:
        return f"{user}\n{client}"

    def _bounded(self, table: OrderedDict[str, Any]) -> None:
        while len(table) > self.max_keys:
            table.popitem(last=False)

    def _recent(self, table: OrderedDict[str, deque[float]], key: str, now: float) -> deque[float]:
        times = table.get(key)
        if times is None:
            times = table[key] = deque()
            self._bounded(table)
        table.move_to_end(key)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def blocked_for(self, user: str, client: str) -> float:
        """Seconds until this user name may be tried again from this client (0: now)."""
        now = self.clock()
        waits = [0.0]
        _, until = self._locks.get(self._pair(user, client), (0, 0.0))
        waits.append(until - now)
        times = self._recent(self._clients, client, now)
        if len(times) >= self.per_client:
            waits.append(times[-self.per_client] + self.window_s - now)
        return max(waits)

    def first_refusal(self, user: str, client: str, wait: float) -> bool:
        """True once per lock-out (so the audit trail gets one record, not thousands)."""
        now = self.clock()
        key = self._pair(user, client)
        if self._announced.get(key, -math.inf) > now:
            return False
        self._announced[key] = now + wait
        self._bounded(self._announced)
        return True

    def begin(self, user: str, client: str) -> float:
        """An attempt starts; counted as a failure until :meth:`succeeded`."""
        now = self.clock()
        pair = self._pair(user, client)
        times = self._recent(self._pairs, pair, now)
        times.append(now)
        self._recent(self._clients, client, now).append(now)
        if len(times) >= self.per_user:
            # A lock-out: the next one in a row lasts twice as long.
            streak, _ = self._locks.get(pair, (0, 0.0))
            hold = min(self.window_s * 2**streak, self.max_lockout_s)
            self._locks[pair] = (streak + 1, now + hold)
            self._locks.move_to_end(pair)
            self._bounded(self._locks)
            times.clear()
        return now

    def succeeded(self, user: str, client: str, started: float) -> None:
        """The attempt that began at ``started`` succeeded: it was not a failure, and the
        name's earlier failures and lock-outs from this address are forgiven."""
        pair = self._pair(user, client)
        self._pairs.pop(pair, None)
        self._locks.pop(pair, None)
        with contextlib.suppress(KeyError, ValueError):
            self._clients[client].remove(started)
