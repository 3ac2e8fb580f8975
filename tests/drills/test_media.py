"""`actimesh drill --media real`, run in full: live H.264 with the whole 30 s of pre-roll
as filmed, offload over HTTP, verification in the store, case-linked retention.

It takes about 40 s of real time (the buffers must fill for real). The evidence it leaves
in the data directory is checked here independently of the drill's own report.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import av
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console

from actimesh import cli
from actimesh.audit import verify_ledger
from actimesh.devices.manifest import verify_manifest
from actimesh.drills.media import CASE_ID, PRE_ROLL_S, run_media_drill
from actimesh.security.registry import Registry

pytestmark = pytest.mark.integration


async def test_media_drill_records_offloads_verifies_and_retains_real_h264(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    report = await run_media_drill(Console(file=out, width=160), root=tmp_path)
    text = out.getvalue()
    assert report.ok, text
    assert "media drill passed" in text
    recorded = [c for c in report.cameras if c.recording_id is not None]
    assert {c.device_id for c in recorded} == {"a-bwc", "a-bwc5m", "a-dash7m", "b-bwc"}
    far = next(c for c in report.cameras if c.device_id == "a-bwc40m")
    assert not far.commanded
    for cam in recorded:
        assert cam.first_minus_event_s <= -PRE_ROLL_S
        assert cam.duration_s >= PRE_ROLL_S + 3
        assert cam.filled_segments == 0
        assert cam.verified
        assert cam.stored_verified
        assert cam.offloaded
    assert report.wall_s < 90

    # What is left, checked from the files: the case-linked recording only, signed by the
    # key the registry holds, decodable, and nothing on the cameras.
    assert not any(p.is_dir() for p in (tmp_path / "recordings").glob("*/*"))
    kept = sorted(p for p in (tmp_path / "evidence").glob("*/*") if p.is_dir())
    assert [p.parent.name for p in kept] == ["b-bwc"]
    with Registry.open(tmp_path) as registry:
        public = registry.get("b-bwc").public_key
    check = verify_manifest(kept[0], Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)))
    assert check.ok, check.problems
    with av.open(str(kept[0] / "recording.ts")) as container:
        frames = sum(1 for _ in container.decode(container.streams.video[0]))
    assert frames >= (PRE_ROLL_S + 3) * 10
    assert verify_ledger(tmp_path / "ledger.sqlite3").ok
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    try:
        deletions = db.execute(
            "SELECT subject FROM records WHERE event_type = 'retention_delete' ORDER BY subject"
        ).fetchall()
        links = db.execute("SELECT case_id FROM case_links").fetchall()
    finally:
        db.close()
    assert [s.split("/")[0] for (s,) in deletions] == ["a-bwc", "a-bwc5m", "a-dash7m"]
    assert links == [(CASE_ID,)]


def test_media_and_fault_drills_do_not_combine(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["drill", "--media", "real", "--faults"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "run one at a time" in err
