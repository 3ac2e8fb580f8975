r"""The NATS cluster of a deployment over three hosts: each host's ``nats-server``
configuration, rendered by the code that configures :class:`~.cluster.NatsCluster`'s
nodes (:func:`~.cluster.render_node_config`), so both shapes stay one configuration.

Each host listens on every interface on the standard ports (client 4222, routes 6222,
MQTT over TLS 8883, monitoring 8222), keeps its JetStream store in ``/var/lib/nats/jetstream``
and routes to the other two by name. ``python -m actimesh.broker.nats.hosts DIR
[HOST ...]`` writes ``nats-1.conf`` … for the given host names (by default those of
``deploy/``); ``tests/test_deploy.py`` checks that ``deploy/nats/`` is what this renders
and that ``nats-server -t`` accepts it.

Nobody connects anonymously. Each node ``include``\ s two files beside its configuration,
rendered by ``actimesh cluster auth`` from the device registry (the same on every
host): ``authorization.conf``, the users and their permissions
(:func:`~.auth.render_authorization`), and, inside its ``cluster`` block,
``routes.conf``, the route login the nodes give each other and the routes with it
(:func:`routes_config`). No secret is in the configuration itself.

**TLS on every listener but monitoring**, as ``actimesh cluster up --tls`` runs it
(:class:`~.cluster.NatsTls`): devices' and services' passwords cross a network, so the
client port, the MQTT listener and the routes speak only TLS, and routes are mutual TLS
(a node that dials another presents its own certificate, from the same CA). Each host
reads its certificate from :data:`TLS_DIR`: ``ca.pem``, and ``node.pem``/``node.key``,
the certificate ``actimesh certs node nats-<n> --host <its name>`` issued for it (a
server certificate also good for client authentication, naming the host, since routes
dial it by name and check it). The paths are fixed and the files per host, so one
rendering serves all three. Monitoring (8222) has no login and no TLS: loopback only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from actimesh.broker.nats.cluster import NatsTls, NodePorts, render_node_config, render_routes

__all__ = [
    "DEFAULT_HOSTS",
    "ROUTES_NAME",
    "STORE_DIR",
    "TLS_DIR",
    "host_config",
    "host_tls",
    "main",
    "node_ports",
    "routes_config",
]

#: The host names the shipped files use; replace them with your own.
DEFAULT_HOSTS = (
    "nats-1.actimesh.internal",
    "nats-2.actimesh.internal",
    "nats-3.actimesh.internal",
)
STORE_DIR = Path("/var/lib/nats/jetstream")
#: Where each host keeps the CA and its own certificate (``ca.pem``, ``node.pem``,
#: ``node.key``; the key readable by the ``nats`` group only). The services read the CA
#: from here too (``[broker] ca_file`` of deploy/cluster/actimesh.toml).
TLS_DIR = Path("/etc/actimesh/tls")
#: MQTT on 8883: the listener speaks TLS only, and 8883 is MQTT over TLS's port.
CLIENT_PORT, ROUTE_PORT, MQTT_PORT, MONITOR_PORT = 4222, 6222, 8883, 8222
#: The route login and routes each host's ``cluster`` block includes.
ROUTES_NAME = "routes.conf"

HEADER = """\
# nats-server configuration of {name}, one of the {count} hosts of an actimesh cluster.
# Rendered by `python -m actimesh.broker.nats.hosts` (the code that configures
# `actimesh cluster up`'s nodes); install as /etc/nats/nats.conf on {host}.
# It includes /etc/nats/authorization.conf (users) and /etc/nats/routes.conf (the route
# login), written by `actimesh cluster auth` from the device registry: nobody connects
# anonymously. TLS only on the client, MQTT and route ports (routes: mutual TLS), with the
# CA and this host's certificate in /etc/actimesh/tls/ (`actimesh certs node`).
# Monitoring has no login and no TLS: loopback only.
"""


def node_ports(host: str) -> NodePorts:
    """The standard listeners of a node on ``host``."""
    return NodePorts(host, CLIENT_PORT, ROUTE_PORT, MQTT_PORT, MONITOR_PORT)


def host_tls() -> NatsTls:
    """The CA and certificate every host reads from :data:`TLS_DIR`."""
    return NatsTls(TLS_DIR / "ca.pem", TLS_DIR / "node.pem", TLS_DIR / "node.key")


def host_config(index: int, hosts: Sequence[str] = DEFAULT_HOSTS) -> str:
    """The configuration of ``hosts[index]``: listening on all interfaces, routed to the
    others."""
    if len(set(hosts)) != len(hosts) or not 0 <= index < len(hosts):
        raise ValueError(f"host {index} of {list(hosts)}: give distinct host names")
    name = hosts[index].split(".", 1)[0]
    listen = node_ports("0.0.0.0")  # noqa: S104 - a cluster host serves its network
    routes = [node_ports(h) for i, h in enumerate(hosts) if i != index]
    header = HEADER.format(name=name, count=len(hosts), host=hosts[index])
    body = render_node_config(
        name,
        listen,
        STORE_DIR,
        routes,
        replicas=min(3, len(hosts)),
        routes_include=ROUTES_NAME,
        tls=host_tls(),
        monitor_host="127.0.0.1",  # no login on it: this host only
    )
    # Its own first line says "on loopback", which these hosts are not: the header says why.
    _, _, body = body.partition("\n")
    return header + body


def routes_config(route_password: str, hosts: Sequence[str] = DEFAULT_HOSTS) -> str:
    """``routes.conf`` of every host: the route login, and the routes to all of them."""
    if not route_password:
        raise ValueError("the routes of a cluster on a network need a password")
    head = "# Written by `actimesh cluster auth`: the same on every host. Secret: mode 0640.\n"
    return head + render_routes([node_ports(h) for h in hosts], route_password)


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``nats-<n>.conf`` for each host into the folder ``argv[0]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        usage = "usage: python -m actimesh.broker.nats.hosts DIR [HOST ...]"
        print(usage, file=sys.stderr)  # noqa: T201 (a command-line tool)
        return 2
    out, hosts = Path(args[0]), tuple(args[1:]) or DEFAULT_HOSTS
    out.mkdir(parents=True, exist_ok=True)
    for i in range(len(hosts)):
        (out / f"nats-{i + 1}.conf").write_text(host_config(i, hosts), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
