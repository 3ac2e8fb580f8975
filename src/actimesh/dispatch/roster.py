"""Who is who: call signs and officers from the device registry, for the map and the API.

The registry (``actimesh devices add --call-sign --officer``, or a bulk import) names the
radio call sign of the unit a device rides with and who carries or drives it. A
dispatcher thinks in call signs, not in device ids, so the dispatch reads them from the
registry of its data directory when it starts and again every ``refresh_s`` seconds
(an edit shows within that), and the live state puts them on every device view.
A data directory without a registry (a dispatch beside a remote engine) has no names:
the map shows device ids then.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from actimesh.dispatch.state import LiveState
from actimesh.errors import SecurityError
from actimesh.security import REGISTRY_NAME, Registry

__all__ = ["Roster", "read_roster"]

log = logging.getLogger(__name__)


def read_roster(data_dir: Path) -> dict[str, tuple[str | None, str | None]]:
    """``{device id: (call sign, officer)}`` of every registered device that has either."""
    path = data_dir / REGISTRY_NAME
    if not path.is_file():
        return {}
    with Registry(path) as registry:
        return {
            d.device_id: (d.call_sign, d.officer)
            for d in registry.devices()
            if d.call_sign is not None or d.officer is not None
        }


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
            roster = await asyncio.to_thread(read_roster, self.data_dir)
        except SecurityError:
            self.failures += 1
            log.exception("dispatch: call signs not read from the device registry")
            return
        self.state.set_roster(roster)

    async def run(self) -> None:
        """Reload every ``refresh_s`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.load()
