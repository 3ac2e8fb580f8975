"""`actimesh up` runs the evidence store: it prints the upload address, a registered
camera offloads there, and the dispatch lists and serves what it stored."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from actimesh.broker.messages import DeviceKind
from actimesh.broker.mosquitto import free_port
from actimesh.devices.offload import Offloader
from actimesh.runtime import run_up
from actimesh.runtime.config import load_settings
from actimesh.security.registry import Registry
from tests.evidence.helpers import key_of, record
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def test_up_serves_uploads_and_dispatch_lists_and_downloads_them(tmp_path: Path) -> None:
    with Registry.open(tmp_path) as registry:
        creds = registry.add("bwc9", DeviceKind.BODY_CAM)
    settings = load_settings(data_dir=tmp_path, broker_port=free_port(), agency="evid")
    settings = replace(
        settings,
        dispatch=replace(settings.dispatch, port=0),
        evidence=replace(settings.evidence, port=0),
    )
    out = io.StringIO()
    task = asyncio.create_task(run_up(settings, None, Console(file=out, width=200)), name="up")
    try:
        await eventually(lambda: "Ctrl-C" in out.getvalue(), timeout=30)
        text = out.getvalue()
        upload = re.search(r"evidence (http://127\.0\.0\.1:\d+)/api/v1/evidence/uploads", text)
        dispatch = re.search(r"dispatch (http://127\.0\.0\.1:\d+)", text)
        admin = re.search(r"user admin, password (\S+)\n", text)
        assert upload is not None, text
        assert dispatch is not None, text
        assert admin is not None, text
        assert str(tmp_path / "evidence") in text

        camera = tmp_path / "camera"
        folder = record(camera, "bwc9", key_of(creds), "rec-1", None)
        expected = hashlib.sha256((folder / "recording.ts").read_bytes()).hexdigest()
        async with httpx.AsyncClient(
            base_url=upload.group(1), auth=("bwc9", creds.password), timeout=10, trust_env=False
        ) as device:
            report = await Offloader(device, root=camera, device_id="bwc9").run()
        assert "rec-1" in report.stored, report.kept
        assert not folder.exists()

        async with httpx.AsyncClient(
            base_url=dispatch.group(1), timeout=10, trust_env=False
        ) as web:
            r = await web.post(
                "/api/v1/session", json={"username": "admin", "password": admin.group(1)}
            )
            assert r.status_code == 200, r.text
            listed = (await web.get("/api/v1/evidence")).json()["recordings"]
            assert [(x["evidence_id"], x["bytes"]) for x in listed] == [
                ("bwc9/rec-1", (tmp_path / "evidence/bwc9/rec-1/recording.ts").stat().st_size)
            ]
            got = await web.get("/api/v1/evidence/bwc9/rec-1/files/recording.ts")
            assert got.status_code == 200
            assert hashlib.sha256(got.content).hexdigest() == expected
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
