"""NMEA 0183 over TCP and UDP: one port per device.

In-car modems and routers (Sierra Wireless, Cradlepoint, Teltonika, Digi …) forward
their GNSS receiver's sentences to a configured host and port, by TCP or UDP, and
almost none can add anything of their own to the stream. So a device is known by the
port it sends to (``[adapters.nmea] ports = {"car-12" = 10110}``): nothing in the
stream can claim to be another car, and the modem needs no configuration beyond the
address. NMEA carries no credentials: keep these ports on the fleet's private APN or
VPN (docs/DEVICES.md), as the modems' own vendors advise.

Each port takes TCP connections (at most :attr:`NmeaServer.max_connections` each; a
connection idle for ``idle_timeout_s`` is closed) and UDP datagrams (one or more
sentences each). Lines longer than :data:`~actimesh.adapters.nmea.NMEA_MAX_LINE` close
a TCP connection (it is not speaking NMEA); every refused line is counted and
dead-lettered by the sink, and the next line is read as if nothing happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping

from actimesh.adapters.nmea import HDOP_FACTOR_M, NMEA_MAX_LINE, NmeaAssembler
from actimesh.adapters.sink import FixSink
from actimesh.errors import ConfigError, PayloadError

__all__ = ["NmeaServer"]

log = logging.getLogger(__name__)

_PROTOCOL = "nmea"
#: Lines taken from one UDP datagram at most.
_MAX_LINES_PER_DATAGRAM = 32


class _Device:
    """One device's port: its sentences' assembler and its open TCP connections."""

    def __init__(self, device_id: str, sink: FixSink, assembler: NmeaAssembler) -> None:
        self.device_id = device_id
        self.sink = sink
        self.assembler = assembler
        self.connections = 0

    def line(self, line: bytes, peer: str) -> None:
        origin = f"{_PROTOCOL}://{self.device_id}@{peer}"
        line = line.strip(b"\r\n\x00 ")
        if not line:
            return
        try:
            fix = self.assembler.feed(line)
        except PayloadError as exc:
            self.sink.reject(origin, line, exc)
            return
        if fix is not None:
            self.sink.submit(_PROTOCOL, self.device_id, fix, origin)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, device: _Device) -> None:
        self.device = device

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        peer = f"{addr[0]}:{addr[1]}/udp"
        lines = data.split(b"\n")
        for line in lines[:_MAX_LINES_PER_DATAGRAM]:
            if len(line) > NMEA_MAX_LINE:
                exc = PayloadError("oversized", f"a line of {len(line)} bytes is not NMEA")
                self.device.sink.reject(f"{_PROTOCOL}://{self.device.device_id}@{peer}", line, exc)
                continue
            self.device.line(line, peer)


class NmeaServer:
    """TCP and UDP listeners on each device's port. Create in the running loop;
    ``await run()``; ``ready`` is set once every port listens."""

    def __init__(
        self,
        *,
        host: str,
        ports: Mapping[str, int],
        sink: FixSink,
        clock: Callable[[], float],
        hdop_factor_m: float = HDOP_FACTOR_M,
        idle_timeout_s: float = 120.0,
        max_connections: int = 2,
    ) -> None:
        self.host = host
        self.ports = dict(ports)
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self._devices = {
            device_id: _Device(
                device_id, sink, NmeaAssembler(hdop_factor_m=hdop_factor_m, clock=clock)
            )
            for device_id in ports
        }
        self.ready = asyncio.Event()
        #: The port each device's listeners are bound to (known once ``ready``).
        self.bound: dict[str, int] = {}

    def connections(self, device_id: str) -> int:
        """TCP connections open now on ``device_id``'s port."""
        return self._devices[device_id].connections

    @property
    def ignored(self) -> int:
        """Checked sentences of types not used, on every port."""
        return sum(d.assembler.ignored for d in self._devices.values())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            for device_id, port in self.ports.items():
                device = self._devices[device_id]
                try:
                    server = await asyncio.start_server(
                        functools.partial(self._serve, device),
                        self.host,
                        port,
                        limit=NMEA_MAX_LINE * 2,
                    )
                except OSError as exc:
                    raise ConfigError(
                        f"cannot listen for NMEA of {device_id} on {self.host}:{port} "
                        f"({exc.strerror}); set another port in [adapters.nmea] ports"
                    ) from None
                stack.push_async_callback(server.wait_closed)
                stack.callback(server.close)
                bound = server.sockets[0].getsockname()[1]
                try:
                    transport, _ = await loop.create_datagram_endpoint(
                        functools.partial(_Datagrams, device), local_addr=(self.host, bound)
                    )
                except OSError as exc:
                    raise ConfigError(
                        f"cannot take UDP NMEA of {device_id} on {self.host}:{bound} "
                        f"({exc.strerror}); set another port in [adapters.nmea] ports"
                    ) from None
                stack.callback(transport.close)
                self.bound[device_id] = bound
            self.ready.set()
            await asyncio.Future()  # until cancelled

    async def _serve(
        self, device: _Device, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer_addr = writer.get_extra_info("peername")
        peer = f"{peer_addr[0]}:{peer_addr[1]}" if peer_addr else "?"
        if device.connections >= self.max_connections:
            exc = PayloadError("over_rate", f"{device.device_id} has its connections open")
            device.sink.reject(f"{_PROTOCOL}://{device.device_id}@{peer}", b"", exc)
            writer.close()
            return
        device.connections += 1
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        line = await reader.readline()
                except TimeoutError:
                    break
                except ValueError:  # over the stream's limit: not NMEA
                    exc = PayloadError("oversized", "a line far over the NMEA length")
                    device.sink.reject(f"{_PROTOCOL}://{device.device_id}@{peer}", b"", exc)
                    break
                if not line:
                    break
                device.line(line, peer)
        except ConnectionError:
            pass  # the modem went away: it reconnects
        finally:
            device.connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
