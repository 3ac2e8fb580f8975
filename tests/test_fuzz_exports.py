from __future__ import annotations

import actimesh.fuzz


def test_all_is_sorted_and_complete() -> None:
    names = actimesh.fuzz.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(actimesh.fuzz, name), name
