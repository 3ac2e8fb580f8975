"""`actimesh up` with a simulated fleet: everything starts, and everything stops."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from actimesh.audit import verify_ledger
from actimesh.broker.mosquitto import free_port
from actimesh.devices.simulator import SimSettings
from actimesh.geofence import InclusionMode
from actimesh.runtime import policy_line, run_up
from actimesh.runtime.config import Settings, load_settings
from tests.waiting import eventually

#: What ``up`` prints once a camera has committed its pre-event buffer.
RECORDED = "recording, pre-roll 30.0 s"


def recording_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, highlight=False), out


async def run_up_until(
    settings: Settings, sim: SimSettings, console: Console, done: Callable[[], bool]
) -> None:
    """Run ``up`` until ``done()`` (a camera has recorded), then stop it as Ctrl-C would:
    a fixed window failed on a busy machine before the first camera recorded."""
    up = asyncio.create_task(run_up(settings, sim, console), name="up-under-test")
    try:
        await eventually(lambda: done() or up.done(), timeout=45)
    finally:
        up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await up


async def test_up_runs_broker_engine_and_fleet_then_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = load_settings(data_dir=tmp_path, broker_port=port, agency="citytest")
    settings = replace(
        settings,
        dispatch=replace(settings.dispatch, port=0),
        evidence=replace(settings.evidence, port=0),
    )
    sim = SimSettings(units=3, incident_every_s=1.0, seed=7, stop_after_s=2.0)
    console, out = recording_console()
    await run_up_until(
        settings, sim, console, lambda: "recording, pre-roll 30.0 s" in out.getvalue()
    )
    text = out.getvalue()
    # Nothing went wrong along the way (e.g. retention starting before the recordings).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert f"mqtt://127.0.0.1:{port} (managed Mosquitto)" in text
    assert "3 units" in text
    assert "emergency_lights" in text
    assert f"policy   {policy_line(settings.policy)}" in text
    assert RECORDED in text
    assert (tmp_path / "ledger.sqlite3").exists()
    assert any((tmp_path / "recordings").iterdir())
    # The managed broker is gone with the command.
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


async def test_up_keeps_the_ledger_in_postgresql_given_a_ledger_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, postgres_url: str, agency: str
) -> None:
    # Trust authentication ignores the password: here it only has to stay unseen.
    url = postgres_url.replace("postgres@", "postgres:hunter2@")
    port = free_port()
    settings = load_settings(data_dir=tmp_path, broker_port=port, agency=agency, ledger_url=url)
    settings = replace(
        settings,
        dispatch=replace(settings.dispatch, port=0),
        evidence=replace(settings.evidence, port=0),
    )
    sim = SimSettings(units=3, incident_every_s=1.0, seed=7, stop_after_s=2.0)
    console, out = recording_console()
    await run_up_until(
        settings, sim, console, lambda: "recording, pre-roll 30.0 s" in out.getvalue()
    )
    text = out.getvalue()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert f"ledger {postgres_url}" in text  # the banner names it, without the password
    assert "hunter2" not in text + caplog.text
    assert RECORDED in text
    assert not (tmp_path / "ledger.sqlite3").exists()
    report = verify_ledger(url, agency=agency)
    assert report.ok, report.findings
    assert report.records > 0
    assert "hunter2" not in str(report.path)


def test_the_banner_states_the_inclusion_policy_in_force() -> None:
    inclusive = load_settings()
    assert policy_line(inclusive.policy) == (
        "inclusive (each rule's radius plus the fixes' reported accuracy, margin at most "
        "6 m; fixes older than 10 s not trusted)"
    )
    centre = replace(
        inclusive.policy, mode=InclusionMode.CENTRE, max_fix_age_s=5.0, max_margin_m=2.5
    )
    assert policy_line(centre) == (
        "centre (each rule's radius exactly, no accuracy margin; fixes older than 5 s not trusted)"
    )
    wider = replace(inclusive.policy, max_margin_m=2.5)
    assert "margin at most 2.5 m" in policy_line(wider)
