"""``actimesh up``, ``engine``, ``dispatch``, ``evidence`` and ``sim``: the commands that
run a mesh, or part of one, until stopped. Their flags only override the settings file;
the runtime does the rest."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from actimesh.cli._common import EXIT_OK, Parser, http_port, port, positive_int, run_async
from actimesh.devices.reporting import ReportingSettings
from actimesh.devices.simulator import DEFAULT_SEED, SimSettings
from actimesh.devices.simulator_streets import DEFAULT_MAP, StreetMap
from actimesh.errors import ConfigError
from actimesh.runtime.config import (
    MQTT_PROTOCOLS,
    Settings,
    load_settings,
    reporting_settings,
)

__all__ = ["add_parsers", "run"]


_LEDGER_URL_HELP = (
    "keep the ledger in PostgreSQL at postgresql://USER@HOST:PORT/DATABASE instead of "
    "DATA_DIR/ledger.sqlite3 (the [ledger] url; the password belongs in ~/.pgpass, not here)"
)


def _login_flags(parser: argparse.ArgumentParser) -> None:
    """``--username``/``--password-file``: the account a service logs in as, over
    ``[broker] username``/``password_file`` (units sharing one settings file)."""
    parser.add_argument("--username", metavar="ACCOUNT", help="log in as (svc-engine …)")
    parser.add_argument(
        "--password-file", type=Path, metavar="FILE", help="its password, one line, mode 0600"
    )


def _with_login(settings: Settings, args: argparse.Namespace) -> Settings:
    if args.username is None and args.password_file is None:
        return settings
    broker = replace(settings.broker, username=args.username, password_file=args.password_file)
    return replace(settings, broker=broker)


_MQTT_PROTOCOL_FLAG = ("--mqtt-protocol",)
_MQTT_PROTOCOL_OPTIONS: dict[str, Any] = {
    "choices": MQTT_PROTOCOLS,
    "help": "MQTT version of the simulated devices, dispatch and monitor "
    "(the [broker] mqtt_protocol; default 5)",
}


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """``up``, ``engine``, ``dispatch``, ``evidence`` and ``sim``."""
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
        "--broker-port",
        type=port,
        help="port of the managed Mosquitto (default: [broker] port, 1883)",
    )
    up.add_argument("--ledger-url", metavar="URL", help=_LEDGER_URL_HELP)
    up.add_argument(
        "--sim",
        type=positive_int,
        metavar="UNITS",
        help="also run a simulated fleet of this many cruiser crews",
    )
    fleet_flags(up)
    _listener_flags(up)
    up.add_argument(*_MQTT_PROTOCOL_FLAG, **_MQTT_PROTOCOL_OPTIONS)

    engine = sub.add_parser("engine", help="run one trigger engine against a broker or cluster")
    on = engine.add_mutually_exclusive_group(required=True)
    on.add_argument("--broker", metavar="URL", help="an MQTT broker: mqtt://HOST:PORT")
    on.add_argument(
        "--nats",
        metavar="URL",
        action="append",
        help="a NATS cluster node: nats://HOST:PORT (repeat for more nodes)",
    )
    engine.add_argument("--config", type=Path, help="TOML settings file")
    engine.add_argument("--agency", help="agency id (default: demo)")
    engine.add_argument("--engine-id", help="this replica's id (default: engine-1)")
    engine.add_argument("--data-dir", type=Path, help="ledger location (shared by replicas)")
    engine.add_argument("--ledger-url", metavar="URL", help=_LEDGER_URL_HELP)
    _login_flags(engine)

    dispatch = sub.add_parser("dispatch", help="run the dispatch map and API against a broker")
    dispatch.add_argument(
        "--broker",
        metavar="URL",
        action="append",
        help="where activations are read: mqtt://HOST:PORT (a cluster node's MQTT "
        "listener with --mqtt-protocol 3.1.1; repeat for every node, and the dispatch "
        "moves to the next when its node is lost; default: [broker] url)",
    )
    dispatch.add_argument("--config", type=Path, help="TOML settings file")
    dispatch.add_argument("--agency", help="agency id (default: demo)")
    dispatch.add_argument("--data-dir", type=Path, help="accounts, webhooks and evidence store")
    dispatch.add_argument("--ledger-url", metavar="URL", help=_LEDGER_URL_HELP)
    dispatch.add_argument("--http-host", metavar="HOST", help="address (default 127.0.0.1)")
    dispatch.add_argument("--http-port", type=http_port, metavar="PORT", help="port (default 8080)")
    dispatch.add_argument(*_MQTT_PROTOCOL_FLAG, **_MQTT_PROTOCOL_OPTIONS)
    _login_flags(dispatch)

    evidence = sub.add_parser("evidence", help="run the evidence upload API")
    evidence.add_argument("--config", type=Path, help="TOML settings file ([evidence])")
    evidence.add_argument("--agency", help="agency id (default: demo)")
    evidence.add_argument("--data-dir", type=Path, help="where recordings are stored")
    evidence.add_argument("--ledger-url", metavar="URL", help=_LEDGER_URL_HELP)

    sim = sub.add_parser("sim", help="run a simulated fleet against a broker")
    sim.add_argument("--broker", metavar="URL", required=True, help="mqtt://HOST:PORT")
    sim.add_argument("--agency", default="demo", help="agency id (default: demo)")
    sim.add_argument("--units", type=positive_int, default=8, help="cruiser crews (default 8)")
    sim.add_argument(
        "--data-dir",
        type=Path,
        default=Path("actimesh-data"),
        help="where simulated cameras store recordings",
    )
    fleet_flags(sim)
    sim.add_argument(*_MQTT_PROTOCOL_FLAG, **_MQTT_PROTOCOL_OPTIONS)
    sim.add_argument(
        "--engine-key",
        type=Path,
        metavar="FILE",
        help="the engine's public key, engine-signing.pub (default: "
        "DATA_DIR/keys/engine-signing.pub)",
    )


def _listener_flags(up: Parser) -> None:
    """Where each of ``up``'s listeners runs, and the map's streets."""
    up.add_argument(
        "--http-host",
        metavar="HOST",
        help="address of the dispatch map and API "
        "(default 127.0.0.1: the API can activate cameras)",
    )
    map_flags(up)
    up.add_argument(
        "--basemap",
        metavar="SOURCE",
        help="the map's streets: a PMTiles file, or an XYZ or WMTS tile URL template "
        "([dispatch] basemap; `make map-data` builds build/map/helsinki.pmtiles)",
    )
    up.add_argument(
        "--evidence-port",
        type=http_port,
        metavar="PORT",
        help="port of the camera upload (offload) listener (default: [evidence] port, 8471; "
        "0: any)",
    )
    up.add_argument(
        "--broker-tls-port",
        type=port,
        metavar="PORT",
        help="TLS port of the managed Mosquitto (default: [broker] tls_port, 8883)",
    )
    up.add_argument(
        "--osmand-port",
        type=port,
        help="take OsmAnd / Traccar Client reports on this port ([adapters.osmand] port; "
        "turns the listener on; docs/DEVICES.md)",
    )


def map_flags(parser: Parser) -> None:
    """The dispatch map and API's port, or none (``up`` and ``cluster up``)."""
    parser.add_argument(
        "--http-port",
        type=http_port,
        metavar="PORT",
        help="port of the dispatch map and API (default 8080; 0: any)",
    )
    parser.add_argument(
        "--no-http", action="store_true", help="run without the dispatch map and API"
    )


def fleet_flags(parser: Parser) -> None:
    """The simulated fleet's flags, shared by ``up``, ``sim`` and ``cluster up``."""
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"random seed of the simulated fleet: the same seed, the same fleet and shift "
        f"(default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--busy",
        action="store_true",
        help="a shift for a show: about ten incidents a minute for 24 crews, instead of a "
        "few triggers an hour per crew",
    )
    parser.add_argument(
        "--incident-every",
        type=float,
        metavar="SECONDS",
        help="an incident every this many seconds, the first after 3 s, instead of at a "
        "shift's random pace (quick runs, scripted checks)",
    )
    parser.add_argument(
        "--video-cameras",
        type=int,
        default=4,
        metavar="N",
        help="the first body camera of the first N crews films real H.264 (small), so "
        "their offloaded recordings play on the dispatch page; the rest synthetic "
        "(default 4; 0: none)",
    )
    parser.add_argument(
        "--telemetry",
        metavar="MODE",
        help="when the simulated devices report: '1hz' (every second) or 'motion' (on moves, "
        "state changes and a heartbeat); default: [telemetry] mode, else 1hz",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        metavar="SECONDS",
        help="a motion-scaled device's heartbeat (default: [telemetry] heartbeat_s, else 10)",
    )
    parser.add_argument(
        "--map",
        type=Path,
        metavar="FILE",
        help=f"OpenStreetMap extract (.osm.pbf) the fleet drives in (default {DEFAULT_MAP}, "
        "from `make map-data`; without it a synthetic area)",
    )


def _streets(args: argparse.Namespace, console: Console) -> StreetMap | None:
    """The city of the simulated fleet: ``--map``, else the demo's extract if it is there."""
    path = args.map if args.map is not None else DEFAULT_MAP
    try:
        return StreetMap.load(path)
    except FileNotFoundError:
        if args.map is not None:
            raise ConfigError(f"--map {path} does not exist; run `make map-data`") from None
        console.print(
            f"[yellow]no street map at {path} (run `make map-data`): the fleet patrols a "
            "synthetic area without streets[/yellow]"
        )
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--map {path} is not a usable OpenStreetMap extract: {exc}") from exc


def sim_settings(
    args: argparse.Namespace,
    units: int,
    console: Console,
    telemetry: ReportingSettings | None = None,
) -> SimSettings:
    """The simulated fleet :func:`fleet_flags` describes; ``telemetry``: the ``[telemetry]``
    settings its flags override."""
    if args.video_cameras < 0:
        raise ConfigError("--video-cameras must be 0 or more")
    if args.incident_every is not None and not args.incident_every > 0:
        raise ConfigError("--incident-every must be a number of seconds above 0")
    reporting = reporting_settings(
        args.telemetry, args.heartbeat, ("--telemetry", "--heartbeat"), telemetry
    )
    sim = SimSettings(
        units=units,
        seed=args.seed,
        streets=_streets(args, console),
        video_cameras=args.video_cameras,
        reporting=reporting,
    )
    sim = sim.busy() if args.busy else sim
    return replace(sim, incident_every_s=args.incident_every) if args.incident_every else sim


def _up_settings(args: argparse.Namespace) -> Settings:
    """``up``'s settings: the file's, then each flag given."""
    settings = load_settings(
        args.config,
        agency=args.agency,
        data_dir=args.data_dir,
        broker_url=args.broker,
        broker_port=args.broker_port,
        ledger_url=args.ledger_url,
    )
    if args.evidence_port is not None:
        settings = replace(settings, evidence=replace(settings.evidence, port=args.evidence_port))
    if args.broker_tls_port is not None:
        settings = replace(settings, broker=replace(settings.broker, tls_port=args.broker_tls_port))
    http = {"host": args.http_host, "port": args.http_port}
    http = {k: v for k, v in http.items() if v is not None}
    if args.no_http:
        http["enabled"] = False
    if args.basemap is not None:
        http["basemap"] = args.basemap
    if http:
        settings = replace(settings, dispatch=replace(settings.dispatch, **http))
    if args.osmand_port is not None:
        adapters = settings.adapters
        osmand = replace(adapters.osmand, enabled=True, port=args.osmand_port)
        settings = replace(settings, adapters=replace(adapters, osmand=osmand))
    if args.mqtt_protocol is not None:
        broker = replace(settings.broker, mqtt_protocol=args.mqtt_protocol)
        settings = replace(settings, broker=broker)
    return settings


def run(args: argparse.Namespace, console: Console) -> int:
    """``actimesh up``, ``engine``, ``dispatch``, ``evidence`` or ``sim``."""
    from actimesh.runtime import run_engine, run_sim, run_up  # noqa: PLC0415 - keep `--help` fast

    if args.command == "up":
        settings = _up_settings(args)
        sim = (
            replace(
                sim_settings(args, args.sim, console, settings.telemetry),
                pre_roll_s=settings.media.pre_roll_s,
                media=settings.media,
                mqtt_protocol=settings.broker.mqtt_protocol,
            )
            if args.sim
            else None
        )
        run_async(run_up(settings, sim, console))
        return EXIT_OK
    if args.command == "engine":
        settings = load_settings(
            args.config,
            agency=args.agency,
            data_dir=args.data_dir,
            broker_url=args.broker,
            ledger_url=args.ledger_url,
        )
        if args.engine_id:
            settings = replace(settings, engine=replace(settings.engine, engine_id=args.engine_id))
        settings = _with_login(settings, args)
        if args.nats:
            from actimesh.runtime.services import run_nats_engine  # noqa: PLC0415

            run_async(run_nats_engine(settings, args.nats, console))
        else:
            run_async(run_engine(settings, console))
        return EXIT_OK
    if args.command in ("dispatch", "evidence"):
        return _run_service(args, console)
    if args.command == "sim":
        sim = replace(
            sim_settings(args, args.units, console),
            mqtt_protocol=args.mqtt_protocol or "5",
        )
        run_async(
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
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _run_service(args: argparse.Namespace, console: Console) -> int:
    """``actimesh dispatch`` or ``evidence``: one web service in this process."""
    from actimesh.runtime.services import run_dispatch, run_evidence  # noqa: PLC0415

    settings = load_settings(
        args.config, agency=args.agency, data_dir=args.data_dir, ledger_url=args.ledger_url
    )
    if args.command == "evidence":
        run_async(run_evidence(settings, console))
        return EXIT_OK
    brokers: list[str] = args.broker or []
    if brokers:
        settings = replace(settings, broker_url=brokers[0])
    settings = _with_login(settings, args)
    if args.mqtt_protocol is not None:
        settings = replace(
            settings, broker=replace(settings.broker, mqtt_protocol=args.mqtt_protocol)
        )
    http = {"host": args.http_host, "port": args.http_port}
    http = {k: v for k, v in http.items() if v is not None}
    if http:
        settings = replace(settings, dispatch=replace(settings.dispatch, **http))
    run_async(run_dispatch(settings, console, fallbacks=brokers[1:]))
    return EXIT_OK
