"""A real outside client, Debian's ``mosquitto_sub``, reads the JSON activation feed."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from actimesh.broker.messages import DeviceKind, activation_id
from tests.dispatch.conftest import add
from tests.integration.harness import mesh

pytestmark = pytest.mark.integration


async def test_mosquitto_sub_receives_an_activation_as_json(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    sub = shutil.which("mosquitto_sub")
    if sub is None:
        pytest.fail(
            "mosquitto_sub is missing: run `make system-deps` (apt-get install mosquitto-clients)",
            pytrace=False,
        )
    async with mesh(agency, broker_port, tmp_path) as m:
        add(m, "bwc", DeviceKind.BODY_CAM, unit="u1", at=2.0)
        add(m, "gw", DeviceKind.GATEWAY, unit="u1", at=0.0)
        await m.ready()
        # Line-buffered, so its debug lines arrive as they happen, not at exit.
        argv = [
            "stdbuf",
            "-oL",
            sub,
            "-h",
            "127.0.0.1",
            "-p",
            str(broker_port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            f"am/v1/{agency}/json/activations/#",
            "-C",
            "1",
            "-W",
            "10",
            "-d",
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(10):
                # -d prints the protocol exchange: trigger once the subscription is in.
                while "SUBACK" not in (line := (await proc.stdout.readline()).decode()):
                    assert line, f"mosquitto_sub ended early: {lines}"
                    lines.append(line)
                event = await m.agents["gw"].raise_event("emergency_lights")
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, out.decode()
    payloads = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    (payload,) = payloads
    record = json.loads(payload)
    assert record["aid"] == activation_id("gw", event.eid)
    assert record["type"] == "emergency_lights"
    assert record["src"] == "gw"
    assert [c["id"] for c in record["cameras"]] == ["bwc"]
