"""``actimesh certs``: the CA and certificates of the managed broker's TLS listener, kept
in the data directory, where ``actimesh up`` finds them; and the certificates of the
hosts of a NATS cluster (``certs node``), which the operator copies to each host."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from actimesh.cli._common import EXIT_FAILED, EXIT_OK, Parser, positive_int, registry_location
from actimesh.runtime.config import load_settings

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """``certs init|server|client|node|show``."""
    certs = sub.add_parser("certs", help="a CA and certificates for the broker's TLS listener")
    cverbs = certs.add_subparsers(dest="verb", required=True, parser_class=Parser)
    init = cverbs.add_parser("init", help="create the CA and the broker's certificate")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    server = cverbs.add_parser("server", help="issue the broker's certificate again")
    client = cverbs.add_parser("client", help="a client certificate for mutual TLS")
    client.add_argument("name", help="device or account id it is for")
    node = cverbs.add_parser(
        "node", help="a NATS cluster node's certificate (server and route client, mutual TLS)"
    )
    node.add_argument("name", help="the node's name, e.g. nats-1 (nodes/NAME.pem)")
    for parser in (init, server, node):
        parser.add_argument(
            "--host",
            action="append",
            default=[],
            metavar="NAME",
            help="a name or address devices use to reach the broker "
            "(repeat; localhost and 127.0.0.1 are always in)",
        )
    for parser in (init, server, client, node):
        parser.add_argument("--days", type=positive_int, help="validity in days")
    show = cverbs.add_parser("show", help="subject, names and validity of a certificate")
    show.add_argument("what", nargs="?", default="server", metavar="ca|server|NAME|PATH")
    for parser in cverbs.choices.values():
        registry_location(parser)


def run(args: argparse.Namespace, console: Console) -> int:  # noqa: ARG001 - prints plain lines
    """``actimesh certs VERB``: exit 1 when ``show`` finds the certificate expired."""
    from actimesh.security import certs  # noqa: PLC0415 - keep `--help` fast

    directory = load_settings(args.config, data_dir=args.data_dir).data_dir / certs.CERTS_DIR

    days = {} if getattr(args, "days", None) is None else {"days": args.days}
    if args.verb == "show":
        path = {"ca": directory / "ca.pem", "server": directory / "server.pem"}.get(args.what)
        if path is None:
            given = Path(args.what)
            path = given if given.suffix == ".pem" else directory / "clients" / f"{args.what}.pem"
        info = certs.describe(path)
        print(
            f"{info.path}\n  subject  {info.subject}\n  issuer   {info.issuer}\n"
            f"  valid    {info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d}"
            f"{' (EXPIRED)' if info.expired else ''}\n"
            f"  names    {', '.join(info.names) or '-'}\n  sha256   {info.sha256}"
        )
        return EXIT_FAILED if info.expired else EXIT_OK
    if args.verb == "init":
        ca = certs.init_ca(directory, force=args.force)
        print(f"CA: {ca.cert} (key {ca.key})")
    if args.verb in ("init", "server"):
        files = certs.issue_server(directory, hosts=tuple(args.host), **days)
        names = ", ".join(certs.server_names(files.cert))
        print(f"broker certificate: {files.cert} for {names}")
        print("`actimesh up` opens its TLS listener with it ([broker] tls_port, default 8883)")
        return EXIT_OK
    if args.verb == "node":
        files = certs.issue_node(directory, args.name, hosts=tuple(args.host), **days)
        names = ", ".join(certs.server_names(files.cert))
        print(f"node certificate: {files.cert} (key {files.key}) for {names}")
        print(f"install it on that host with the CA {directory / 'ca.pem'} (docs/OPERATIONS.md)")
        return EXIT_OK
    files = certs.issue_client(directory, args.name, **days)
    print(
        f"client certificate: {files.cert} (key {files.key}); with [broker] "
        "require_client_cert = true the broker asks every client for one"
    )
    return EXIT_OK
