"""What importing the drills costs."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_does_not_load_pyav() -> None:
    """Only ``--media real`` films: the other drills must not pay for loading PyAV."""
    probe = "import sys, actimesh.drills; print('av' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
