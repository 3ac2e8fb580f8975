"""Entries the supervisor tests run in child processes (importable there by name)."""

from __future__ import annotations

import asyncio

from actimesh.errors import ConfigError
from actimesh.runtime.supervisor import Report


async def serve_echo(greeting: str, report: Report) -> None:
    """A TCP server that answers every connection with ``greeting`` and its pid."""
    import os  # noqa: PLC0415

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{greeting} {os.getpid()}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        report(f"tcp://127.0.0.1:{port}")
        await server.serve_forever()


async def refuse_to_start(reason: str, _: Report) -> None:
    raise ConfigError(reason)


async def crash_at_once(_: object, __: Report) -> None:
    raise SystemExit(3)
