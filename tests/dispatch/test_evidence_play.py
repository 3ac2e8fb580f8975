"""Playing a stored recording in the dispatch: real H.264 from a camera, offloaded to the
store, remuxed to MP4 for a dispatcher (the same frames, timestamps from 0), audited
before a byte is sent; integrators and strangers are refused, and stand-in media that is
not video says so. One test plays it in headless Chromium through the Recordings panel."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.audit import verify_ledger
from actimesh.broker.messages import DeviceKind
from actimesh.devices.h264 import H264Settings, H264Source
from actimesh.devices.media import Segment
from actimesh.devices.recorder import ActivationRecord, RecordingOptions, RecordingStore
from actimesh.dispatch.accounts import Role
from actimesh.evidence.remux import remux_to_mp4
from tests.audit.helpers import T0
from tests.dispatch.conftest import Dispatch, add_user, api, login, running_dispatch
from tests.dispatch.test_browser import browser, until
from tests.evidence.helpers import Env, evidence_store, key_of, record
from tests.integration.harness import mesh

FPS = 15
SMALL = H264Settings(width=320, height=180, fps=FPS)
PASSWORD = "correct horse battery staple"


def h264_recording(
    root: Path, device: str, key: Ed25519PrivateKey, recording: str, aid: str, seconds: int
) -> Path:
    """A stopped, signed recording of ``seconds`` of the test pattern as one H.264
    ``recording.ts``, attached to ``aid``; its folder."""
    source = H264Source(device, SMALL)
    options = RecordingOptions(media=SMALL.media, signing_key=key)
    rec = RecordingStore(root, durable=False).open(
        recording, device, T0, device_kind=DeviceKind.BODY_CAM, options=options
    )
    segs = [
        Segment.of(i, T0 + i, T0 + i + 1, source.render(i, T0 + i, T0 + i + 1))
        for i in range(seconds)
    ]
    rec.attach(ActivationRecord(aid, "e1", "taser_draw", "cew1", T0, 30.0, 1.0, T0), segs[:1])
    for seg in segs[1:]:
        rec.append(seg)
    rec.stop(T0 + seconds)
    return rec.path


def frames_and_duration(data: bytes) -> tuple[str, int, float]:
    """Codec, frames decoded, and seconds from the first frame to the end of the last."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        pts = [f.pts for f in container.decode(stream) if f.pts is not None]
        assert stream.time_base is not None
        return (
            stream.codec_context.name,
            len(pts),
            float((max(pts) - min(pts)) * stream.time_base) + 1 / FPS,
        )


def plays(path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT subject, outcome, body FROM records "
            "WHERE event_type = 'evidence_view' AND outcome = 'played' ORDER BY seq"
        ).fetchall()
    finally:
        db.close()
    return [(subject, outcome, json.loads(body)) for subject, outcome, body in rows]


@contextlib.asynccontextmanager
async def stored(
    agency: str, broker_port: int, tmp_path: Path, seconds: int
) -> AsyncIterator[tuple[Env, Dispatch, bytes]]:
    """A dispatch with evidence routes, bwc1/rec-1 (real H.264, ``seconds`` long) and
    bwc1/syn-1 (synthetic segments) in its store; and rec-1's MPEG-TS as stored."""
    async with (
        evidence_store(tmp_path) as env,
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, evidence=env.service) as svc,
    ):
        key = key_of(env.creds["bwc1"])
        folder = h264_recording(env.camera_root, "bwc1", key, "rec-1", "act-1", seconds)
        ts = (folder / "recording.ts").read_bytes()
        record(env.camera_root, "bwc1", key, "syn-1", "act-2", one_file=False)
        async with env.client("bwc1") as device:
            assert set((await env.offloader(device, "bwc1").run()).stored) == {"rec-1", "syn-1"}
        yield env, svc, ts


async def test_dispatcher_plays_h264_as_mp4_same_frames_audited_before_streaming(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with stored(agency, broker_port, tmp_path, seconds=4) as (env, svc, ts):
        password = await add_user(svc, "kim", Role.DISPATCHER)
        async with api(svc, None) as client:
            await login(client, "kim", password)
            listed = (await client.get("/api/v1/evidence")).json()["recordings"]
            assert {r["recording_id"]: r["playable"] for r in listed} == {
                "rec-1": True,
                "syn-1": False,
            }
            got = await client.get("/api/v1/evidence/bwc1/rec-1/play")
            assert got.status_code == 200, got.text
            assert got.headers["content-type"] == "video/mp4"
            assert int(got.headers["content-length"]) == len(got.content)
            # Audited before anything was streamed: the record is there with the answer.
            assert [(s, o, b["evidence_id"], b["file"]) for s, o, b in plays(env.ledger_path)] == [
                ("kim", "played", "bwc1/rec-1", "recording.ts")
            ]

            codec, frames, duration = frames_and_duration(got.content)
            ts_codec, ts_frames, ts_duration = frames_and_duration(ts)
            assert (codec, ts_codec) == ("h264", "h264")
            assert frames == ts_frames == 4 * FPS
            assert abs(duration - ts_duration) <= 1 / FPS
            with av.open(io.BytesIO(got.content), "r") as mp4:
                assert mp4.format.name.startswith("mov,mp4")
                first = next(mp4.demux(video=0))
                assert first.pts == 0
                assert first.is_keyframe
                assert mp4.duration is not None
                assert abs(mp4.duration / 1e6 - 4.0) <= 1 / FPS

            synthetic = await client.get("/api/v1/evidence/bwc1/syn-1/play")
            assert synthetic.status_code == 415
            assert "not H.264 video" in synthetic.json()["error"]
            assert "\n" not in synthetic.json()["error"]
            assert (await client.get("/api/v1/evidence/bwc1/nope/play")).status_code == 404

        async with api(svc, "integrator") as integrator:
            assert (await integrator.get("/api/v1/evidence/bwc1/rec-1/play")).status_code == 403
        async with api(svc, None) as anonymous:
            assert (await anonymous.get("/api/v1/evidence/bwc1/rec-1/play")).status_code == 401

    # Refused and unplayable calls showed nothing and left no play record.
    assert [(s, o) for s, o, _ in plays(env.ledger_path)] == [("kim", "played")]
    assert verify_ledger(env.ledger_path).ok


def test_remux_of_a_36_s_recording_is_a_stream_copy_in_well_under_a_second(
    tmp_path: Path,
) -> None:
    folder = h264_recording(tmp_path, "bwc1", Ed25519PrivateKey.generate(), "r", "a", 36)
    sink = io.BytesIO()
    began = time.perf_counter()
    with (folder / "recording.ts").open("rb") as source:
        result = remux_to_mp4(source, sink)
    took = time.perf_counter() - began
    assert result.packets == 36 * FPS
    assert abs(result.duration_s - 36.0) <= 1 / FPS
    # A decode and re-encode would take seconds; copying packets takes milliseconds.
    assert took < 1.0, took
    assert frames_and_duration(sink.getvalue())[1] == 36 * FPS


@pytest.mark.integration
async def test_play_button_opens_a_video_chromium_can_load(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        stored(agency, broker_port, tmp_path, seconds=3) as (env, svc, _),
        browser() as b,
    ):
        page = await b.new_page(viewport={"width": 1400, "height": 860})
        page.set_default_timeout(10_000)
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await svc.accounts.add_user("kim", Role.DISPATCHER, PASSWORD)
        await page.goto(svc.url + "/", wait_until="load")
        await page.fill("#login-user", "kim")
        await page.fill("#login-password", PASSWORD)
        await page.click("#login-go")
        await page.wait_for_selector("#app", state="visible")
        await page.click("#rec-btn")
        # Only the H.264 recording has a Play button.
        await page.wait_for_selector("tr[data-evidence='bwc1/rec-1'] button.rec-play")
        assert await page.locator("tr[data-evidence='bwc1/syn-1'] button.rec-play").count() == 0
        await page.click("tr[data-evidence='bwc1/rec-1'] button.rec-play")
        # HAVE_METADATA or better: Chromium demuxed the MP4 and knows the picture size.
        await until(page, "document.querySelector('#rec-video').readyState >= 1")
        size = await page.evaluate(
            "[document.querySelector('#rec-video').videoWidth,"
            " document.querySelector('#rec-video').videoHeight]"
        )
        assert size == [SMALL.width, SMALL.height]
        await until(page, "document.querySelector('#rec-video').readyState >= 2")
        assert await page.locator("#rec-play-msg").inner_text() == ""
        assert problems == []
    assert [(s, b["evidence_id"]) for s, _, b in plays(env.ledger_path)][:1] == [
        ("kim", "bwc1/rec-1")
    ]
