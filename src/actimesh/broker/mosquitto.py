"""The managed broker: one Mosquitto child process that actimesh starts and stops itself.

``actimesh up`` and the test suite run their own Mosquitto on loopback instead of asking
the operator to configure one; ``--broker mqtt://HOST:PORT`` points at an existing
broker instead. :class:`ManagedMosquitto` writes a ``mosquitto.conf`` into a data
directory, starts ``mosquitto -c`` on it, and waits until the broker is really up (its
log says it is running and the port accepts a connection). The sync methods suit
fixtures and the CLI; ``async with ManagedMosquitto(cfg) as broker:`` does the same
waits without blocking the event loop.

Everything mosquitto writes (its own log and anything it prints before it has read the
config) goes to ``<data_dir>/mosquitto.log``; a start-up failure is raised as a one-line
:class:`~actimesh.errors.BrokerError` that quotes the reason found there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import urlsplit

from actimesh.broker.codec import MAX_ACTIVATION_BYTES, MAX_PAYLOAD_BYTES
from actimesh.errors import BrokerError, BrokerNotInstalledError, ConfigError

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "DEFAULT_MQTT_PORT",
    "FALLBACK_PATHS",
    "INSTALL_HINT",
    "ManagedMosquitto",
    "MosquittoConfig",
    "find_mosquitto",
    "free_port",
    "parse_broker_url",
    "render_config",
]

DEFAULT_MQTT_PORT = 1883

#: Where Debian and source builds put the broker; ``/usr/sbin`` is often not on a
#: non-root user's PATH.
FALLBACK_PATHS: tuple[Path, ...] = (
    Path("/usr/sbin/mosquitto"),
    Path("/usr/local/sbin/mosquitto"),
)

INSTALL_HINT = (
    "mosquitto is not installed: run `apt-get install mosquitto`, "
    "or pass --broker mqtt://HOST:PORT to use an existing broker"
)

#: Largest packet the broker accepts: the largest payload actimesh itself publishes (an
#: activation record) plus room for the topic and MQTT v5 properties. It is far above
#: the 16 KiB device payload limit on purpose: an oversized device payload must reach
#: the engine, which rejects, counts and dead-letters it, instead of vanishing in the
#: broker (which would also disconnect the device).
DEFAULT_MAX_PACKET_SIZE = MAX_ACTIVATION_BYTES + 64 * 1024

#: mosquitto logs this (at notice level) once every listener is open.
_RUNNING_MARKER = " running"
_LOG_NAME = "mosquitto.log"
_CONF_NAME = "mosquitto.conf"
_POLL_S = 0.02
_PROBE_TIMEOUT_S = 0.25


def find_mosquitto(*, fallbacks: Iterable[Path] | None = None) -> Path:
    """Locate the ``mosquitto`` binary: PATH first, then :data:`FALLBACK_PATHS`."""
    found = shutil.which("mosquitto")
    if found is not None:
        return Path(found)
    for candidate in FALLBACK_PATHS if fallbacks is None else fallbacks:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerNotInstalledError(INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def parse_broker_url(url: str) -> tuple[str, int]:
    """Split ``mqtt://HOST[:PORT]`` into host and port (default 1883)."""
    example = "use mqtt://HOST:PORT, e.g. mqtt://127.0.0.1:1883"
    if "://" not in url:
        raise ConfigError(f"broker URL {url!r} has no scheme: {example}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} is not valid ({exc}): {example}") from exc
    if parts.scheme in ("mqtts", "ssl", "tls"):
        raise ConfigError(f"broker URL {url!r}: TLS is not supported yet: {example}")
    if parts.scheme != "mqtt":
        raise ConfigError(f"broker URL {url!r} has scheme {parts.scheme!r}: {example}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"broker URL {url!r}: credentials in the URL are not supported: {example}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {url!r} has a path, query or fragment: {example}")
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host: {example}")
    if port == 0:
        raise ConfigError(f"broker URL {url!r} has port 0: {example}")
    return parts.hostname, DEFAULT_MQTT_PORT if port is None else port


def _url(host: str, port: int) -> str:
    return f"mqtt://[{host}]:{port}" if ":" in host else f"mqtt://{host}:{port}"


@dataclass(frozen=True, kw_only=True)
class MosquittoConfig:
    """Settings of a managed broker. Only ``data_dir`` has no default."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_MQTT_PORT
    #: Keep retained messages, persistent sessions and their queued QoS 1 messages in
    #: ``<data_dir>/mosquitto.db`` across restarts.
    persistence: bool = True
    #: Seconds between saves of the database; it is also saved on a graceful stop.
    #: mosquitto's default is 1800 s, so a crash would lose half an hour of retained state.
    autosave_interval_s: int = 30
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    #: QoS 1 messages queued per disconnected persistent client before the broker drops
    #: (a camera off the network for a while must still find its commands).
    max_queued_messages: int = 10_000

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"broker port {self.port} is out of range: use 1 to 65535")
        if not self.host or any(ch.isspace() for ch in self.host):
            raise ConfigError(f"broker host {self.host!r} is not valid: use e.g. 127.0.0.1")
        if any(ch in str(self.data_dir) for ch in "\r\n\0"):
            raise ConfigError(
                f"broker data directory {str(self.data_dir)!r} contains a line break: "
                "choose another directory"
            )
        if self.autosave_interval_s < 0:
            raise ConfigError("autosave_interval_s must be 0 (only on stop) or more seconds")
        if self.max_packet_size <= MAX_PAYLOAD_BYTES:
            raise ConfigError(
                f"max_packet_size {self.max_packet_size} must be above the "
                f"{MAX_PAYLOAD_BYTES}-byte payload limit, so oversized payloads reach the "
                "engine to be dead-lettered"
            )
        if self.max_queued_messages < 0:
            raise ConfigError("max_queued_messages must be 0 (unlimited) or more")

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def config_path(self) -> Path:
        return self.data_dir / _CONF_NAME

    @property
    def log_path(self) -> Path:
        return self.data_dir / _LOG_NAME


def _current_user() -> str | None:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (some containers)
        return None


def render_config(cfg: MosquittoConfig) -> str:
    """The ``mosquitto.conf`` for ``cfg`` (Mosquitto 2.0 syntax)."""
    data_dir = cfg.data_dir.absolute()
    lines = [
        "# Written by actimesh for its managed broker; rewritten on every start.",
        "per_listener_settings false",
    ]
    user = _current_user()
    if user is not None:
        lines += [
            # Started as root, mosquitto 2 switches to the `mosquitto` user, which then
            # cannot write the log and database in a data directory that root created
            # (it exits with "Unable to open log file"). Naming the user who starts it
            # keeps it as that user: the broker gets no more rights than its parent,
            # and the files stay owned by whoever owns the data directory. For any
            # other user this line has no effect.
            f"user {user}",
        ]
    lines += [
        f"listener {cfg.port} {cfg.host}",
        # Loopback only, anonymous: a development broker. Device credentials and an ACL
        # pinning each device to am/v1/+/dev/%u/# are the security work's to add.
        "allow_anonymous true",
        f"persistence {'true' if cfg.persistence else 'false'}",
        # mosquitto appends the file name to this, so it must end with a slash.
        f"persistence_location {data_dir}/",
        f"autosave_interval {cfg.autosave_interval_s}",
        # Nagle's algorithm held a QoS 1 round trip at ~88 ms p50 on loopback, ~1 ms
        # without (FIELD-NOTES §5). The broker flag alone did not fix it: clients set
        # TCP_NODELAY too (broker/client.py).
        "set_tcp_nodelay true",
        f"max_packet_size {cfg.max_packet_size}",
        f"max_queued_messages {cfg.max_queued_messages}",
        # QoS 0 is telemetry: stale the moment it is late, so never queue it.
        "queue_qos0_messages false",
        f"log_dest file {data_dir / _LOG_NAME}",
        # One type per line: mosquitto 2.0 reads only the first word of a log_type line.
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    return "\n".join(lines) + "\n"


def _explain(cfg: MosquittoConfig, log: str, exit_code: int) -> str:
    """A one-line reason why mosquitto exited during start-up, from what it logged."""
    where = f"{cfg.host}:{cfg.port}"
    if "Address already in use" in log:
        return (
            f"port {cfg.port} on {cfg.host} is already in use: pass --broker-port N, "
            f"or --broker {cfg.url} to use the broker already running there"
        )
    if "Cannot assign requested address" in log or "Name or service not known" in log:
        return f"cannot listen on {where}: use a local address such as 127.0.0.1"
    if "Unable to open" in log or "Permission denied" in log:
        return (
            f"mosquitto cannot write to {cfg.data_dir}: make the directory writable "
            f"(see {cfg.log_path})"
        )
    errors = [line for line in log.splitlines() if "Error" in line]
    detail = errors[-1].split(": ", 1)[-1].strip() if errors else "no error logged"
    return f"mosquitto exited with code {exit_code} on {where} ({detail}): see {cfg.log_path}"


class ManagedMosquitto:
    """One mosquitto child process for one :class:`MosquittoConfig`.

    Sync: ``start()``, ``stop()``, ``kill()``, ``restart()``; async: ``astart()``,
    ``astop()``, ``arestart()`` and ``async with``. A stopped broker can be started again
    on the same data directory, which is how tests check persistence.
    """

    def __init__(
        self,
        config: MosquittoConfig,
        *,
        binary: Path | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self._binary = binary
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ManagedMosquitto {self.url} {state}>"

    # ------------------------------------------------------------------ state
    @property
    def url(self) -> str:
        """``mqtt://host:port`` of this broker."""
        return self.config.url

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """True while the child process is alive (it may not accept connections yet)."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        """The last ``n`` lines of ``<data_dir>/mosquitto.log`` (all runs)."""
        try:
            text = self.config.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-n:]) if n > 0 else ""

    def _log_since_start(self) -> str:
        try:
            with self.config.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ start
    def _launch(self) -> None:
        """Write the config and spawn mosquitto; returns at once."""
        binary = self._binary if self._binary is not None else find_mosquitto()
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        cfg.config_path.write_text(render_config(cfg))
        # Both mosquitto (log_dest file) and this handle append to the same file; the
        # handle catches what mosquitto prints before it has read its config.
        log_file = cfg.log_path.open("ab")
        self._log_offset = log_file.tell()
        try:
            self._proc = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
                # Absolute: the broker runs in the data directory, where a relative
                # --data-dir given on the command line no longer resolves.
                [str(binary), "-c", str(cfg.config_path.absolute())],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=cfg.data_dir,
                # Its own process group: a Ctrl-C in the terminal reaches actimesh, which
                # then stops the broker gracefully so the database is saved.
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise BrokerError(f"cannot run {binary}: {exc.strerror}") from exc
        self._log_file = log_file

    def _check_ready(self) -> bool:
        """True once the log says it runs; raise if the process has died meanwhile."""
        assert self._proc is not None
        exit_code = self._proc.poll()
        if exit_code is not None:
            log = self._log_since_start()
            self._reap()
            raise BrokerError(_explain(self.config, log, exit_code))
        return any(line.endswith(_RUNNING_MARKER) for line in self._log_since_start().splitlines())

    def _check_deadline(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise BrokerError(
                f"mosquitto did not accept connections on {self.config.host}:"
                f"{self.config.port} within {self.start_timeout_s:g} s: see {self.config.log_path}"
            )

    def _probe(self) -> bool:
        try:
            with socket.create_connection(
                (self.config.host, self.config.port), timeout=_PROBE_TIMEOUT_S
            ):
                return True
        except OSError:
            return False

    async def _aprobe(self) -> bool:
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                _, writer = await asyncio.open_connection(self.config.host, self.config.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def start(self) -> None:
        """Start the broker and wait until it accepts connections; no-op if running.

        Raises :class:`BrokerNotInstalledError` without the binary and
        :class:`BrokerError` (one line, with the reason) if it does not come up.
        """
        if self.running:
            return
        self._reap()  # a broker that crashed since the last start
        self._launch()
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while not (self._check_ready() and self._probe()):
                self._check_deadline(deadline)
                time.sleep(_POLL_S)
        except BaseException:
            self.kill()
            raise

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop."""
        if self.running:
            return
        self._reap()  # a broker that crashed since the last start
        self._launch()
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while not (self._check_ready() and await self._aprobe()):
                self._check_deadline(deadline)
                await asyncio.sleep(_POLL_S)
        except BaseException:  # cancelled included: never leave a half-started broker
            self.kill()
            raise

    # ------------------------------------------------------------------ stop
    def _terminate(self) -> bool:
        """Send SIGTERM; False if there is nothing to stop."""
        if self._proc is None:
            return False
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        return True

    def _reap(self) -> None:
        """Wait for an exited (or SIGKILLed) child so it leaves no zombie."""
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (mosquitto saves its database on SIGTERM); SIGKILL after
        ``timeout`` seconds. No-op if not running."""
        if not self._terminate():
            return
        assert self._proc is not None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        finally:
            self._reap()

    async def astop(self, timeout: float = 5.0) -> None:
        """:meth:`stop` without blocking the event loop."""
        if not self._terminate():
            return
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        try:
            while self._proc.poll() is None:
                if time.monotonic() >= deadline:
                    break  # SIGKILL below
                await asyncio.sleep(_POLL_S)
        finally:  # also when cancelled: never leave the child behind
            self.kill()

    def kill(self) -> None:
        """SIGKILL: an abrupt crash for fault tests (nothing is saved). No-op if stopped."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def restart(self, timeout: float = 5.0) -> None:
        """Graceful stop, then start on the same config and data directory."""
        self.stop(timeout)
        self.start()

    async def arestart(self, timeout: float = 5.0) -> None:
        """:meth:`restart` without blocking the event loop."""
        await self.astop(timeout)
        await self.astart()

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()
