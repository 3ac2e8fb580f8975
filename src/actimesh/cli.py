"""The ``actimesh`` command.

    actimesh up [--sim N]         broker (managed Mosquitto), engine, dispatch map, fleet
    actimesh sim --broker URL     a simulated fleet against any broker
    actimesh drill                self-check on a real broker; non-zero exit on any miss
    actimesh bench [--sweep]      latency and ingest against the broker's own limit
    actimesh fuzz [--count N]     hostile payloads against the codec and the engine's intake
    actimesh audit verify|head|link|export|retain
                                  the tamper-evident ledger: check it, cases, retention
    actimesh devices add|list|remove|rotate|disable|enable
    actimesh integrators add|list|remove
    actimesh certs init|server|client|show
                                  broker accounts (shown once) and the TLS listener's CA
    actimesh users add|list|disable|enable|remove|passwd
    actimesh tokens create|list|revoke
                                  dispatch map logins and integrator API tokens

Errors an operator can cause (bad flags, config, a missing broker) print one line saying
what is wrong and how to fix it, with no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from rich.console import Console

from actimesh import __version__
from actimesh.devices.simulator import SimSettings
from actimesh.errors import ActimeshError, ConfigError, first_error
from actimesh.geofence import InclusionMode, InclusionPolicy
from actimesh.runtime.config import Settings, load_settings

if TYPE_CHECKING:
    from actimesh.security.provision import BrokerEndpoints
    from actimesh.security.registry import DeviceCredentials, Registry
    from actimesh.triggers.ledger import Head

__all__ = ["main"]

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"actimesh: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def _http_port(text: str) -> int:
    return 0 if text.strip() == "0" else _port(text)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="actimesh", description="Camera activation mesh for police fleets.")
    parser.add_argument("--version", action="version", version=f"actimesh {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", help="run the broker, the trigger engine and optionally a fleet")
    up.add_argument("--config", type=Path, help="TOML settings file (defaults are embedded)")
    up.add_argument("--agency", help="agency id, the topic namespace (default: demo)")
    up.add_argument(
        "--data-dir", type=Path, help="ledger, broker and recordings (default: ./actimesh-data)"
    )
    up.add_argument(
        "--broker",
        metavar="URL",
        help="use the broker at mqtt://HOST:PORT instead of a managed Mosquitto",
    )
    up.add_argument(
        "--broker-port", type=_port, help="port of the managed Mosquitto (default 1883)"
    )
    up.add_argument(
        "--sim",
        type=_positive_int,
        metavar="UNITS",
        help="also run a simulated fleet of this many cruiser crews",
    )
    up.add_argument("--seed", type=int, help="random seed of the simulated fleet")
    up.add_argument(
        "--http-host",
        metavar="HOST",
        help="address of the dispatch map and API "
        "(default 127.0.0.1: the API can activate cameras)",
    )
    up.add_argument(
        "--http-port",
        type=_http_port,
        metavar="PORT",
        help="port of the dispatch map and API (default 8080; 0: any)",
    )
    up.add_argument("--no-http", action="store_true", help="run without the dispatch map and API")

    engine = sub.add_parser("engine", help="run one trigger engine against a broker")
    engine.add_argument("--broker", metavar="URL", required=True, help="mqtt://HOST:PORT")
    engine.add_argument("--config", type=Path, help="TOML settings file")
    engine.add_argument("--agency", help="agency id (default: demo)")
    engine.add_argument("--engine-id", help="this replica's id (default: engine-1)")
    engine.add_argument("--data-dir", type=Path, help="ledger location (shared by replicas)")

    sim = sub.add_parser("sim", help="run a simulated fleet against a broker")
    sim.add_argument("--broker", metavar="URL", required=True, help="mqtt://HOST:PORT")
    sim.add_argument("--agency", default="demo", help="agency id (default: demo)")
    sim.add_argument("--units", type=_positive_int, default=8, help="cruiser crews (default 8)")
    sim.add_argument(
        "--data-dir",
        type=Path,
        default=Path("actimesh-data"),
        help="where simulated cameras store recordings",
    )
    sim.add_argument("--seed", type=int, help="random seed")
    sim.add_argument(
        "--engine-key",
        type=Path,
        metavar="FILE",
        help="the engine's public key, engine-signing.pub (default: "
        "DATA_DIR/keys/engine-signing.pub)",
    )

    drill = sub.add_parser("drill", help="self-check: fire triggers at known geometry, verify")
    drill.add_argument("--rounds", type=_positive_int, default=5, help="rounds (default 5)")
    drill.add_argument(
        "--data-dir",
        type=Path,
        help="keep recordings and ledger here (default: a temporary folder)",
    )
    drill.add_argument(
        "--faults",
        action="store_true",
        help="run the fault drill instead: "
        "broker restarts and kills, engine kills, replicas, outages",
    )
    drill.add_argument("--short", action="store_true", help="with --faults: fewer triggers (CI)")
    drill.add_argument("--only", metavar="SCENARIO", help="with --faults: one scenario by name")
    drill.add_argument(
        "--policy",
        choices=[m.value for m in InclusionMode],
        default=InclusionMode.INCLUSIVE.value,
        help="accuracy inclusion policy (default inclusive)",
    )
    drill.add_argument(
        "--media",
        choices=("synthetic", "real"),
        default="synthetic",
        help="real: live H.264 cameras through offload, verification "
        "and retention (about 40 s; evidence kept in --data-dir)",
    )
    _audit_parser(sub)
    _bench_parser(sub)
    _fuzz_parser(sub)
    _security_parsers(sub)
    from actimesh.dispatch.commands import add_parsers  # noqa: PLC0415 - keep `--help` fast

    add_parsers(sub, _Parser)
    return parser


def _bench_parser(sub: Any) -> None:
    from actimesh.bench import BenchSettings  # noqa: PLC0415 - keep `--help` fast

    d = BenchSettings()
    bench = sub.add_parser("bench", help="benchmark the engine against the broker's own limit")
    bench.add_argument(
        "--devices",
        type=_positive_int,
        default=d.devices,
        help=f"fleet size (default {d.devices:,})",
    )
    bench.add_argument(
        "--rate",
        type=float,
        default=d.rate_hz,
        metavar="HZ",
        help=f"telemetry per device and second (default {d.rate_hz:g})",
    )
    bench.add_argument(
        "--triggers",
        type=float,
        default=d.triggers_per_s,
        metavar="PER_S",
        help=f"triggers per second (default {d.triggers_per_s:g})",
    )
    bench.add_argument(
        "--duration",
        type=float,
        default=d.duration_s,
        metavar="S",
        help=f"measured seconds under load (default {d.duration_s:g})",
    )
    bench.add_argument(
        "--flood",
        type=_positive_int,
        default=d.flood_messages,
        metavar="N",
        help=f"messages per flood (default {d.flood_messages:,})",
    )
    bench.add_argument("--sweep", action="store_true", help="fleets of 1,000, 10,000, 100,000")
    bench.add_argument(
        "--search", action="store_true", help="also search the highest lossless ingest rates"
    )
    bench.add_argument("--smoke", action="store_true", help="a few seconds, 200 devices (CI)")
    bench.add_argument(
        "--publisher",
        choices=["raw", "paho"],
        default=d.publisher,
        help="load generator's client (default raw)",
    )
    bench.add_argument(
        "--no-acks", action="store_true", help="the probe's cameras do not acknowledge commands"
    )
    bench.add_argument(
        "--trace", action="store_true", help="split each trigger's latency into its hops"
    )
    bench.add_argument("--seed", type=int, default=d.seed, help="fleet seed")
    bench.add_argument(
        "--json",
        type=Path,
        default=Path("bench-report.json"),
        help="JSON report (default bench-report.json)",
    )
    bench.add_argument(
        "--plot",
        type=Path,
        default=Path("bench-latency.png"),
        help="latency plot, PNG (default bench-latency.png)",
    )


def _bench(args: argparse.Namespace, console: Console) -> int:
    from actimesh.bench import BenchSettings, bench  # noqa: PLC0415 - keep `--help` fast

    base = BenchSettings.smoke() if args.smoke else BenchSettings()
    overrides: dict[str, Any] = {
        "publisher": args.publisher,
        "acks": not args.no_acks,
        "search": args.search,
        "seed": args.seed,
        "trace": args.trace,
    }
    if not args.smoke:
        overrides |= {
            "devices": args.devices,
            "rate_hz": args.rate,
            "triggers_per_s": args.triggers,
            "duration_s": args.duration,
            "flood_messages": args.flood,
        }
    settings = replace(base, **overrides)
    _run(bench(settings, console, sweep=args.sweep, json_path=args.json, plot_path=args.plot))
    return EXIT_OK


def _fuzz_parser(sub: Any) -> None:
    fuzz = sub.add_parser(
        "fuzz",
        help="hostile payloads against the codec and the engine's intake; exit 1 on any finding",
    )
    fuzz.add_argument(
        "--count", type=_positive_int, default=1_000_000, help="payloads (default 1,000,000)"
    )
    fuzz.add_argument(
        "--seed", type=int, default=0, help="the same seed makes the same payloads (default 0)"
    )
    fuzz.add_argument(
        "--target",
        choices=["codec", "intake", "all"],
        default="all",
        help="the codec, a real engine's intake, or both (default)",
    )
    fuzz.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    fuzz.add_argument(
        "--replay",
        type=int,
        metavar="INDEX",
        help="run only case INDEX of --seed, to reproduce a finding",
    )


def _fuzz(args: argparse.Namespace) -> int:
    from actimesh.fuzz import FuzzSettings, run_fuzz  # noqa: PLC0415 - keep `--help` fast

    if args.replay is not None and args.replay < 0:
        raise ConfigError(f"--replay {args.replay}: give a case number, 0 or more")
    settings = FuzzSettings(
        count=args.count, seed=args.seed, target=args.target, replay=args.replay
    )
    tenth = max(1, args.count // 10)
    shown = [0]

    def progress(done: int, seconds: float) -> None:
        if done // tenth > shown[0]:
            shown[0] = done // tenth
            print(f"  {done:,} of {args.count:,} cases, {seconds:.0f} s", flush=True)

    report = _run(run_fuzz(settings, progress))
    for line in report.lines():
        print(line)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(
                f"cannot write the report to {args.json}: {exc.strerror}; "
                "give a --json path in a writable folder"
            ) from exc
    return EXIT_OK if report.ok else EXIT_FAILED


def _head(text: str) -> Head:
    from actimesh.audit import parse_head  # noqa: PLC0415 - keep `--help` fast

    try:
        return parse_head(text)
    except ActimeshError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _audit_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    audit = sub.add_parser("audit", help="verify, export and prune the tamper-evident ledger")
    verbs = audit.add_subparsers(dest="audit", required=True, parser_class=_Parser)
    helps = {
        "verify": "check every record and the tables; exit 1 naming any tampering",
        "head": "print the chain's head (SEQ:HASH): record it elsewhere, verify against it",
        "link": "link an activation to a case, so retention keeps it",
        "export": "write one case's records with their hashes (JSON Lines and CSV)",
        "retain": "apply retention: redact and delete what is old and not linked to a case",
    }
    parsers = {verb: verbs.add_parser(verb, help=text) for verb, text in helps.items()}
    for each in parsers.values():
        each.add_argument("--config", type=Path, help="TOML settings file (data_dir, [retention])")
        where = each.add_mutually_exclusive_group()
        where.add_argument(
            "--data-dir",
            type=Path,
            help="data directory holding ledger.sqlite3 (default ./actimesh-data)",
        )
        where.add_argument("--ledger", type=Path, help="the ledger file itself")
    parsers["verify"].add_argument(
        "--head",
        type=_head,
        metavar="SEQ:HASH",
        help="a head printed earlier by `actimesh audit head`: also "
        "detects records cut off the end",
    )
    for name in ("link", "export"):
        parsers[name].add_argument("--case", required=True, help="case number")
    parsers["link"].add_argument("--activation", required=True, metavar="AID", help="activation id")
    parsers["link"].add_argument(
        "--by", required=True, metavar="NAME", help="who links it (recorded in the chain)"
    )
    parsers["export"].add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder to write the files into"
    )
    parsers["retain"].add_argument(
        "--dry-run", action="store_true", help="report what would go, change nothing"
    )
    parsers["retain"].add_argument(
        "--recordings",
        type=Path,
        metavar="DIR",
        help="also prune this recording store (<device>/<recording>/ folders)",
    )


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; SIGTERM cancels it the same way Ctrl-C does."""

    async def wrapper() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    return asyncio.run(wrapper())


def _command(args: argparse.Namespace, console: Console) -> int:
    from actimesh.runtime import run_engine, run_sim, run_up  # noqa: PLC0415 - keep `--help` fast

    if args.command == "up":
        settings = load_settings(
            args.config,
            agency=args.agency,
            data_dir=args.data_dir,
            broker_url=args.broker,
            broker_port=args.broker_port,
        )
        http = {"host": args.http_host, "port": args.http_port}
        http = {k: v for k, v in http.items() if v is not None}
        if args.no_http:
            http["enabled"] = False
        if http:
            settings = replace(settings, dispatch=replace(settings.dispatch, **http))
        sim = (
            SimSettings(
                units=args.sim,
                seed=args.seed,
                pre_roll_s=settings.media.pre_roll_s,
                media=settings.media,
            )
            if args.sim
            else None
        )
        _run(run_up(settings, sim, console))
        return EXIT_OK
    if args.command == "engine":
        settings = load_settings(
            args.config, agency=args.agency, data_dir=args.data_dir, broker_url=args.broker
        )
        if args.engine_id:
            settings = replace(settings, engine=replace(settings.engine, engine_id=args.engine_id))
        _run(run_engine(settings, console))
        return EXIT_OK
    if args.command == "sim":
        sim = SimSettings(units=args.units, seed=args.seed)
        _run(
            run_sim(
                agency=args.agency,
                broker_url=args.broker,
                data_dir=args.data_dir,
                sim=sim,
                console=console,
                engine_key=args.engine_key,
            )
        )
        return EXIT_OK
    if args.command == "drill":
        return _drill(args, console)
    if args.command in ("bench", "fuzz"):
        return _bench(args, console) if args.command == "bench" else _fuzz(args)
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _drill(args: argparse.Namespace, console: Console) -> int:
    from actimesh.drills import run_drill, scratch_dir  # noqa: PLC0415 - keep `--help` fast

    if args.faults and args.media == "real":
        raise ConfigError("--faults and --media real are separate drills: run one at a time")
    if args.faults:
        from actimesh.drills import SCENARIOS, run_fault_drill  # noqa: PLC0415

        names = [name for name, _, _ in SCENARIOS]
        if args.only is not None and args.only not in names:
            raise ConfigError(f"--only {args.only!r}: choose one of {', '.join(names)}")
        with scratch_dir(args.data_dir) as root:
            faults = _run(run_fault_drill(console, root=root, short=args.short, only=args.only))
        return EXIT_OK if faults.ok else EXIT_FAILED
    if args.media == "real":
        from actimesh.drills.media import run_media_drill  # noqa: PLC0415 - loads PyAV

        with scratch_dir(args.data_dir) as root:
            media = _run(run_media_drill(console, root=root))
        if args.data_dir is not None and media.evidence_dir is not None:
            ledger = args.data_dir / "ledger.sqlite3"
            console.print(f"evidence kept under {media.evidence_dir} (ledger {ledger})")
        return EXIT_OK if media.ok else EXIT_FAILED
    policy = InclusionPolicy(mode=InclusionMode(args.policy))
    report = _run(run_drill(console, rounds=args.rounds, data_dir=args.data_dir, policy=policy))
    return EXIT_OK if report.ok else EXIT_FAILED


def _audit(args: argparse.Namespace) -> int:
    from actimesh import audit  # noqa: PLC0415 - keep `--help` fast

    settings = load_settings(args.config, data_dir=args.data_dir)
    ledger = args.ledger or settings.ledger_path
    if args.audit == "head":
        print(audit.read_head(ledger))
        return EXIT_OK
    if args.audit == "verify":
        report = audit.verify_ledger(ledger, head=args.head)
        for finding in report.findings:
            print(finding)
        if report.ok:
            print(report.summary())
            return EXIT_OK
        print(f"actimesh: {report.summary()}", file=sys.stderr)
        return EXIT_FAILED
    if args.audit == "link":
        seq, new = _run(audit.link_case(ledger, args.case, args.activation, args.by))
        done = "linked" if new else "already linked"
        print(f"{done}: activation {args.activation} to case {args.case} (record {seq})")
        return EXIT_OK
    if args.audit == "export":
        out = audit.export_case(ledger, args.case, args.out)
        print(
            f"exported {out.records} records ({len(out.activations)} activations) of case "
            f"{args.case} to {out.jsonl}, {out.csv.name} and {out.manifest.name}"
        )
        return EXIT_OK
    retained = _run(
        audit.retain(
            ledger, settings.retention.days, recordings=args.recordings, dry_run=args.dry_run
        )
    )
    print(retained.summary())
    return EXIT_FAILED if retained.problems else EXIT_OK


def _paired(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _security_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    from actimesh.broker.messages import DeviceKind  # noqa: PLC0415 - keep `--help` fast

    def where(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--config", type=Path, help="TOML settings file (data_dir, [broker] ports)"
        )
        parser.add_argument(
            "--data-dir",
            type=Path,
            help="data directory holding registry.sqlite3 (default ./actimesh-data)",
        )

    devices = sub.add_parser(
        "devices",
        help="broker accounts of devices: add, list, remove, rotate, disable, enable "
        "(applied live)",
    )
    verbs = devices.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    add = verbs.add_parser("add", help="register a device; prints its credentials once")
    add.add_argument("device_id", metavar="ID", help="device id, also its MQTT username")
    add.add_argument("--kind", required=True, choices=[k.value for k in DeviceKind])
    add.add_argument("--unit", help="the unit (cruiser crew) it belongs to")
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

    integrators = sub.add_parser(
        "integrators",
        help="read-only broker accounts int-NAME: activations, telemetry only if granted",
    )
    iverbs = integrators.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    iadd = iverbs.add_parser("add", help="create int-NAME; prints its password once")
    iadd.add_argument("name")
    iadd.add_argument("--telemetry", action="store_true", help="may also read positions")
    iverbs.add_parser("remove", help="delete it: the broker drops it at once").add_argument("name")
    iverbs.add_parser("list", help="every integrator account")

    services = sub.add_parser(
        "services",
        help="actimesh's own broker accounts (svc-engine, "
        "svc-dispatch, svc-monitor) for an external broker",
    )
    sverbs = services.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    sinit = sverbs.add_parser(
        "init",
        help="create them (existing ones are kept) and render the broker's password and "
        "Dynamic Security files",
    )
    sinit.add_argument("--rotate", action="store_true", help="new passwords for all of them")

    certs = sub.add_parser("certs", help="a CA and certificates for the broker's TLS listener")
    cverbs = certs.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    init = cverbs.add_parser("init", help="create the CA and the broker's certificate")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    server = cverbs.add_parser("server", help="issue the broker's certificate again")
    client = cverbs.add_parser("client", help="a client certificate for mutual TLS")
    client.add_argument("name", help="device or account id it is for")
    for parser in (init, server):
        parser.add_argument(
            "--host",
            action="append",
            default=[],
            metavar="NAME",
            help="a name or address devices use to reach the broker "
            "(repeat; localhost and 127.0.0.1 are always in)",
        )
    for parser in (init, server, client):
        parser.add_argument("--days", type=_positive_int, help="validity in days")
    show = cverbs.add_parser("show", help="subject, names and validity of a certificate")
    show.add_argument("what", nargs="?", default="server", metavar="ca|server|NAME|PATH")
    for parser in (
        *verbs.choices.values(),
        *iverbs.choices.values(),
        *cverbs.choices.values(),
        sinit,
    ):
        where(parser)


def _endpoints(settings: Settings) -> BrokerEndpoints:
    from actimesh.security import certs  # noqa: PLC0415 - keep `--help` fast
    from actimesh.security.provision import BrokerEndpoints  # noqa: PLC0415

    plain = f"mqtt://{settings.broker_host}:{settings.broker_port}"
    b = settings.broker
    cert = b.server_cert or settings.data_dir / certs.CERTS_DIR / "server.pem"
    if b.tls is False or not cert.is_file():
        return BrokerEndpoints(plain)
    names = [n for n in certs.server_names(cert) if n not in ("localhost", "127.0.0.1", "::1")]
    host = names[0] if names else b.tls_host
    ca = b.ca_file or settings.data_dir / certs.CERTS_DIR / "ca.pem"
    return BrokerEndpoints(plain, f"mqtts://{host}:{b.tls_port}", ca)


def _security(args: argparse.Namespace) -> int:
    from actimesh.security import Registry, certs  # noqa: PLC0415
    from actimesh.security.provision import apply_to_broker, credential_lines  # noqa: PLC0415

    settings = load_settings(args.config, data_dir=args.data_dir)
    data_dir = settings.data_dir
    if args.command == "certs":
        return _certs(args, data_dir / certs.CERTS_DIR)
    if args.command == "services":
        return _services(args, settings)
    with Registry.open(data_dir) as registry:
        if args.verb == "list":
            rows = registry.devices() if args.command == "devices" else registry.integrators()
            for row in rows:
                print(_describe(row))
            print(f"{len(rows)} {args.command} in {registry.path}")
            return EXIT_OK
        creds: Any = None
        if args.command == "devices":
            creds = _device_verb(registry, args)
        elif args.verb == "add":
            creds = registry.add_integrator(args.name, telemetry=args.telemetry)
            grant = "activations and telemetry" if args.telemetry else "activations only"
            print(f"integrator {creds.username} created ({grant})")
        else:
            registry.remove_integrator(args.name)
            print(f"integrator {args.name} removed")
    if creds is not None:
        key_file = data_dir / "keys" / "engine-signing.pub"
        engine_key = key_file.read_text().strip() if key_file.is_file() else None
        for line in credential_lines(creds, _endpoints(settings), engine_key=engine_key):
            print(line)
    pid = apply_to_broker(data_dir, settings.acl_policy())
    print(
        f"broker: applied live (pid {pid})"
        if pid is not None
        else f"broker: not running on {data_dir}; applies at its next start"
    )
    return EXIT_OK


def _device_verb(registry: Registry, args: argparse.Namespace) -> DeviceCredentials | None:
    """``actimesh devices add|rotate|remove|disable|enable``; new credentials, if any."""
    from actimesh.broker.messages import DeviceKind  # noqa: PLC0415 - keep `--help` fast

    device_id = args.device_id
    if args.verb == "add":
        creds = registry.add(device_id, DeviceKind(args.kind), unit=args.unit, paired=args.paired)
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
        return (
            f"{row.device_id:<24} {row.kind.value:<9} unit {row.unit or '-':<12} "
            f"paired {paired:<20} key {row.public_key[:16]}… rotated {when}{sim}{off}"
        )
    grant = "activations+telemetry" if row.telemetry else "activations"
    return f"{row.name:<24} {grant:<22} created/rotated {when}"


def _certs(args: argparse.Namespace, directory: Path) -> int:
    from actimesh.security import certs  # noqa: PLC0415 - keep `--help` fast

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
    files = certs.issue_client(directory, args.name, **days)
    print(
        f"client certificate: {files.cert} (key {files.key}); with [broker] "
        "require_client_cert = true the broker asks every client for one"
    )
    return EXIT_OK


def _accounts(args: argparse.Namespace) -> int:
    from actimesh.dispatch import commands  # noqa: PLC0415 - keep `--help` fast

    settings = load_settings(args.config, data_dir=args.data_dir)
    return commands.run(
        args,
        data_dir=settings.data_dir,
        ledger_path=settings.ledger_path,
        out=sys.stdout,
        stdin=sys.stdin,
        runner=_run,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``actimesh`` console script."""
    args = _parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Logs and CI are not terminals: give tables room instead of rich's 80-column default.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    try:
        if args.command in ("users", "tokens"):
            return _accounts(args)
        if args.command in ("devices", "integrators", "services", "certs"):
            return _security(args)
        return _audit(args) if args.command == "audit" else _command(args, console)
    except KeyboardInterrupt:
        print("actimesh: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:  # SIGTERM
        print("actimesh: stopped", file=sys.stderr)
        return EXIT_OK
    except Exception as exc:
        error = first_error(exc)
        if error is None:
            raise
        print(f"actimesh: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
