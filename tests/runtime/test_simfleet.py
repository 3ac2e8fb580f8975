"""A second `actimesh up` with another simulated fleet: the devices of the first that are
gone leave no retained presence for the engine to refuse."""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from actimesh.broker.mosquitto import free_port
from actimesh.devices.simulator import SimSettings
from actimesh.runtime.config import load_settings
from tests.runtime.test_compose import RECORDED, recording_console, run_up_until


def _recorded(out: io.StringIO) -> bool:
    return RECORDED in out.getvalue()


@pytest.mark.time_limit(120)
async def test_a_second_start_with_another_fleet_refuses_no_unregistered_presence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(data_dir=tmp_path, broker_port=free_port(), agency="second")
    settings = replace(
        settings,
        dispatch=replace(settings.dispatch, enabled=False),
        evidence=replace(settings.evidence, port=0),
    )
    # Four crews of seed 3, then two of seed 1: most of the first fleet's devices go.
    first = SimSettings(units=4, seed=3, incident_every_s=1.0, stop_after_s=2.0)
    second = SimSettings(units=2, seed=1, incident_every_s=1.0, stop_after_s=2.0)
    for sim in (first, second):
        caplog.clear()
        console, out = recording_console()
        await run_up_until(settings, sim, console, functools.partial(_recorded, out))
        refused = [r.getMessage() for r in caplog.records if "unregistered" in r.getMessage()]
        assert refused == []
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []
