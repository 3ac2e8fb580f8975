"""Who is who: call signs and officers from the device registry, for the map and the API.

The registry (``actimesh devices add --call-sign --officer``, or a bulk import) names the
radio call sign of the unit a device rides with and who carries or drives it. A
dispatcher thinks in call signs, not in device ids, so the dispatch reads them from the
registry of its data directory when it starts and again every ``refresh_s`` seconds
(an edit shows within that), and the live state puts them on every device view.
A data directory without a registry (a dispatch beside a remote engine) has no names:
the map shows device ids then.

The same reading gives the set of registered device ids, which decides whose OwnTracks
locations the map takes (their topics carry no agency: another agency's phones on a
shared broker are not this dispatch's devices). Without a registry every one is taken.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from actimesh.dispatch.state import LiveState
from actimesh.errors import SecurityError
from actimesh.security import REGISTRY_NAME, Registry

__all__ = ["Roster", "read_registry", "read_roster"]

log = logging.getLogger(__name__)


def read_roster(data_dir: Path) -> dict[str, tuple[str | None, str | None]]:
    """``{device id: (call sign, officer)}`` of every registered device that has either."""
    return read_registry(data_dir)[0]


def read_registry(
    data_dir: Path,
) -> tuple[dict[str, tuple[str | None, str | None]], frozenset[str] | None]:
    """:func:`read_roster`'s names, and every registered device id (None: no registry)."""
    path = data_dir / REGISTRY_NAME
    if not path.is_file():
        return {}, None
    with Registry(path) as registry:
        devices = registry.devices()
    names = {
        d.device_id: (d.call_sign, d.officer)
        for d in devices
        if d.call_sign is not None or d.officer is not None
    }
    return names, frozenset(d.device_id for d in devices)


class Roster:
    """Keeps ``state``'s names in step with the registry of ``data_dir``."""

    def __init__(self, data_dir: Path, state: LiveState, *, refresh_s: float = 30.0) -> None:
        self.data_dir = data_dir
        self.state = state
        self.refresh_s = refresh_s
        self.failures = 0

    async def load(self) -> None:
        """Read the registry once; a failure is logged and counted, the old names stay."""
        try:
            roster, registered = await asyncio.to_thread(read_registry, self.data_dir)
        except SecurityError:
            self.failures += 1
            log.exception("dispatch: call signs not read from the device registry")
            return
        self.state.set_roster(roster)
        self.state.registered = registered

    async def run(self) -> None:
        """Reload every ``refresh_s`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.load()
