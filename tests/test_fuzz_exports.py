"""The fuzz package's public surface (ruff's RUF022 keeps ``__all__`` sorted)."""

from __future__ import annotations

import actimesh.fuzz


def test_every_exported_name_exists_once() -> None:
    names = actimesh.fuzz.__all__
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(actimesh.fuzz, name), name
