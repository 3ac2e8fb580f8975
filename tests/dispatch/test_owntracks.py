"""A device placed only by the OwnTracks app is on the dispatch map like any other: a
real Mosquitto, the real engine and dispatch, and a camera whose own agent has no GPS fix,
so its position can come only from the officer's phone."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from actimesh.adapters import owntracks_topic, parse_owntracks
from actimesh.broker.messages import DeviceKind
from actimesh.geofence import destination
from actimesh.security.registry import Registry
from tests.adapters import samples
from tests.dispatch.conftest import add, api, bearer, running_dispatch
from tests.integration.harness import CENTER, mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration

AT = destination(*CENTER, 45.0, 20.0)


def _location(**changes: Any) -> bytes:
    """The OwnTracks booklet's Android location, moved to ``AT`` and made current."""
    location = json.loads(samples.OWNTRACKS_ANDROID)
    location.update(lat=AT[0], lon=AT[1], acc=4, batt=71, tst=int(time.time()))
    location.update(changes)
    return json.dumps(location).encode()


async def test_a_phone_located_device_is_in_the_device_view_and_on_the_map(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    # The dispatch's registry: "bwc" is this agency's device, "elsewhere" is not.
    with Registry.open(tmp_path / "dispatch") as registry:
        registry.add("bwc", DeviceKind.BODY_CAM, call_sign="1-ADAM-12")
    async with (
        mesh(agency, broker_port, tmp_path, owntracks=True) as m,
        running_dispatch(m, tmp_path, data_dir=tmp_path / "dispatch", owntracks=True) as svc,
    ):
        add(m, "bwc", DeviceKind.BODY_CAM, unit="u1", at=None)
        await m.ready()
        await eventually(lambda: "bwc" in svc.state.devices)
        assert svc.state.devices["bwc"].lat is None  # its own agent knows no position
        newest = _location()
        fix = parse_owntracks(newest)
        assert fix is not None
        async with m.client() as phone:
            await phone.publish(owntracks_topic("bwc", "pixel"), newest, qos=1)
            # The app's last will, an older queued fix and a bad payload change nothing.
            await phone.publish(owntracks_topic("bwc", "pixel"), samples.OWNTRACKS_LWT, qos=1)
            older = _location(lat=CENTER[0], lon=CENTER[1], tst=int(fix.ts) - 30)
            await phone.publish(owntracks_topic("bwc", "pixel"), older, qos=1)
            await phone.publish(owntracks_topic("bwc", "pixel"), b"{not json", qos=1)
            # Another agency's phone on the same broker: not this dispatch's device.
            await phone.publish(owntracks_topic("elsewhere", "pixel"), newest, qos=1)
        await eventually(lambda: svc.feed.rejected["malformed"] == 1)
        await eventually(lambda: svc.state.stats.tracker_unregistered == 1)
        assert "elsewhere" not in svc.state.devices
        await eventually(lambda: svc.state.stats.telemetry_out_of_order == 1)
        async with api(svc, "dispatcher") as client:
            r = await client.get("/api/v1/devices/bwc")
            assert r.status_code == 200, r.text
            doc = r.json()
        assert (doc["lat"], doc["lon"]) == pytest.approx(AT, abs=1e-7)
        assert doc["acc"] == 4.0
        assert doc["batt"] == 71.0
        assert doc["fix_ts"] == fix.ts
        assert doc["stale"] is False
        assert doc["online"] is True
        # The app says nothing of recording: the state the camera reports is kept.
        assert (doc["state"], doc["status"]) == ("buffering", "buffering")
        assert (doc["unit"], doc["kind"], doc["call_sign"]) == ("u1", "body_cam", "1-ADAM-12")
        # The engine placed it too, at the same fix: the map and the decisions agree.
        assert m.engine is not None
        await eventually(lambda: m.engine is not None and "bwc" in m.engine.index)
        placed = m.engine.index.get("bwc")
        assert placed is not None
        assert (placed.lat, placed.lon, placed.acc) == (fix.lat, fix.lon, fix.acc)
        # And the map's device list (the live snapshot) has it where the phone said.
        headers = bearer(svc, "dispatcher")
        async with websockets.connect(svc.ws_url, open_timeout=5, additional_headers=headers) as ws:
            snapshot = json.loads(await ws.recv())
        (shown,) = [d for d in snapshot["devices"] if d["id"] == "bwc"]
        assert (shown["lat"], shown["lon"]) == pytest.approx(AT, abs=1e-7)


async def test_without_owntracks_the_dispatch_does_not_read_the_phone(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        add(m, "bwc", DeviceKind.BODY_CAM, unit="u1", at=None)
        add(m, "ref", DeviceKind.BODY_CAM, unit="u1", at=5.0)
        await m.ready()
        async with m.client() as phone:
            await phone.publish(owntracks_topic("bwc", "pixel"), _location(), qos=1)
            await phone.publish(owntracks_topic("bwc", "pixel"), b"{not json", qos=1)
        sent = time.time()

        # The camera next to it is placed by telemetry sent after the phone's; the phone
        # is not read at all.
        def ref_placed_since() -> bool:
            ref = svc.state.devices.get("ref")
            return ref is not None and ref.fix_ts is not None and ref.fix_ts > sent

        await eventually(ref_placed_since)
        await eventually(lambda: "bwc" in svc.state.devices)
        assert svc.state.devices["bwc"].lat is None
        assert svc.state.stats.tracker_fixes == 0
        assert not svc.feed.rejected
