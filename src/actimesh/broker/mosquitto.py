"""The managed broker: one Mosquitto child process that actimesh starts and stops itself.

``actimesh up`` and the test suite run their own Mosquitto on loopback instead of asking
the operator to configure one; ``--broker mqtt://HOST:PORT`` points at an existing
broker instead. :class:`ManagedMosquitto` writes a ``mosquitto.conf`` into a data
directory, starts ``mosquitto -c`` on it, and waits until the broker is really up (its
log says it is running and the port accepts a connection). The sync methods suit
fixtures and the CLI; ``async with ManagedMosquitto(cfg) as broker:`` does the same
waits without blocking the event loop.

**Secure by default.** The broker admits no anonymous client: it reads
``<data_dir>/passwd`` (password hashes), ``<data_dir>/access.json`` (client ids, roles,
disabled accounts: :mod:`actimesh.broker.dynsec`) and ``<data_dir>/admin`` (the login
that applies changes live), which the device registry renders
(:mod:`actimesh.security`), and refuses to start without them. The plain listener is on
loopback only; an optional TLS listener (``MosquittoConfig.tls``, with optional client
certificates) serves the network. After the registry changes, :meth:`ManagedMosquitto.reload`
(or :func:`signal_reload` from another process) syncs the Dynamic Security plugin over
its control topic and sends ``SIGHUP`` for the passwords: a removed or disabled device
is disconnected at once and cannot come back, without a restart. The one way to run
without any of this is the explicit ``insecure_anonymous=True``, for tests that exercise
other things.

Everything mosquitto writes (its own log and anything it prints before it has read the
config) goes to ``<data_dir>/mosquitto.log``; a start-up failure is raised as a one-line
:class:`~actimesh.errors.BrokerError` that quotes the reason found there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import urlsplit

from actimesh.broker.codec import MAX_ACTIVATION_BYTES, MAX_PAYLOAD_BYTES
from actimesh.broker.dynsec import (
    Access,
    AdminLogin,
    AdminRefusedError,
    disable_client,
    find_plugin,
    plugin_config,
    sync_access,
)
from actimesh.errors import BrokerError, BrokerNotInstalledError, ConfigError
from actimesh.lifeline import die_with_parent
from actimesh.private import write_private

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "DEFAULT_MQTTS_PORT",
    "DEFAULT_MQTT_PORT",
    "FALLBACK_PATHS",
    "INSTALL_HINT",
    "BrokerEndpoint",
    "ManagedMosquitto",
    "MosquittoConfig",
    "TlsListener",
    "find_mosquitto",
    "free_port",
    "is_loopback",
    "parse_broker_endpoint",
    "parse_broker_url",
    "render_config",
    "signal_reload",
]

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883

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
_PID_NAME = "mosquitto.pid"
_PASSWD_NAME = "passwd"  # noqa: S105 - a file name
#: Who may connect as whom and use which topics (broker/dynsec.py), rendered by the
#: registry; the plugin's own config file, written from it on every start; and the
#: login of the admin account that applies changes live.
_ACCESS_NAME = "access.json"
_DYNSEC_NAME = "dynsec.json"
_ADMIN_NAME = "admin"
#: mosquitto logs this when a SIGHUP has made it reload its config and password file.
_RELOAD_MARKER = "Reloading config."
_POLL_S = 0.02
#: How long a rotated admin login may wait for the broker to reload the password file.
_ADMIN_RETRY_S = 5.0
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


#: Ports :func:`free_port` handed out lately. The kernel may give the port it just gave
#: again once its socket is closed, so two calls in a row (a plain and a TLS listener)
#: could get the same one.
_RECENT_PORTS: deque[int] = deque(maxlen=256)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may take it),
    and not one this process was handed lately."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(64):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _RECENT_PORTS:
            break
    _RECENT_PORTS.append(port)
    return port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    """Where a broker is, and whether to speak TLS to it (``mqtts://``)."""

    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        return _url(self.host, self.port, tls=self.tls)


def parse_broker_endpoint(url: str) -> BrokerEndpoint:
    """Parse ``mqtt://HOST[:PORT]`` (default 1883) or ``mqtts://HOST[:PORT]`` (TLS,
    default 8883)."""
    example = "use mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtt://127.0.0.1:1883"
    if "://" not in url:
        raise ConfigError(f"broker URL {url!r} has no scheme: {example}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} is not valid ({exc}): {example}") from exc
    if parts.scheme not in ("mqtt", "mqtts"):
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
    tls = parts.scheme == "mqtts"
    default = DEFAULT_MQTTS_PORT if tls else DEFAULT_MQTT_PORT
    return BrokerEndpoint(parts.hostname, default if port is None else port, tls)


def parse_broker_url(url: str) -> tuple[str, int]:
    """Split ``mqtt://HOST[:PORT]`` into host and port (default 1883), for the clients
    that do not speak TLS."""
    endpoint = parse_broker_endpoint(url)
    if endpoint.tls:
        raise ConfigError(
            f"broker URL {url!r}: this command connects without TLS: use mqtt://HOST:PORT "
            "(a loopback or private listener)"
        )
    return endpoint.host, endpoint.port


def _url(host: str, port: int, *, tls: bool = False) -> str:
    scheme = "mqtts" if tls else "mqtt"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


@dataclass(frozen=True, kw_only=True)
class TlsListener:
    """The broker's TLS listener: server certificate and key, and the CA that client
    certificates must chain to (when ``require_certificate``) and that clients use to
    check the server."""

    port: int = DEFAULT_MQTTS_PORT
    #: All interfaces by default: this is the listener meant for the network.
    host: str = "0.0.0.0"  # noqa: S104 - TLS, passwords and the ACL guard it
    certfile: Path
    keyfile: Path
    cafile: Path
    #: Mutual TLS: refuse clients without a certificate from ``cafile``. Their username
    #: and password are checked as well (``use_identity_as_username false``).
    require_certificate: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"TLS port {self.port} is out of range: use 1 to 65535")
        if not self.host or any(ch.isspace() for ch in self.host):
            raise ConfigError(f"TLS listener host {self.host!r} is not valid: use e.g. 0.0.0.0")
        for path in (self.certfile, self.keyfile, self.cafile):
            if any(ch in str(path) for ch in "\r\n\0"):
                raise ConfigError(f"TLS file {str(path)!r} contains a line break")

    @property
    def url(self) -> str:
        return _url(self.host, self.port, tls=True)


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
    #: The TLS listener, if any (the plain one stays on loopback).
    tls: TlsListener | None = None
    #: Let anyone connect and do anything, with no password file or ACL. Only for tests
    #: that exercise something other than security; never for a deployment.
    insecure_anonymous: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"broker port {self.port} is out of range: use 1 to 65535")
        if not self.host or any(ch.isspace() for ch in self.host):
            raise ConfigError(f"broker host {self.host!r} is not valid: use e.g. 127.0.0.1")
        if not is_loopback(self.host):
            raise ConfigError(
                f"broker host {self.host!r}: the plain MQTT listener carries passwords in "
                "clear and stays on loopback (127.0.0.1); serve the network with the TLS "
                "listener ([broker] tls_port, `actimesh certs init`)"
            )
        if self.tls is not None and self.insecure_anonymous:
            raise ConfigError("a TLS listener without passwords makes no sense: drop one")
        if self.tls is not None and self.tls.port == self.port:
            raise ConfigError(f"the TLS and plain listeners cannot share port {self.port}")
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

    @property
    def pid_path(self) -> Path:
        return self.data_dir / _PID_NAME

    @property
    def password_path(self) -> Path:
        """The ``password_file`` (rendered by the device registry)."""
        return self.data_dir / _PASSWD_NAME

    @property
    def access_path(self) -> Path:
        """Accounts, client ids and roles (rendered by the device registry)."""
        return self.data_dir / _ACCESS_NAME

    @property
    def dynsec_path(self) -> Path:
        """The Dynamic Security plugin's config, written from :attr:`access_path` on
        every start and kept up to date by the plugin itself."""
        return self.data_dir / _DYNSEC_NAME

    @property
    def admin_path(self) -> Path:
        """The admin account's login (rendered by the device registry, 0600)."""
        return self.data_dir / _ADMIN_NAME

    @property
    def urls(self) -> tuple[str, ...]:
        """``mqtt://`` of the plain listener, then ``mqtts://`` of the TLS one if any."""
        return (self.url,) if self.tls is None else (self.url, self.tls.url)


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
    if cfg.insecure_anonymous:
        # Explicitly asked for (tests of other things): anyone may do anything.
        lines.append("allow_anonymous true")
    else:
        lines += [
            # Every client logs in with its own account. The Dynamic Security plugin
            # (broker/dynsec.py) pins each to its client id and its topics, checks
            # subscriptions when they are made, and disables accounts live; it is asked
            # first. Its accounts carry no password, so it then defers to the password
            # file, which SIGHUP reloads (re-checking every connected client).
            "allow_anonymous false",
            f"plugin {find_plugin()}",
            f"plugin_opt_config_file {cfg.dynsec_path.absolute()}",
            f"password_file {cfg.password_path.absolute()}",
        ]
    lines += [
        # Where `actimesh devices` finds the broker to reload (signal_reload).
        f"pid_file {data_dir / _PID_NAME}",
        # Loopback only: this listener carries passwords in clear.
        f"listener {cfg.port} {cfg.host}",
    ]
    if cfg.tls is not None:
        t = cfg.tls
        lines += [
            f"listener {t.port} {t.host}",
            f"certfile {t.certfile.absolute()}",
            f"keyfile {t.keyfile.absolute()}",
            f"cafile {t.cafile.absolute()}",
            "tls_version tlsv1.2",
            f"require_certificate {'true' if t.require_certificate else 'false'}",
            # With a client certificate, the username and password are still checked:
            # the certificate proves the device, the account pins its topics.
            "use_identity_as_username false",
        ]
    lines += [
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


def sync_access_of(
    data_dir: Path, host: str, port: int, reload_passwords: Callable[[], None]
) -> int:
    """Apply the access and password files of the broker on ``data_dir``, listening on
    ``host:port``: the Dynamic Security plugin is brought into line first, then
    ``reload_passwords`` (a SIGHUP) reloads the password file. Returns the number of
    plugin commands.

    In that order a new account can log in only once it has its client id and roles.
    When the admin login itself was just rotated, the broker refuses it until the
    password file is reloaded: then the reload comes first, and the sync follows.
    """
    access = Access.from_json((data_dir / _ACCESS_NAME).read_text(encoding="utf-8"))
    login = AdminLogin.read(data_dir / _ADMIN_NAME)
    try:
        commands = sync_access(host, port, login, access)
    except AdminRefusedError:
        reload_passwords()
        deadline = time.monotonic() + _ADMIN_RETRY_S
        while True:
            try:
                commands = sync_access(host, port, login, access)
                break
            except AdminRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_POLL_S)
    reload_passwords()
    return commands


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _listener_of(conf: Path) -> tuple[str, int] | None:
    """The plain listener a managed broker's config names (the first ``listener``)."""
    try:
        lines = conf.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.split()
        if len(words) == 3 and words[0] == "listener" and words[1].isdigit():
            return words[2], int(words[1])
    return None


def signal_reload(data_dir: Path) -> int | None:
    """Apply the access and password files to the managed broker running on
    ``data_dir``, from any process: the plugin is synced over its control topic, then
    the broker gets SIGHUP.

    Returns its pid, or None when no broker of that data directory runs (no pid file,
    or the pid now belongs to another process: the id is checked against the
    process's command line, so a stale pid file never signals a stranger).
    """
    pid_path = data_dir / _PID_NAME
    try:
        pid = int(pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    conf = (data_dir / _CONF_NAME).absolute()
    if (
        not argv
        or Path(argv[0].decode(errors="replace")).name != "mosquitto"
        or str(conf).encode() not in argv
    ):
        return None

    def hup() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)

    listener = _listener_of(conf)
    if listener is not None and (data_dir / _ACCESS_NAME).is_file():
        sync_access_of(data_dir, *listener, hup)
    else:
        hup()
    return pid if _alive(pid) else None


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

    def reload(self) -> None:
        """Apply the current access file and password file without a restart.

        The Dynamic Security plugin is brought into line first (live: an account that
        is disabled or gone is disconnected at once), then SIGHUP reloads the password
        file and re-checks every connected client: one whose account is gone or whose
        password changed is disconnected and refused on reconnect. A new account can
        log in only once both have happened. Returns once the broker logged the reload.
        """
        if not self.running:
            raise BrokerError(f"cannot reload the broker at {self.url}: it is not running")
        offset = self._apply()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._reloaded_since(offset):
            if not self.running or time.monotonic() > deadline:
                raise self._reload_failed("reload")
            time.sleep(_POLL_S)

    async def areload(self) -> None:
        """:meth:`reload` without blocking the event loop."""
        if not self.running:
            raise BrokerError(f"cannot reload the broker at {self.url}: it is not running")
        offset = await asyncio.to_thread(self._apply)
        deadline = time.monotonic() + self.start_timeout_s
        while not self._reloaded_since(offset):
            if not self.running or time.monotonic() > deadline:
                raise self._reload_failed("reload")
            await asyncio.sleep(_POLL_S)

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
