"""Each device protocol, end to end: a real Mosquitto, the real engine, a camera whose
position arrives only by that protocol, and a TASER draw 9 m away that must start it.

The camera's own agent runs without a GPS fix (it only receives commands), so the one
way the engine can know where it is, is the protocol under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from actimesh.adapters import (
    AdapterSettings,
    FixSink,
    NmeaServer,
    NmeaSettings,
    OsmAndSettings,
    nmea_checksum,
)
from actimesh.adapters.owntracks import owntracks_topic
from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import DeadLetter, DeviceKind, Event, activation_id
from actimesh.broker.transport import MqttTransport
from actimesh.geofence import destination
from actimesh.runtime.adapters import OsmAndServer, run_adapters
from actimesh.runtime.config import Settings
from actimesh.security.certs import init_ca, issue_server
from actimesh.security.registry import Registry
from tests.adapters import samples
from tests.integration.harness import CENTER, HOST, Mesh, mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration

#: Where the camera is: 9 m east of the TASER draw (the rule's radius is 9.144 m).
CAMERA_AT = destination(*CENTER, 90.0, 9.0)
#: Where another camera is, placed by the same protocol: 30 m west, not to be started.
FAR_AT = destination(*CENTER, 270.0, 30.0)


async def _draw(m: Mesh, eid: str) -> set[str]:
    """A TASER draw at the centre by the CEW; the cameras commanded for it (waiting for
    ``bwc``, and then a moment for any other)."""
    lat, lon = CENTER
    event = Event(eid=eid, type="taser_draw", ts=time.time(), lat=lat, lon=lon)
    async with m.client() as cew:
        await cew.publish(m.topics.event("cew"), encode(event), qos=1)
    return await m.commanded(activation_id("cew", eid), {"bwc"})


async def _placed(m: Mesh, device_id: str, at: tuple[float, float] = CAMERA_AT) -> float | None:
    """Wait until the engine's index has ``device_id`` ``at``; its accuracy."""
    engine = m.engine
    assert engine is not None
    await eventually(lambda: device_id in engine.index, timeout=5.0)
    fix = engine.index.get(device_id)
    assert fix is not None
    assert fix.lat == pytest.approx(at[0], abs=1e-6)
    assert fix.lon == pytest.approx(at[1], abs=1e-6)
    return fix.acc


# ---------------------------------------------------------------------------- OwnTracks


async def test_an_owntracks_location_places_the_camera_and_a_draw_starts_it(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, owntracks=True) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=None)
        m.add("far", DeviceKind.BODY_CAM, at=None)
        m.add("cew", DeviceKind.CEW, at=0.0)
        await m.ready()
        assert m.engine is not None
        location = json.loads(samples.OWNTRACKS_ANDROID)
        location.update(lat=CAMERA_AT[0], lon=CAMERA_AT[1], acc=3, tst=int(time.time()))
        far = {**location, "lat": FAR_AT[0], "lon": FAR_AT[1]}
        async with m.client() as phone:
            await phone.publish(owntracks_topic("bwc", "pixel"), json.dumps(location), qos=1)
            await phone.publish(owntracks_topic("bwc", "pixel"), samples.OWNTRACKS_LWT, qos=1)
            await phone.publish(owntracks_topic("far", "iphone"), json.dumps(far), qos=1)
        await _placed(m, "far", FAR_AT)
        assert await _placed(m, "bwc") == 3.0
        assert await _draw(m, "ot-1") == {"bwc"}
        assert m.engine.stats.owntracks == 2
        await eventually(lambda: m.engine is not None and m.engine.stats.owntracks_ignored == 1)


async def test_bad_owntracks_messages_are_dead_lettered_and_nothing_else_moves(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path, owntracks=True) as m:
        m.add("bwc", DeviceKind.BODY_CAM, at=None)
        await m.ready()
        assert m.engine is not None
        stale = json.loads(samples.OWNTRACKS_BOOKLET)  # 2016: far too old to place anyone
        bad = {
            "malformed": b"{not json",
            "unsupported": samples.OWNTRACKS_TRANSITION,
            "invalid": b'{"_type":"location","lat":"51","lon":-114,"tst":1}',
            "too_old": json.dumps(stale).encode(),
        }
        async with m.client() as operator:
            await operator.subscribe(m.topics.all_deadletters, qos=1)
            for payload in bad.values():
                await operator.publish(owntracks_topic("bwc"), payload, qos=1)
            letters: list[DeadLetter] = []
            async with asyncio.timeout(5):
                async for message in operator.messages:
                    assert isinstance(message.payload, bytes)
                    letters.append(decode(DeadLetter, message.payload))
                    if len(letters) == len(bad):
                        break
        assert sorted(letter.reason for letter in letters) == sorted(bad)
        assert {letter.topic for letter in letters} == {owntracks_topic("bwc")}
        assert "bwc" not in m.engine.index
        assert m.engine.stats.owntracks == 0


# ---------------------------------------------------------------------------- listeners


@contextlib.asynccontextmanager
async def _adapters(
    agency: str, port: int, data_dir: Path, adapters: AdapterSettings
) -> AsyncIterator[tuple[FixSink, OsmAndServer | None, NmeaServer | None]]:
    settings = Settings(agency=agency, data_dir=data_dir, adapters=adapters)
    transport = MqttTransport(HOST, port)
    async with run_adapters(settings, transport) as running:
        yield running


def _registered(data_dir: Path, device_id: str) -> str:
    with Registry.open(data_dir) as registry:
        return registry.add(device_id, DeviceKind.BODY_CAM).password


async def test_an_osmand_report_places_the_camera_and_a_draw_starts_it(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    password = _registered(data_dir, "bwc")
    far_password = _registered(data_dir, "far")
    osmand = OsmAndSettings(enabled=True, host=HOST, port=0)
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        _adapters(agency, broker_port, data_dir, AdapterSettings(osmand=osmand)) as running,
    ):
        sink, server, _ = running
        assert server is not None
        m.add("bwc", DeviceKind.BODY_CAM, at=None)
        m.add("far", DeviceKind.BODY_CAM, at=None)
        m.add("cew", DeviceKind.CEW, at=0.0)
        await m.ready()
        url = server.url
        report = {
            "id": "bwc",
            "lat": f"{CAMERA_AT[0]:.7f}",
            "lon": f"{CAMERA_AT[1]:.7f}",
            "timestamp": str(int(time.time())),
            "accuracy": "4.5",
            "batt": "87",
        }
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
            assert (await http.get("/", params=report)).status_code == 401
            wrong = await http.get("/", params=report, auth=("bwc", "not-its-password"))
            assert wrong.status_code == 401
            other = await http.get("/", params={**report, "id": "cew"}, auth=("bwc", password))
            assert other.status_code == 403
            garbled = await http.get("/", params={**report, "lat": "north"}, auth=("bwc", password))
            assert garbled.status_code == 400
            assert m.engine is not None
            assert "bwc" not in m.engine.index
            ok = await http.post("/", data=report, auth=("bwc", password))
            assert ok.status_code == 200, ok.text
            far = {**report, "id": "far", "lat": str(FAR_AT[0]), "lon": str(FAR_AT[1])}
            assert (await http.get("/", params=far, auth=("far", far_password))).status_code == 200
            # A disabled account (quarantined, or `devices disable`) is refused at once.
            with Registry.open(data_dir) as registry:
                assert registry.disable("far", "lost")
            refused = await http.get("/", params=far, auth=("far", far_password))
            assert refused.status_code == 401
        await _placed(m, "far", FAR_AT)
        assert await _placed(m, "bwc") == 4.5
        assert await _draw(m, "osm-1") == {"bwc"}
        assert sink.stats.rejected == {"unauthorized": 4, "invalid": 1}


def _nmea(body: str) -> bytes:
    raw = body.encode()
    return b"$" + raw + b"*" + f"{nmea_checksum(raw):02X}".encode() + b"\r\n"


def _ddmm(value: float, degree_digits: int) -> str:
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    return f"{degrees:0{degree_digits}d}{minutes:08.5f}"


def _fix_sentences(lat: float, lon: float, when: dt.datetime, talker: str) -> list[bytes]:
    hhmmss = when.strftime("%H%M%S") + f".{when.microsecond // 10_000:02d}"
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    position = f"{_ddmm(lat, 2)},{ns},{_ddmm(lon, 3)},{ew}"
    return [
        _nmea(f"{talker}GGA,{hhmmss},{position},1,09,0.8,1045.0,M,-17.0,M,,"),
        _nmea(f"{talker}RMC,{hhmmss},A,{position},0.0,0.0,{when.strftime('%d%m%y')},,,A"),
    ]


async def test_nmea_over_tcp_and_udp_places_the_camera_and_a_draw_starts_it(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    nmea = NmeaSettings(enabled=True, host=HOST, ports={"bwc": 0, "far": 0})
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        _adapters(agency, broker_port, tmp_path / "data", AdapterSettings(nmea=nmea)) as running,
    ):
        sink, _, server = running
        assert server is not None
        port = server.bound["bwc"]
        m.add("bwc", DeviceKind.BODY_CAM, at=None)
        m.add("far", DeviceKind.BODY_CAM, at=None)
        m.add("cew", DeviceKind.CEW, at=0.0)
        await m.ready()
        assert m.engine is not None
        _reader, far = await asyncio.open_connection(HOST, server.bound["far"])
        far.writelines(_fix_sentences(*FAR_AT, dt.datetime.now(dt.UTC), "GP"))
        await far.drain()
        await _placed(m, "far", FAR_AT)
        far.close()
        await far.wait_closed()
        _reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(samples.NMEA_RMC.replace(b"*6A", b"*6B") + b"\r\n")  # garbled
            writer.write(samples.NMEA_GSV + b"\r\n")
            for line in _fix_sentences(*CAMERA_AT, dt.datetime.now(dt.UTC), "GN"):
                writer.write(line)
            await writer.drain()
            # HDOP 0.8 with the documented factor of 5 m.
            assert await _placed(m, "bwc") == pytest.approx(4.0)
            assert await _draw(m, "nmea-1") == {"bwc"}
        finally:
            writer.close()
            await writer.wait_closed()
        assert sink.stats.rejected == {"bad_checksum": 1}
        # The same port by UDP, a second later and a little further east.
        moved = destination(*CENTER, 90.0, 5.0)
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(HOST, port)
        )
        try:
            later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
            udp.sendto(b"".join(_fix_sentences(*moved, later, "GP")))

            def moved_there() -> bool:
                fix = m.engine.index.get("bwc") if m.engine is not None else None
                return fix is not None and fix.lon == pytest.approx(moved[1], abs=1e-6)

            await eventually(moved_there, timeout=5.0)
        finally:
            udp.close()


async def test_the_osmand_listener_speaks_https_with_a_certificate(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    init_ca(certs)
    issue_server(certs)
    data_dir = tmp_path / "data"
    password = _registered(data_dir, "bwc")
    osmand = OsmAndSettings(
        enabled=True,
        host=HOST,
        port=0,
        tls_certfile=certs / "server.pem",
        tls_keyfile=certs / "server.key",
    )
    report = {"lat": "51.0447", "lon": "-114.0719", "timestamp": str(int(time.time()))}
    async with _adapters(agency, broker_port, data_dir, AdapterSettings(osmand=osmand)) as running:
        _, server, _ = running
        assert server is not None
        assert server.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        async with httpx.AsyncClient(verify=trust, timeout=5.0) as https:
            ok = await https.get(server.url + "/", params=report, auth=("bwc", password))
            assert ok.status_code == 200
        async with httpx.AsyncClient(timeout=5.0) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(server.url.replace("https", "http") + "/", params=report)
