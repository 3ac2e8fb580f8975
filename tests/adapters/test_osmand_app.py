"""The OsmAnd listener's app and the sink behind it, on the in-memory bus: what each
kind of request gets back, what reaches the broker, and what is dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from actimesh.adapters import FixSink, create_osmand_app
from actimesh.adapters.osmand import OSMAND_MAX_BODY
from actimesh.broker.codec import decode, decode_telemetry
from actimesh.broker.memory import MemoryBus
from actimesh.broker.messages import DeadLetter
from actimesh.broker.topics import Topics

TOPICS = Topics("demo")
PASSWORDS = {"car-12": "right", "car-13": "other"}


class FakeAuth:
    """Passwords in a dict, as the registry would answer."""

    async def check(self, device_id: str, password: str) -> bool:
        return PASSWORDS.get(device_id) == password


@dataclass
class Listener:
    http: httpx.AsyncClient
    sink: FixSink
    published: list[tuple[str, bytes]] = field(default_factory=list)

    def telemetry(self) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p in self.published if t.endswith("/telemetry")]

    def deadletters(self) -> list[DeadLetter]:
        return [decode(DeadLetter, p) for t, p in self.published if "/deadletter/" in t]


@contextlib.asynccontextmanager
async def listener(rate_per_s: float = 2.0, burst: float = 10.0) -> AsyncIterator[Listener]:
    bus = MemoryBus()
    out = bus.outbound("adapters")
    sink = FixSink(
        out=out, topics=TOPICS, clock=lambda: 1_733_500_000.0, rate_per_s=rate_per_s, burst=burst
    )
    app = create_osmand_app(auth=FakeAuth(), sink=sink)
    transport = httpx.ASGITransport(app=app, client=("10.20.0.9", 50000))
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://osmand") as http,
        asyncio.TaskGroup() as tg,
    ):
        running = [tg.create_task(out.run()), tg.create_task(sink.run())]
        await out.wait_connected(1.0)
        state = Listener(http, sink)
        bus.listen(lambda topic, payload: state.published.append((topic, payload)))
        yield state
        for task in running:
            task.cancel()


REPORT = {"id": "car-12", "lat": "51.0447", "lon": "-114.0719", "timestamp": "1733500000"}


async def _published(state: Listener, count: int) -> None:
    async with asyncio.timeout(2):
        while len(state.telemetry()) < count:
            await asyncio.sleep(0)


async def test_get_post_form_and_json_each_become_the_devices_telemetry() -> None:
    async with listener() as state:
        auth = ("car-12", "right")
        assert (await state.http.get("/", params=REPORT, auth=auth)).text == "OK\n"
        assert (await state.http.post("/gps", data=REPORT, auth=auth)).status_code == 200
        body = {
            "device_id": "car-12",
            "location": {
                "timestamp": "2024-12-06T15:46:40Z",
                "coords": {"latitude": 51.0447, "longitude": -114.0719, "accuracy": 4.5},
            },
        }
        assert (await state.http.post("/", json=body, auth=auth)).status_code == 200
        await _published(state, 3)
    topics = {topic for topic, _ in state.telemetry()}
    assert topics == {TOPICS.telemetry("car-12")}
    fixes = [decode_telemetry(payload) for _, payload in state.telemetry()]
    assert fixes[0][2:] == (51.0447, -114.0719, None)
    assert fixes[2][4] == 4.5
    assert state.sink.stats.accepted == {"osmand": 3}
    assert state.sink.stats.published == 3


RIGHT = ("car-12", "right")
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("params", "auth", "body", "status", "reason"),
    [
        (REPORT, None, None, 401, "unauthorized"),
        (REPORT, ("car-12", "wrong"), None, 401, "unauthorized"),
        (REPORT, ("car-13", "other"), None, 403, "unauthorized"),
        ({**REPORT, "lat": "91"}, RIGHT, None, 400, "invalid"),
        ({**REPORT, "timestamp": ""}, RIGHT, None, 400, "invalid"),
        ({}, RIGHT, b"{", 400, "malformed"),
        ({}, RIGHT, b"x" * (OSMAND_MAX_BODY + 1), 413, "oversized"),
    ],
)
async def test_refusals_answer_with_their_status_and_are_dead_lettered(
    params: dict[str, str],
    auth: tuple[str, str] | None,
    body: bytes | None,
    status: int,
    reason: str,
) -> None:
    async with listener() as state:
        if body is None:
            response = await state.http.get("/", params=params, auth=auth)
        else:
            headers = JSON if body == b"{" else {}
            assert auth is not None  # the body cases are all from the device itself
            response = await state.http.post("/", content=body, headers=headers, auth=auth)
        assert response.status_code == status, response.text
        assert response.text.startswith(reason)
        if auth is None:
            assert response.headers["www-authenticate"] == 'Basic realm="actimesh"'
        async with asyncio.timeout(2):
            while not state.deadletters():
                await asyncio.sleep(0)
    (letter,) = state.deadletters()
    assert letter.reason == reason
    expected = "osmand://10.20.0.9" if auth is None else f"osmand://{auth[0]}@10.20.0.9"
    assert letter.topic == expected
    assert state.telemetry() == []
    assert state.sink.stats.rejected == {reason: 1}


async def test_a_device_over_its_rate_gets_429_and_others_are_not_held_up() -> None:
    async with listener(rate_per_s=1.0, burst=2.0) as state:
        statuses = [
            (await state.http.get("/", params=REPORT, auth=("car-12", "right"))).status_code
            for _ in range(4)
        ]
        other = {**REPORT, "id": "car-13"}
        assert (
            await state.http.get("/", params=other, auth=("car-13", "other"))
        ).status_code == 200
        await _published(state, 3)
    assert statuses == [200, 200, 429, 429]
    assert state.sink.stats.rejected == {"over_rate": 2}
