"""What every short fault drill scenario must show, on one broker or on the cluster."""

from __future__ import annotations

from actimesh.drills import FaultResult


def assert_nothing_lost(result: FaultResult, printed: str) -> None:
    """A short run's scenario passed: its 12 triggers each activated, the 48 cameras
    they should reach all recorded, nothing lost or twice, and the ledger verifies."""
    assert result.ok, printed
    assert result.triggers == result.activations == 12
    assert result.expected == result.recorded == 48
    assert result.lost == result.duplicates == 0
    assert result.ledger_ok
