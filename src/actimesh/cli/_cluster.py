"""``actimesh cluster up``: the cluster shape of a mesh on one machine (three NATS nodes,
PostgreSQL, two engines, evidence, dispatch, optionally a fleet) until stopped; and
``actimesh cluster auth``: the users and route login files of a cluster deployed over
hosts (deploy/nats/), rendered from the device registry."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from actimesh.cli._common import EXIT_OK, Parser, http_port, port, positive_int, run_async
from actimesh.cli._up import fleet_flags, map_flags, sim_settings
from actimesh.runtime.config import Settings, load_settings

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """``cluster`` and its commands, ``up`` and ``auth``."""
    cluster = sub.add_parser("cluster", help="run the cluster shape of a mesh on this machine")
    actions = cluster.add_subparsers(dest="action", required=True, parser_class=Parser)
    up = actions.add_parser(
        "up",
        help="3 NATS nodes, PostgreSQL, 2 engines, evidence and dispatch on loopback",
    )
    up.add_argument("--config", type=Path, help="TOML settings file (defaults are embedded)")
    up.add_argument("--agency", help="agency id, the topic namespace (default: demo)")
    up.add_argument(
        "--data-dir",
        type=Path,
        help="NATS stores, PostgreSQL, keys and recordings (default: ./actimesh-data)",
    )
    up.add_argument("--engines", type=positive_int, default=2, help="engine processes (default 2)")
    up.add_argument(
        "--postgres-port", type=port, help="port of the managed PostgreSQL (default: a free one)"
    )
    up.add_argument(
        "--sim",
        type=positive_int,
        metavar="UNITS",
        help="also run a simulated fleet of this many cruiser crews, spread over the nodes",
    )
    fleet_flags(up)
    map_flags(up)
    up.add_argument(
        "--evidence-port",
        type=http_port,
        metavar="PORT",
        help="port of the evidence upload API (default from [evidence] port; 0: any)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every listener and route, with a node certificate from the data "
        "directory's CA (`actimesh certs init` first; as [broker] tls = true)",
    )

    auth = actions.add_parser(
        "auth",
        help="write the users (authorization.conf) and route login (routes.conf) every "
        "host of a deployed cluster includes, from the device registry",
    )
    auth.add_argument("--config", type=Path, help="TOML settings file (the agency, its rules)")
    auth.add_argument("--agency", help="agency id, if the registry has none yet (default: demo)")
    auth.add_argument("--data-dir", type=Path, help="the registry's data directory")
    auth.add_argument("--out", type=Path, required=True, help="folder to write the two files to")
    auth.add_argument(
        "--host",
        action="append",
        metavar="NAME",
        help="a node's host name, in the order of deploy/nats/nats-<n>.conf (repeat; "
        "default: those of deploy/)",
    )


def run(args: argparse.Namespace, console: Console) -> int:
    """``actimesh cluster up`` or ``auth``."""
    settings = load_settings(args.config, agency=args.agency, data_dir=args.data_dir)
    if args.action == "auth":
        return _auth(args, settings)
    from actimesh.runtime.cluster import ClusterPlan, run_cluster_up  # noqa: PLC0415 - fast --help

    dispatch = settings.dispatch
    if args.http_port is not None:
        dispatch = replace(dispatch, port=args.http_port)
    if args.no_http:
        dispatch = replace(dispatch, enabled=False)
    evidence = settings.evidence
    if args.evidence_port is not None:
        evidence = replace(evidence, port=args.evidence_port)
    settings = replace(settings, dispatch=dispatch, evidence=evidence)
    sim = (
        replace(
            sim_settings(args, args.sim, console),
            pre_roll_s=settings.media.pre_roll_s,
            media=settings.media,
            mqtt_protocol="3.1.1",
        )
        if args.sim
        else None
    )
    plan = ClusterPlan(engines=args.engines, postgres_port=args.postgres_port)
    run_async(run_cluster_up(settings, plan, sim, console, tls=args.tls))
    return EXIT_OK


def _auth(args: argparse.Namespace, settings: Settings) -> int:
    """``actimesh cluster auth``: prints what it wrote and what to do with it."""
    from actimesh.broker.nats.hosts import DEFAULT_HOSTS  # noqa: PLC0415 - fast --help
    from actimesh.security.provision import prepare_cluster_auth  # noqa: PLC0415

    hosts = tuple(args.host) if args.host else DEFAULT_HOSTS
    done = prepare_cluster_auth(settings.data_dir, settings.acl_policy(), args.out, hosts)
    print(f"wrote {done.authorization} ({len(done.users)} users) and {done.routes}")
    print(
        f"copy both to /etc/nats/ on every host ({', '.join(hosts)}), mode 0640 group nats, "
        "then `systemctl reload nats-server` there; the services' passwords are in "
        f"{done.secrets_dir}"
    )
    return EXIT_OK
