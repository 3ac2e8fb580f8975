"""The NMEA listener on loopback sockets, its fixes going to the in-memory bus: framing,
limits and what a bad line costs (only itself)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from actimesh.adapters import FixSink, NmeaServer, nmea_checksum
from actimesh.broker.codec import decode_telemetry
from actimesh.broker.memory import MemoryBus
from actimesh.broker.topics import Topics
from tests.adapters import samples
from tests.waiting import eventually

TOPICS = Topics("demo")


def _sentence(body: str) -> bytes:
    return f"${body}*{nmea_checksum(body.encode()):02X}\r\n".encode()


def _pair(now: float) -> bytes:
    when = time.gmtime(now)
    hhmmss, ddmmyy = time.strftime("%H%M%S", when), time.strftime("%d%m%y", when)
    where = "5102.682,N,11404.314,W"
    return _sentence(f"GPRMC,{hhmmss},A,{where},0,0,{ddmmyy},,") + _sentence(
        f"GPGGA,{hhmmss},{where},1,08,1.2,1045,M,,M,,"
    )


@contextlib.asynccontextmanager
async def nmea_listener() -> AsyncIterator[tuple[NmeaServer, FixSink, list[bytes]]]:
    bus = MemoryBus()
    out = bus.outbound("adapters")
    sink = FixSink(out=out, topics=TOPICS, clock=time.time)
    server = NmeaServer(
        host="127.0.0.1", ports={"car-12": 0}, sink=sink, clock=time.time, idle_timeout_s=5
    )
    telemetry: list[bytes] = []
    bus.listen(lambda topic, payload: telemetry.append(payload) if topic.endswith("y") else None)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(t) for t in (out.run(), sink.run(), server.run())]
        await out.wait_connected(1.0)
        await server.ready.wait()
        yield server, sink, telemetry
        for task in tasks:
            task.cancel()


async def test_one_fix_per_second_and_a_bad_line_costs_only_itself() -> None:
    async with nmea_listener() as (server, sink, telemetry):
        _, modem = await asyncio.open_connection("127.0.0.1", server.bound["car-12"])
        now = float(int(time.time()))
        modem.write(b"garbage\r\n" + samples.NMEA_GSV + b"\r\n" + _pair(now))
        modem.write(samples.NMEA_GGA.replace(b"*47", b"*00") + b"\n" + _pair(now + 1))
        await modem.drain()
        await eventually(lambda: len(telemetry) == 2, timeout=2)
        modem.close()
        await modem.wait_closed()
    assert [decode_telemetry(p)[0] for p in telemetry] == [now, now + 1]
    # RMC before GGA: the first fix has no HDOP yet, the next one the last GGA's.
    assert [decode_telemetry(p)[4] for p in telemetry] == [None, 1.2 * 5.0]
    assert sink.stats.rejected == {"malformed": 1, "bad_checksum": 1}
    assert server.ignored == 1


async def test_a_line_far_over_the_limit_closes_that_connection_only() -> None:
    async with nmea_listener() as (server, sink, telemetry):
        port = server.bound["car-12"]
        reader, flood = await asyncio.open_connection("127.0.0.1", port)
        flood.write(b"$" + b"9" * 10_000)
        await flood.drain()
        async with asyncio.timeout(2):
            assert await reader.read() == b""  # closed by the listener
        flood.close()
        await flood.wait_closed()
        _, modem = await asyncio.open_connection("127.0.0.1", port)
        modem.write(_pair(float(int(time.time()))))
        await modem.drain()
        await eventually(lambda: len(telemetry) == 1, timeout=2)
        modem.close()
        await modem.wait_closed()
    assert sink.stats.rejected == {"oversized": 1}


async def test_a_third_connection_to_one_port_is_refused() -> None:
    async with nmea_listener() as (server, sink, _):
        port = server.bound["car-12"]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await eventually(lambda: server.connections("car-12") == 2, timeout=2)
        reader, third = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(2):
            assert await reader.read() == b""
        assert sink.stats.rejected == {"over_rate": 1}
        for _, writer in [*held, (reader, third)]:
            writer.close()
            await writer.wait_closed()


async def test_udp_datagrams_carry_sentences_and_oversized_lines_are_refused() -> None:
    async with nmea_listener() as (server, sink, telemetry):
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", server.bound["car-12"])
        )
        udp.sendto(b"$" + b"1" * 500 + b"\n" + _pair(float(int(time.time()))))
        await eventually(lambda: len(telemetry) == 1, timeout=2)
        udp.close()
    assert sink.stats.rejected == {"oversized": 1}
