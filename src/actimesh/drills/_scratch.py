"""Where a drill keeps its broker, ledger and recordings.

A drill is a self-check, so by default it leaves nothing behind; an operator who wants
to look at the evidence afterwards names a folder, and that folder is kept.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["scratch_dir"]


@contextlib.contextmanager
def scratch_dir(path: Path | None) -> Iterator[Path]:
    """``path`` if given (created, and kept), else a temporary folder removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="actimesh-drill-") as tmp:
        yield Path(tmp)
