"""The web listeners of `actimesh up` run in processes of their own: an attack on them,
or their death, does not stop a TASER draw from commanding its camera."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.up_world import running_up, web_children
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(120)]


async def test_dispatch_and_evidence_are_children_and_come_back_after_a_kill(
    tmp_path: Path,
) -> None:
    async with running_up(tmp_path) as world:
        children = web_children()
        assert set(children) == {"dispatch", "evidence"}
        assert os.getpid() not in children.values()
        for name, pid in children.items():
            os.kill(pid, signal.SIGKILL)
            await eventually(_replaced(name, pid), 30)
        # Both serve again, at the same addresses, and triggers never stopped.
        async with httpx.AsyncClient(trust_env=False, timeout=5) as web:
            await eventually(lambda: _answers(web, world.dispatch_url + "/"), 30, 0.1)
            await eventually(lambda: _answers(web, world.evidence_url + "/"), 30, 0.1)
        await world.draw()
    assert web_children() == {}


def _replaced(name: str, pid: int) -> Callable[[], bool]:
    """True once child ``name`` runs again under a pid other than ``pid``."""
    return lambda: web_children().get(name, pid) != pid


async def _answers(web: httpx.AsyncClient, url: str) -> bool:
    try:
        r = await web.get(url)
    except httpx.TransportError:
        return False
    return r.status_code < 500


async def test_a_web_attack_does_not_stop_a_taser_draw(tmp_path: Path) -> None:
    """Half-open requests on every slot of both listeners, and bodies far over the
    limit, while an officer draws: the camera is still commanded."""
    async with running_up(tmp_path) as world:
        held: list[asyncio.StreamWriter] = []
        for url in (world.dispatch_url, world.evidence_url):
            host, port = url.removeprefix("http://").rsplit(":", 1)
            for _ in range(200):
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"POST /api/v1/session HTTP/1.1\r\nHost: localhost\r\n")
                held.append(writer)
        big = b"x" * (64 * 1024 * 1024)
        async with httpx.AsyncClient(trust_env=False, timeout=30) as web:
            posts = [
                web.post(world.dispatch_url + "/api/v1/session", content=big) for _ in range(4)
            ]
            draw = world.draw(timeout=30)
            results = await asyncio.gather(draw, *posts, return_exceptions=True)
        assert isinstance(results[0], float), results[0]
        for writer in held:
            writer.close()
