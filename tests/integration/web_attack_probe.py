"""Measure what an HTTP attack on `actimesh up`'s web listeners costs a TASER draw
(not a test).

    .venv/bin/python -m tests.integration.web_attack_probe --draws 40

starts `up` (managed broker, engine; dispatch and evidence in their own processes) with
a CEW and its body camera, measures draw-to-command latency with no attack (the
baseline, in the same run), then again while 400 half-open requests hold both listeners
and clients post 64 MiB bodies to the login route and guess passwords without pause.
Prints median and worst of each, and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

from tests.integration.up_world import UpWorld, running_up


async def _draws(world: UpWorld, count: int) -> list[float]:
    out = []
    for _ in range(count):
        out.append(await world.draw())
        await asyncio.sleep(0.05)
    return out


async def _attack(dispatch_url: str, evidence_url: str) -> None:
    """Run until killed: the attacker, in a process of its own (sharing the probe's
    event loop, where the engine runs, would measure the attacker instead)."""
    held: list[asyncio.StreamWriter] = []
    for url in (dispatch_url, evidence_url):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        for _ in range(200):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /api/v1/session HTTP/1.1\r\nHost: localhost\r\n")
            held.append(writer)
    big = b"x" * (64 * 1024 * 1024)

    async def flood(body: bytes | None) -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as web:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if body is None:
                        await web.post(
                            dispatch_url + "/api/v1/session",
                            json={"username": "admin", "password": "guess"},
                        )
                    else:
                        await web.post(dispatch_url + "/api/v1/session", content=body)

    print("attacking", flush=True)  # noqa: T201 - tells the probe the slots are held
    async with asyncio.TaskGroup() as tg:
        for n in range(8):
            tg.create_task(flood(big if n < 4 else None), name=f"flood-{n}")


def _summary(xs: list[float]) -> tuple[float, float]:
    return statistics.median(xs), max(xs)


async def _main(count: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="actimesh-webattack-"))
    async with running_up(root) as world:
        base = await _draws(world, count)
        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.web_attack_probe",
            "--attack",
            world.dispatch_url,
            world.evidence_url,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert attacker.stdout is not None
            await attacker.stdout.readline()  # "attacking"
            await asyncio.sleep(1.0)  # the floods under way
            attacked = await _draws(world, count)
        finally:
            attacker.kill()
            await attacker.wait()
    (b50, bmax), (a50, amax) = _summary(base), _summary(attacked)
    print(  # noqa: T201 - the probe's output
        f"draw to command, {count} draws each: no attack median {b50 * 1000:.1f} ms, "
        f"worst {bmax * 1000:.1f} ms; under attack median {a50 * 1000:.1f} ms, worst "
        f"{amax * 1000:.1f} ms; ratio median {a50 / b50:.2f}, worst {amax / bmax:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument(
        "--attack", nargs=2, metavar=("DISPATCH", "EVIDENCE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.attack:
        asyncio.run(_attack(*args.attack))
    else:
        asyncio.run(_main(args.draws))
