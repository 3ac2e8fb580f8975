"""The managed broker: one Mosquitto child process that actimesh starts and stops itself.

``actimesh up`` and the test suite run their own Mosquitto on loopback instead of asking
the operator to configure one; ``--broker mqtt://HOST:PORT`` points at an existing
broker instead. :class:`ManagedMosquitto` writes the ``mosquitto.conf`` of a
:class:`~actimesh.broker.mosquitto_conf.MosquittoConfig` into a data directory, starts
``mosquitto -c`` on it, and waits until the broker is really up (its log says it is
running and the port accepts a connection).

The broker refuses to start without the files the device registry renders
(:mod:`actimesh.security`): a broker nobody can log in to, or everyone can, is never
started by accident. After the registry changes, :meth:`ManagedMosquitto.reload` applies
them live (:mod:`actimesh.broker.reload`).

Each operation (start, stop, restart, reload) is written once, as a sequence of steps
that says when it waits and for what; the sync methods (fixtures, the CLI) run the
steps blocking, the async ones (``async with ManagedMosquitto(cfg) as broker:``) without
blocking the event loop, and both leave no half-started broker behind when interrupted.

Everything mosquitto writes (its own log and anything it prints before it has read the
config) goes to ``<data_dir>/mosquitto.log``; a start-up failure is raised as a one-line
:class:`~actimesh.errors.BrokerError` that quotes the reason found there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from actimesh.broker.dynsec import Access, AdminLogin, disable_client, plugin_config
from actimesh.broker.mosquitto_conf import MosquittoConfig, render_config
from actimesh.broker.reload import sync_access_of
from actimesh.errors import BrokerError, BrokerNotInstalledError
from actimesh.lifeline import die_with_parent
from actimesh.private import write_private

__all__ = [
    "FALLBACK_PATHS",
    "INSTALL_HINT",
    "ManagedMosquitto",
    "find_mosquitto",
    "free_port",
]

log = logging.getLogger(__name__)

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

#: mosquitto logs this (at notice level) once every listener is open.
_RUNNING_MARKER = " running"
#: mosquitto logs this when a SIGHUP has made it reload its config and password file.
_RELOAD_MARKER = "Reloading config."
_POLL_S = 0.02
_PROBE_TIMEOUT_S = 0.25

#: One step of a broker operation: a pause of that many seconds, or blocking work whose
#: result the operation goes on with (the async methods run it in a thread).
_Step = float | Callable[[], Any]
_Steps = Generator[_Step, Any, None]


def _run(steps: _Steps) -> None:
    """Run an operation's steps, blocking."""
    with contextlib.closing(steps):
        result: Any = None
        while True:
            try:
                step = steps.send(result)
            except StopIteration:
                return
            if callable(step):
                result = step()
            else:
                time.sleep(step)
                result = None


async def _arun(steps: _Steps) -> None:
    """Run an operation's steps without blocking the event loop. Cancelled (or failing)
    between steps, the operation is closed at the step it waits at: its own cleanup
    runs, so a start that is abandoned leaves no broker."""
    with contextlib.closing(steps):
        result: Any = None
        while True:
            try:
                step = steps.send(result)
            except StopIteration:
                return
            if callable(step):
                result = await asyncio.to_thread(step)
            else:
                await asyncio.sleep(step)
                result = None


def find_mosquitto(*, fallbacks: Iterable[Path] | None = None) -> Path:
    """Locate the ``mosquitto`` binary: PATH first, then :data:`FALLBACK_PATHS`."""
    found = shutil.which("mosquitto")
    if found is not None:
        return Path(found)
    for candidate in FALLBACK_PATHS if fallbacks is None else fallbacks:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerNotInstalledError(INSTALL_HINT)


#: The kernel's range of source ports for outgoing connections (Linux).
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Ports :func:`free_port` handed out lately, so that two calls in a row (a plain and a
#: TLS listener) never get the same one.
_RECENT_PORTS: deque[int] = deque(maxlen=256)


def _listening_ports() -> range:
    """Ports below the kernel's ephemeral range. An outgoing connection is never given
    one as its source port, so a port found free here stays free until a listener takes
    it: from the ephemeral range, any connection made in between (a test makes many) can
    take it first."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return range(max(1024, low - 12_000), low)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may take it),
    outside the ephemeral range, and not one this process was handed lately."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = _listening_ports()
    for _ in range(256):
        port = random.choice(ports)  # spreads the listeners of parallel runs apart
        if port in _RECENT_PORTS:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue  # taken
        break
    else:  # the whole range busy: let the kernel pick one
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    _RECENT_PORTS.append(port)
    return port


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
    if "certificate" in log.lower() or "private key" in log.lower():
        errors = [line for line in log.splitlines() if "Error" in line]
        detail = errors[0].split(": ", 1)[-1].strip() if errors else "TLS files rejected"
        return (
            f"mosquitto refused its TLS files ({detail}): check [broker] certificate paths, "
            f"or run `actimesh certs init` (see {cfg.log_path})"
        )
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

    Sync: ``start()``, ``stop()``, ``kill()``, ``restart()``, ``reload()``, ``save()``;
    async: ``astart()``, ``astop()``, ``arestart()``, ``areload()``, ``asave()``,
    ``adisable()`` and ``async with``. A stopped broker can be started again on the same
    data directory, which is how tests check persistence.
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
        #: Set while this object stops the broker itself: its exit is not a crash.
        self._stopping_now = False
        #: Times :meth:`keep_running` started the broker again after it died.
        self.restarts = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ManagedMosquitto {self.url} {state}>"

    # ------------------------------------------------------------------ state
    @property
    def url(self) -> str:
        """``mqtt://host:port`` of this broker's plain (loopback) listener."""
        return self.config.url

    @property
    def tls_url(self) -> str | None:
        """``mqtts://host:port`` of the TLS listener, if there is one."""
        return None if self.config.tls is None else self.config.tls.url

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
        if not cfg.insecure_anonymous:
            files = (
                (cfg.password_path, "password file"),
                (cfg.access_path, "access file"),
                (cfg.admin_path, "admin login"),
            )
            for path, what in files:
                if not path.is_file():
                    # Fail closed, and say so, instead of a broker nobody can log in to.
                    raise BrokerError(
                        f"no {what} at {path}: the device registry renders it "
                        "(actimesh up does; in code: security.prepare_broker)"
                    )
        if cfg.tls is not None:
            for path in (cfg.tls.certfile, cfg.tls.keyfile, cfg.tls.cafile):
                if not path.is_file():
                    raise BrokerError(
                        f"TLS file {path} does not exist: run `actimesh certs init` or fix "
                        "the [broker] certificate paths"
                    )
        cfg.config_path.write_text(render_config(cfg))
        if not cfg.insecure_anonymous:
            # The plugin rewrites this file on every live change; the registry is the
            # truth, so each start begins from what it rendered.
            access = Access.from_json(cfg.access_path.read_text(encoding="utf-8"))
            write_private(cfg.dynsec_path, plugin_config(access))
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
                # And if actimesh is killed outright, the broker gets SIGTERM rather than
                # running on as an orphan.
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - prctl only, see lifeline
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

    def _starting(self) -> _Steps:
        if self.running:
            return
        self._reap()  # a broker that crashed since the last start
        self._launch()
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while not (self._check_ready() and (yield self._probe)):
                self._check_deadline(deadline)
                yield _POLL_S
        except BaseException:  # cancelled included: never leave a half-started broker
            self.kill()
            raise

    def start(self) -> None:
        """Start the broker and wait until it accepts connections; no-op if running.

        Raises :class:`BrokerNotInstalledError` without the binary and
        :class:`BrokerError` (one line, with the reason) if it does not come up.
        """
        _run(self._starting())

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop."""
        await _arun(self._starting())

    # ------------------------------------------------------------------ reload
    def _send_reload(self) -> int:
        if not self.running:
            raise BrokerError(f"cannot reload the broker at {self.url}: it is not running")
        assert self._proc is not None
        offset = self._log_size()
        self._proc.send_signal(signal.SIGHUP)
        return offset

    def _log_size(self) -> int:
        try:
            return self.config.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _reloaded_since(self, offset: int) -> bool:
        try:
            with self.config.log_path.open("rb") as fh:
                fh.seek(offset)
                return _RELOAD_MARKER.encode() in fh.read()
        except FileNotFoundError:
            return False

    def _reload_failed(self, what: str) -> BrokerError:
        return BrokerError(
            f"mosquitto did not {what} within {self.start_timeout_s:g} s: "
            f"see {self.config.log_path}"
        )

    async def adisable(self, username: str) -> None:
        """Disable ``username`` on this running broker now (the Dynamic Security plugin
        disconnects it); the registry's next sync keeps it so."""
        login = AdminLogin.read(self.config.admin_path)
        await asyncio.to_thread(disable_client, self.host, self.port, login, username)

    def _apply(self) -> int:
        """Sync the plugin and SIGHUP (see :func:`sync_access_of`); the log offset
        from before the last SIGHUP."""
        offsets: list[int] = []

        def hup() -> None:
            offsets.append(self._send_reload())

        if self.config.insecure_anonymous:
            hup()
        else:
            sync_access_of(self.config.data_dir, self.host, self.port, hup)
        return offsets[-1]

    def _reloading(self) -> _Steps:
        if not self.running:
            raise BrokerError(f"cannot reload the broker at {self.url}: it is not running")
        offset: int = yield self._apply
        deadline = time.monotonic() + self.start_timeout_s
        while not self._reloaded_since(offset):
            if not self.running or time.monotonic() > deadline:
                raise self._reload_failed("reload")
            yield _POLL_S

    def reload(self) -> None:
        """Apply the current access file and password file without a restart.

        The Dynamic Security plugin is brought into line first (live: an account that
        is disabled or gone is disconnected at once), then SIGHUP reloads the password
        file and re-checks every connected client: one whose account is gone or whose
        password changed is disconnected and refused on reconnect. A new account can
        log in only once both have happened. Returns once the broker logged the reload.
        """
        _run(self._reloading())

    async def areload(self) -> None:
        """:meth:`reload` without blocking the event loop."""
        await _arun(self._reloading())

    # ------------------------------------------------------------------ save
    def _db_identity(self) -> tuple[int, int, int] | None:
        try:
            st = (self.config.data_dir / "mosquitto.db").stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _saving(self) -> _Steps:
        if not self.config.persistence:
            return
        if not self.running or self._proc is None:
            raise BrokerError(f"cannot save the broker at {self.url}: it is not running")
        before = self._db_identity()
        # SIGUSR1: mosquitto writes its database now (to a new file, renamed over the
        # old one), so the file's identity changes once it is done.
        self._proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + self.start_timeout_s
        while self._db_identity() == before:
            if not self.running or time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto at {self.url} did not save its database within "
                    f"{self.start_timeout_s:g} s: see {self.config.log_path}"
                )
            yield _POLL_S

    def save(self) -> None:
        """Write the broker's database (retained messages, sessions) to disk now.

        Mosquitto saves every ``autosave_interval_s`` and on a graceful stop; a crash
        in between restarts from the last save. Save before an operation that may
        crash it (a reload that disconnects removed accounts, see :meth:`keep_running`)
        so that what was just deleted stays deleted. Nothing to do without persistence.
        """
        _run(self._saving())

    async def asave(self) -> None:
        """:meth:`save` without blocking the event loop."""
        await _arun(self._saving())

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

    def _stopping(self, timeout: float) -> _Steps:
        if not self._terminate():
            return
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        self._stopping_now = True
        try:
            while self._proc.poll() is None and time.monotonic() < deadline:
                yield _POLL_S
        finally:  # SIGKILL after the timeout, and when cancelled: never leave the child
            self.kill()
            self._stopping_now = False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (mosquitto saves its database on SIGTERM); SIGKILL after
        ``timeout`` seconds. No-op if not running."""
        _run(self._stopping(timeout))

    async def astop(self, timeout: float = 5.0) -> None:
        """:meth:`stop` without blocking the event loop."""
        await _arun(self._stopping(timeout))

    def kill(self) -> None:
        """SIGKILL: an abrupt crash for fault tests (nothing is saved). No-op if stopped."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def _restarting(self, timeout: float) -> _Steps:
        yield from self._stopping(timeout)
        yield from self._starting()

    def restart(self, timeout: float = 5.0) -> None:
        """Graceful stop, then start on the same config and data directory."""
        _run(self._restarting(timeout))

    async def arestart(self, timeout: float = 5.0) -> None:
        """:meth:`restart` without blocking the event loop."""
        await _arun(self._restarting(timeout))

    # ------------------------------------------------------------------ watchdog
    async def keep_running(
        self, *, poll_s: float = 0.25, max_restarts: int = 5, window_s: float = 60.0
    ) -> None:
        """Start the broker again whenever it exits by itself, until cancelled.

        Mosquitto 2.0.11 (Debian bookworm's) has crashed here with a segmentation fault
        after a reload (SIGHUP) had disconnected clients whose accounts were gone while
        sessions restored from its database were due to expire (upstream issue #3418
        describes the same corruption of its session-expiry list): every device, the
        engine and the dispatch were then refused until someone restarted it. On a
        restart it reads its database (sessions, retained messages, QoS 1 messages saved
        at its last save), and every link reconnects by itself. A broker that dies more
        than ``max_restarts`` times within ``window_s`` is not restarted again: the
        ``BrokerError`` says so, with its log, and stops what runs beside it.
        """
        recent: deque[float] = deque()
        while True:
            await asyncio.sleep(poll_s)
            proc = self._proc
            if proc is None or self._stopping_now or proc.poll() is None:
                continue  # running, or stopped on purpose
            code = proc.returncode
            how = f"signal {-code}" if code < 0 else f"code {code}"
            log.warning(
                "mosquitto exited by itself (%s); starting it again. Its log ends:\n%s",
                how,
                self.log_tail(5),
            )
            while True:
                now = time.monotonic()
                while recent and now - recent[0] > window_s:
                    recent.popleft()
                if len(recent) >= max_restarts:
                    raise BrokerError(
                        f"mosquitto exited ({how}) {len(recent) + 1} times within "
                        f"{window_s:g} s; not restarting it again: see {self.config.log_path}"
                    )
                recent.append(now)
                try:
                    await self.astart()
                except BrokerError as exc:  # died again while starting: one more failure
                    how = str(exc)
                    log.warning("mosquitto did not start again: %s", exc)
                    await asyncio.sleep(poll_s)
                    continue
                break
            self.restarts += 1  # counted once it serves again

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
