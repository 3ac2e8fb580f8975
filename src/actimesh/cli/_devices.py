"""``actimesh devices``, ``integrators``, ``operators`` and ``services``: broker accounts in
the registry, applied to a running broker at once. Credentials are printed once, when
made (``devices import`` writes them to a 0600 file instead: :mod:`._fleet`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from actimesh.cli._common import EXIT_OK, Parser, registry_location
from actimesh.runtime.config import Settings, load_settings

if TYPE_CHECKING:
    from actimesh.security.provision import BrokerEndpoints
    from actimesh.security.registry import Credentials, DeviceCredentials, Registry

__all__ = ["add_parsers", "run"]


def _paired(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """``devices``, ``integrators`` and ``services``."""
    from actimesh.broker.messages import DeviceKind  # noqa: PLC0415 - keep `--help` fast

    devices = sub.add_parser(
        "devices",
        help="broker accounts of devices: add, import, export, list, remove, rotate, "
        "disable, enable (applied live)",
    )
    verbs = devices.add_subparsers(dest="verb", required=True, parser_class=Parser)
    add = verbs.add_parser("add", help="register a device; prints its credentials once")
    add.add_argument("device_id", metavar="ID", help="device id, also its MQTT username")
    add.add_argument("--kind", required=True, choices=[k.value for k in DeviceKind])
    add.add_argument("--unit", help="the unit (cruiser crew) it belongs to")
    add.add_argument("--call-sign", help="the radio call sign it rides with (e.g. 12A3)")
    add.add_argument("--officer", help="who carries or drives it (badge number or name)")
    add.add_argument(
        "--paired",
        type=_paired,
        default=(),
        metavar="A,B",
        help="registered devices it starts locally (its own cameras)",
    )
    for verb, text in (
        ("remove", "remove it: the broker drops it at once"),
        ("rotate", "new password and key; the old ones stop working"),
        ("enable", "let a disabled or quarantined device log in again"),
    ):
        verbs.add_parser(verb, help=text).add_argument("device_id", metavar="ID")
    disable = verbs.add_parser("disable", help="refuse it at the broker (dropped at once)")
    disable.add_argument("device_id", metavar="ID")
    disable.add_argument("--reason", default="disabled by an operator", help="shown in list")
    verbs.add_parser("list", help="every registered device (no secrets)")
    from actimesh.cli._fleet import add_verbs  # noqa: PLC0415

    add_verbs(verbs)

    integrators = sub.add_parser(
        "integrators",
        help="read-only broker accounts int-NAME: activations, telemetry only if granted",
    )
    iverbs = integrators.add_subparsers(dest="verb", required=True, parser_class=Parser)
    iadd = iverbs.add_parser("add", help="create int-NAME; prints its password once")
    iadd.add_argument("name")
    iadd.add_argument("--telemetry", action="store_true", help="may also read positions")
    iverbs.add_parser("remove", help="delete it: the broker drops it at once").add_argument("name")
    iverbs.add_parser("list", help="every integrator account")

    operators = sub.add_parser(
        "operators",
        help="read-only broker accounts op-NAME for people running the mesh: activations, "
        "alerts and dead letters",
    )
    overbs = operators.add_subparsers(dest="verb", required=True, parser_class=Parser)
    overbs.add_parser("add", help="create op-NAME; prints its password once").add_argument("name")
    overbs.add_parser("remove", help="delete it: the broker drops it at once").add_argument("name")
    overbs.add_parser("list", help="every operator account")

    services = sub.add_parser(
        "services",
        help="actimesh's own broker accounts (svc-engine, "
        "svc-dispatch, svc-monitor) for an external broker",
    )
    sverbs = services.add_subparsers(dest="verb", required=True, parser_class=Parser)
    sinit = sverbs.add_parser(
        "init",
        help="create them (existing ones are kept) and render the broker's password and "
        "Dynamic Security files",
    )
    sinit.add_argument("--rotate", action="store_true", help="new passwords for all of them")
    for parser in (
        *verbs.choices.values(),
        *iverbs.choices.values(),
        *overbs.choices.values(),
        sinit,
    ):
        registry_location(parser)


def _plain_address(settings: Settings) -> str:
    """The broker a new account is told to use: the managed broker running on this data
    directory (its real listener, whatever flag or file started it), else the one the
    settings name (``[broker] url``, or the managed broker's ``host`` and ``port``)."""
    from actimesh.broker.reload import running_listener  # noqa: PLC0415 - keep `--help` fast
    from actimesh.security.provision import BROKER_DIR  # noqa: PLC0415

    running = running_listener(settings.data_dir / BROKER_DIR)
    if running is not None:
        host, port = running
        return f"mqtt://{host}:{port}"
    if settings.broker_url is not None:
        return settings.broker_url
    return f"mqtt://{settings.broker_host}:{settings.broker_port}"


def _endpoints(settings: Settings) -> BrokerEndpoints:
    from actimesh.security import certs  # noqa: PLC0415 - keep `--help` fast
    from actimesh.security.provision import BrokerEndpoints  # noqa: PLC0415

    plain = _plain_address(settings)
    b = settings.broker
    cert = b.server_cert or settings.data_dir / certs.CERTS_DIR / "server.pem"
    if settings.broker_url is not None or b.tls is False or not cert.is_file():
        return BrokerEndpoints(plain)
    names = [n for n in certs.server_names(cert) if n not in ("localhost", "127.0.0.1", "::1")]
    host = names[0] if names else b.tls_host
    ca = b.ca_file or settings.data_dir / certs.CERTS_DIR / "ca.pem"
    return BrokerEndpoints(plain, f"mqtts://{host}:{b.tls_port}", ca)


def endpoint_lines(settings: Settings) -> list[str]:
    """Where devices reach the broker, as ``devices add`` prints it (for ``import``)."""
    endpoints = _endpoints(settings)
    lines = [f"  broker       {endpoints.plain}"]
    if endpoints.tls is not None:
        lines.append(f"  broker       {endpoints.tls}  (TLS; CA certificate {endpoints.ca})")
    return lines


def engine_key_line(data_dir: Path) -> list[str]:
    """The engine's public key line, when ``up`` has made the key."""
    key_file = data_dir / "keys" / "engine-signing.pub"
    if not key_file.is_file():
        return []
    key = key_file.read_text().strip()
    return [f"  engine key   {key}  (Ed25519: commands must verify with it)"]


def run(args: argparse.Namespace, console: Console) -> int:  # noqa: ARG001 - prints plain lines
    """``actimesh devices|integrators|services VERB``."""
    from actimesh.security import Registry  # noqa: PLC0415
    from actimesh.security.provision import apply_to_broker, credential_lines  # noqa: PLC0415

    settings = load_settings(args.config, data_dir=args.data_dir)
    data_dir = settings.data_dir
    if args.command == "services":
        return _services(args, settings)
    if args.command == "devices" and args.verb in ("import", "export"):
        from actimesh.cli import _fleet  # noqa: PLC0415

        verb = _fleet.import_fleet if args.verb == "import" else _fleet.export_fleet
        return verb(args, settings)
    with Registry.open(data_dir) as registry:
        if args.verb == "list":
            rows: list[Any] = (
                registry.devices()
                if args.command == "devices"
                else registry.integrators()
                if args.command == "integrators"
                else registry.operators()
            )
            for row in rows:
                print(_describe(row))
            print(f"{len(rows)} {args.command} in {registry.path}")
            return EXIT_OK
        creds: Any = None
        if args.command == "devices":
            creds = _device_verb(registry, args)
        elif args.command == "operators":
            creds = _operator_verb(registry, args)
        elif args.verb == "add":
            creds = registry.add_integrator(args.name, telemetry=args.telemetry)
            grant = "activations and telemetry" if args.telemetry else "activations only"
            print(f"integrator {creds.username} created ({grant})")
        else:
            registry.remove_integrator(args.name)
            print(f"integrator {args.name} removed")
    if creds is not None:
        engine_key = _engine_key(settings) if args.command == "devices" else None
        for line in credential_lines(creds, _endpoints(settings), engine_key=engine_key):
            print(line)
    pid = apply_to_broker(data_dir, settings.acl_policy())
    print(
        f"broker: applied live (pid {pid})"
        if pid is not None
        else f"broker: not running on {data_dir}; applies at its next start"
    )
    return EXIT_OK


def _engine_key(settings: Settings) -> str | None:
    """The engine's public key a device must verify commands with. A device added before
    the first ``up`` needs it too: the key is created here then, where ``up`` (and every
    engine on this data directory) will find and use it. None when the engine runs
    elsewhere (``[broker] url``) and its key was never copied here."""
    from actimesh.security.signing import (  # noqa: PLC0415 - keep `--help` fast
        engine_key_paths,
        load_or_create_engine_key,
        public_key_hex,
    )

    private, public = engine_key_paths(settings.data_dir)
    if settings.broker_url is None or private.is_file():
        return public_key_hex(load_or_create_engine_key(settings.data_dir).public_key())
    return public.read_text(encoding="ascii").strip() if public.is_file() else None


def _device_verb(registry: Registry, args: argparse.Namespace) -> DeviceCredentials | None:
    """``actimesh devices add|rotate|remove|disable|enable``; new credentials, if any."""
    from actimesh.broker.messages import DeviceKind  # noqa: PLC0415 - keep `--help` fast

    device_id = args.device_id
    if args.verb == "add":
        creds = registry.add(
            device_id,
            DeviceKind(args.kind),
            unit=args.unit,
            paired=args.paired,
            call_sign=args.call_sign,
            officer=args.officer,
        )
        print(f"device {device_id} registered")
        return creds
    if args.verb == "rotate":
        print(f"device {device_id}: new credentials")
        return registry.rotate(device_id)
    if args.verb == "disable":
        done = registry.disable(device_id, args.reason)
        print(f"device {device_id} " + ("disabled" if done else "was disabled already"))
    elif args.verb == "enable":
        done = registry.enable(device_id)
        print(f"device {device_id} " + ("enabled" if done else "was not disabled"))
    else:
        unpaired = ", ".join(registry.remove(device_id))
        print(
            f"device {device_id} removed"
            + (f" (no longer paired with {unpaired})" if unpaired else "")
        )
    return None


def _operator_verb(registry: Registry, args: argparse.Namespace) -> Credentials | None:
    """``actimesh operators add|remove``; the new account's credentials, if any."""
    if args.verb == "add":
        creds = registry.add_operator(args.name)
        print(f"operator {creds.username} created (activations, alerts and dead letters)")
        return creds
    registry.remove_operator(args.name)
    print(f"operator {args.name} removed")
    return None


def _services(args: argparse.Namespace, settings: Settings) -> int:
    """The service accounts for processes that log in to a broker actimesh does not run."""
    from actimesh.security import SECRETS_DIR, Registry  # noqa: PLC0415
    from actimesh.security.provision import BROKER_DIR, apply_to_broker  # noqa: PLC0415

    data_dir = settings.data_dir
    with Registry.open(data_dir) as registry:
        creds = registry.ensure_service_accounts(
            data_dir / SECRETS_DIR, keep_existing=not args.rotate
        )
    for name in creds:
        print(f"{name}: password in {data_dir / SECRETS_DIR / (name + '.password')}")
    apply_to_broker(data_dir, settings.acl_policy())
    broker = data_dir / BROKER_DIR
    print(
        f"broker files: password_file {broker / 'passwd'}, Dynamic Security config "
        f"{broker / 'dynsec.json'} (point the broker's configuration at them, "
        "deploy/mosquitto/actimesh.conf, and restart it)"
    )
    return EXIT_OK


def _describe(row: Any) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.rotated))
    if hasattr(row, "device_id"):
        paired = ",".join(row.paired) or "-"
        sim = " (simulated)" if row.simulated else ""
        off = f" DISABLED ({row.disabled})" if row.disabled else ""
        who = f" call sign {row.call_sign}" if row.call_sign else ""
        who += f" officer {row.officer}" if row.officer else ""
        return (
            f"{row.device_id:<24} {row.kind.value:<9} unit {row.unit or '-':<12}{who} "
            f"paired {paired:<20} key {row.public_key[:16]}… rotated {when}{sim}{off}"
        )
    if row.role.value == "operator":
        grant = "activations+alerts+deadletters"
    else:
        grant = "activations+alerts+telemetry" if row.telemetry else "activations+alerts"
    return f"{row.name:<24} {grant:<22} created/rotated {when}"
