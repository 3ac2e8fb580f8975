"""The engine's memory of the events it handled: replays and redeliveries are not new.

A device re-sends an event until it is confirmed, the broker redelivers what was not
acknowledged, and an attacker may replay what it recorded. Each (device, event id) maps
to its activation id, so a repeat is confirmed again (if the original is durable) and
never planned twice. The memory is bounded (``dedupe_memory``); once it has had to
forget, an event it does not know is looked up in the ledger, which keeps every event
recorded, and the event age limit refuses anything older: a replay cannot slip between.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from actimesh.errors import LedgerError
from actimesh.ledger import Ledger
from actimesh.triggers.stats import EngineStats

__all__ = ["Dedupe", "EventKey"]

log = logging.getLogger(__name__)

#: (source device, event id)
EventKey = tuple[str, str]


class Dedupe:
    """(source, event id) -> activation id, and which activations are durable."""

    def __init__(self, ledger: Ledger, capacity: int, stats: EngineStats) -> None:
        self._ledger = ledger
        self._capacity = capacity
        self._stats = stats
        self._seen: OrderedDict[EventKey, str] = OrderedDict()
        # Set once the memory has forgotten an event: from then on an event it does not
        # know is looked up in the ledger before it is planned.
        self._forgot = False
        # Activations written to the ledger: only those may be confirmed to a device.
        self._durable: set[str] = set()
        # A merged trigger's own activation id -> the activation it joined.
        self._aliases: dict[str, str] = {}
        # Activations planned here whose ledger write has not finished: their cameras'
        # answers wait for it however long it takes (answers.py).
        self._writing: set[str] = set()

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def durable_count(self) -> int:
        return len(self._durable)

    async def lookup(self, key: EventKey) -> str | None:
        """The activation id of an event handled before, from memory or the ledger."""
        seen = self._seen.get(key)
        if seen is not None or not self._forgot:
            return seen
        # The memory had to forget: the ledger still knows every event recorded, and
        # the age limit refuses anything older, so a replay cannot slip between them.
        self._stats.ledger_lookups += 1
        try:
            found = await self._ledger.find(*key)
        except LedgerError:
            # Unanswered: plan it. The ledger's unique (device, event) key keeps the
            # record single and cameras dedupe the activation id.
            log.exception("dedupe lookup of %s from %s failed", key[1], key[0])
            return None
        if found is not None:
            self.remember(key, found, durable=True)
        return found

    def remember(self, key: EventKey, aid: str, *, durable: bool = False) -> None:
        self._seen[key] = aid
        if durable:
            self._durable.add(aid)
        else:
            self._writing.add(aid)
        if len(self._seen) > self._capacity:
            _, oldest = self._seen.popitem(last=False)
            self._durable.discard(oldest)
            self._writing.discard(oldest)
            self._aliases.pop(oldest, None)
            self._forgot = True

    def writing(self, aid: str) -> bool:
        """Whether ``aid`` was planned here and its ledger write has not finished (its
        commands left before it, and the write may come seconds later)."""
        return aid in self._writing

    def forget(self, key: EventKey) -> None:
        """Its ledger write failed: the device's re-send is handled afresh."""
        self._seen.pop(key, None)

    def is_durable(self, aid: str) -> bool:
        return aid in self._durable

    def durable(self, aid: str) -> None:
        """``aid`` is in the ledger: repeats of it may be confirmed."""
        self._durable.add(aid)
        self._writing.discard(aid)

    def not_durable(self, aid: str) -> None:
        self._durable.discard(aid)
        self._writing.discard(aid)

    def merged(self, aid: str, into: str) -> None:
        """The trigger whose own activation id is ``aid`` joined activation ``into``."""
        self._durable.add(aid)
        self._writing.discard(aid)
        self._aliases[aid] = into

    def activation_of(self, aid: str) -> str:
        """The activation a repeat is confirmed with: the one it joined, or its own."""
        return self._aliases.get(aid, aid)

    async def recover(self, since: float) -> None:
        """After a restart: every event recorded since ``since`` is known and durable."""
        for source, eid, aid in await self._ledger.recent_events(since):
            self.remember((source, eid), aid, durable=True)
