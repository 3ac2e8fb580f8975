"""`actimesh up` with the OsmAnd and NMEA listeners: a supervised child of its own that
publishes each fix on the real broker as the device's telemetry, logged in as
``svc-adapter``, and comes back after a kill."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import aiomqtt
import httpx
import pytest

from actimesh.adapters import AdapterSettings, NmeaSettings, OsmAndSettings, nmea_checksum
from actimesh.broker.codec import decode_telemetry
from actimesh.broker.messages import DeviceState
from actimesh.broker.mosquitto import free_port
from actimesh.broker.topics import Topics
from actimesh.security import SERVICE_ENGINE
from actimesh.security.registry import read_secret
from tests.integration.officers import AGENCY
from tests.integration.up_world import running_up, web_children
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(120)]


def _sentence(body: str) -> bytes:
    return f"${body}*{nmea_checksum(body.encode()):02X}\r\n".encode()


async def test_up_runs_the_listeners_as_a_supervised_child_publishing_telemetry(
    tmp_path: Path,
) -> None:
    osmand_port, nmea_port = free_port(), free_port()
    adapters = AdapterSettings(
        osmand=OsmAndSettings(enabled=True, host="127.0.0.1", port=osmand_port),
        nmea=NmeaSettings(enabled=True, host="127.0.0.1", ports={"cew-stolen": nmea_port}),
    )
    topics = Topics(AGENCY)
    async with running_up(tmp_path, adapters=adapters) as world:
        text = world.out.getvalue()
        assert re.search(rf"adapters osmand http://127\.0\.0\.1:{osmand_port}; nmea", text), text
        children = web_children()
        assert "adapters" in children
        stolen = world.stolen["bwc-stolen"]
        engine_password = read_secret(tmp_path, SERVICE_ENGINE)
        async with aiomqtt.Client(
            "127.0.0.1",
            world.broker_port,
            username=SERVICE_ENGINE,
            password=engine_password,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as watcher:
            await watcher.subscribe(topics.telemetry("bwc-stolen"), qos=0)
            await watcher.subscribe(topics.telemetry("cew-stolen"), qos=0)
            # Killed, it comes back; then a report by OsmAnd and a sentence pair by NMEA.
            os.kill(children["adapters"], signal.SIGKILL)
            await eventually(
                lambda: (
                    web_children().get("adapters", children["adapters"]) != children["adapters"]
                ),
                30,
            )
            now = int(time.time())
            report = {"lat": "51.0447", "lon": "-114.0719", "timestamp": str(now)}
            auth = (stolen.device_id, stolen.password)

            async def accepted() -> bool:
                try:
                    async with httpx.AsyncClient(trust_env=False, timeout=5) as web:
                        r = await web.get(
                            f"http://127.0.0.1:{osmand_port}/", params=report, auth=auth
                        )
                except httpx.TransportError:
                    return False
                return r.status_code == 200

            await eventually(accepted, 30, 0.1)
            when = time.gmtime(now)
            hhmmss, ddmmyy = time.strftime("%H%M%S", when), time.strftime("%d%m%y", when)
            _, modem = await asyncio.open_connection("127.0.0.1", nmea_port)
            modem.write(_sentence(f"GPRMC,{hhmmss},A,5102.682,N,11404.314,W,0,0,{ddmmyy},,"))
            await modem.drain()
            seen: dict[
                str, tuple[float, DeviceState, float | None, float | None, float | None]
            ] = {}
            async with asyncio.timeout(15):
                async for message in watcher.messages:
                    assert isinstance(message.payload, bytes)
                    device = message.topic.value.split("/")[-2]
                    seen[device] = decode_telemetry(message.payload)
                    if {"bwc-stolen", "cew-stolen"} <= set(seen):
                        break
            modem.close()
            await modem.wait_closed()
        assert seen["bwc-stolen"] == (float(now), DeviceState.BUFFERING, 51.0447, -114.0719, None)
        assert seen["cew-stolen"][0] == float(now)
        assert seen["cew-stolen"][2] == pytest.approx(51 + 2.682 / 60)
        # And triggers never stopped.
        await world.draw()
    assert web_children() == {}
