"""The drills package's public surface (ruff's RUF022 keeps ``__all__`` sorted)."""

from __future__ import annotations

import subprocess
import sys

import actimesh.drills


def test_every_exported_name_exists_once() -> None:
    names = actimesh.drills.__all__
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(actimesh.drills, name), name


def test_importing_the_package_does_not_load_pyav() -> None:
    """Only ``--media real`` films: the other drills must not pay for loading PyAV."""
    probe = "import sys, actimesh.drills; print('av' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
