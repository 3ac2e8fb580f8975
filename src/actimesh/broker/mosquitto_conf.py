"""The ``mosquitto.conf`` of the managed broker, and where its files live.

actimesh writes the broker's whole config itself on every start, from
:class:`MosquittoConfig`: the operator sets a few values (ports, TLS files, limits),
never Mosquitto's syntax. What it renders is secure by default: no anonymous client;
the Dynamic Security plugin (:mod:`actimesh.broker.dynsec`) pins each account to its
client id and topics, and the password file checks logins; the plain listener stays on
loopback and an optional TLS listener (with optional client certificates) serves the
network. The one way to run without any of this is the explicit
``insecure_anonymous=True``, for tests that exercise other things.

:class:`MosquittoFiles` names the files of a broker's data directory, so another
process (``actimesh devices``) finds the broker to reload from the directory alone.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from actimesh.broker.codec import MAX_ACTIVATION_BYTES, MAX_PAYLOAD_BYTES
from actimesh.broker.dynsec import find_plugin
from actimesh.broker.endpoint import (
    DEFAULT_MQTT_PORT,
    DEFAULT_MQTTS_PORT,
    BrokerEndpoint,
    is_loopback,
)
from actimesh.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "MosquittoConfig",
    "MosquittoFiles",
    "TlsListener",
    "render_config",
]

#: Largest packet the broker accepts: the largest payload actimesh itself publishes (an
#: activation record) plus room for the topic and MQTT v5 properties. It is far above
#: the 16 KiB device payload limit on purpose: an oversized device payload must reach
#: the engine, which rejects, counts and dead-letters it, instead of vanishing in the
#: broker (which would also disconnect the device).
DEFAULT_MAX_PACKET_SIZE = MAX_ACTIVATION_BYTES + 64 * 1024

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


@dataclass(frozen=True, slots=True)
class MosquittoFiles:
    """The files of a managed broker in its data directory."""

    data_dir: Path

    @property
    def config_path(self) -> Path:
        return self.data_dir / _CONF_NAME

    @property
    def log_path(self) -> Path:
        """Everything mosquitto writes, its own log and what it prints before that."""
        return self.data_dir / _LOG_NAME

    @property
    def pid_path(self) -> Path:
        """Written by mosquitto while it runs, removed when it stops."""
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

    def plain_listener(self) -> tuple[str, int] | None:
        """Host and port of the plain listener the rendered config names (its first
        ``listener``), or None without a readable config."""
        try:
            lines = self.config_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        for line in lines:
            words = line.split()
            if len(words) == 3 and words[0] == "listener" and words[1].isdigit():
                return words[2], int(words[1])
        return None


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
        return BrokerEndpoint(self.host, self.port, tls=True).url


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
        return BrokerEndpoint(self.host, self.port).url

    @property
    def files(self) -> MosquittoFiles:
        """Where this broker's files are in :attr:`data_dir`."""
        return MosquittoFiles(self.data_dir)

    @property
    def config_path(self) -> Path:
        return self.files.config_path

    @property
    def log_path(self) -> Path:
        return self.files.log_path

    @property
    def pid_path(self) -> Path:
        return self.files.pid_path

    @property
    def password_path(self) -> Path:
        return self.files.password_path

    @property
    def access_path(self) -> Path:
        return self.files.access_path

    @property
    def dynsec_path(self) -> Path:
        return self.files.dynsec_path

    @property
    def admin_path(self) -> Path:
        return self.files.admin_path

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
        # Where `actimesh devices` finds the broker to reload (reload_managed_broker).
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
