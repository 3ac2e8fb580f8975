"""How long ``actimesh devices import`` takes for a 1,350-device fleet.

Run from the repository root (about a minute)::

    PYTHONPATH=src .venv/bin/python -m tests.security.time_import

Writes 450 crews (a body camera, a dash camera and a CEW paired with both) to a CSV
file, then times the command, as a separate process, twice: into a data directory with
no broker running (the broker then starts with them), and into one whose managed broker
runs (one Dynamic Security sync and one reload). Not a test: it prints numbers.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from actimesh.broker.mosquitto import free_port
from actimesh.runtime.compose import broker_for
from actimesh.runtime.config import load_settings

CREWS = 450


def fleet_csv(path: Path, crews: int = CREWS) -> Path:
    rows = ["id,kind,unit,call_sign,officer,paired"]
    for u in range(crews):
        unit, sign = f"unit-{u:04d}", f"12A{u}"
        rows += [
            f"bwc-{u:04d},body_cam,{unit},{sign},Cst. {u},",
            f"dash-{u:04d},dash_cam,{unit},{sign},,",
            f"cew-{u:04d},cew,{unit},{sign},Cst. {u},bwc-{u:04d};dash-{u:04d}",
        ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


async def _import(fleet: Path, data_dir: Path) -> float:
    start = time.perf_counter()
    argv = ("-m", "actimesh", "devices", "import", str(fleet), "--data-dir", str(data_dir))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.DEVNULL, env=dict(os.environ)
    )
    if await proc.wait() != 0:
        raise SystemExit(f"import into {data_dir} failed")
    return time.perf_counter() - start


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fleet = fleet_csv(root / "fleet.csv")
        cold = await _import(fleet, root / "cold")
        settings = load_settings(data_dir=root / "cold", broker_port=free_port(), agency="t")
        start = time.perf_counter()
        async with broker_for(settings):
            started = time.perf_counter() - start
        live_settings = load_settings(data_dir=root / "live", broker_port=free_port(), agency="t")
        async with broker_for(live_settings):
            live = await _import(fleet, root / "live")
    lines = (
        f"{CREWS * 3} devices",
        f"import, no broker running      {cold:6.1f} s (the whole command)",
        f"broker start with them         {started:6.1f} s",
        f"import into a running broker   {live:6.1f} s (the whole command, one reload)",
    )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
