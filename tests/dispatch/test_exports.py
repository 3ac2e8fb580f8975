"""The public surface of ``actimesh.dispatch``."""

from __future__ import annotations

import actimesh.dispatch


def _isort_key(name: str) -> tuple[bool, bool, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions.
    return (not name.isupper(), not name[:1].isupper(), name)


def test_all_is_sorted_and_every_name_resolves() -> None:
    names = actimesh.dispatch.__all__
    assert names == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(actimesh.dispatch, name) is not None
