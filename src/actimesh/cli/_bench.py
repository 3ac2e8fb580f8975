"""``actimesh bench``: its flags are :class:`~actimesh.bench.BenchSettings` fields, and
``--smoke`` a preset of them for CI."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from actimesh.cli._common import EXIT_OK, positive_int, run_async
from actimesh.errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """``bench``, its defaults taken from :class:`~actimesh.bench.BenchSettings`."""
    from actimesh.bench import BenchSettings  # noqa: PLC0415 - keep `--help` fast

    d = BenchSettings()
    bench = sub.add_parser("bench", help="benchmark the engine against the broker's own limit")
    bench.add_argument(
        "--devices",
        type=positive_int,
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
        type=positive_int,
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
        "--overload",
        action="store_true",
        help="telemetry at twice the broker's measured rate, with triggers (100,000 devices)",
    )
    bench.add_argument(
        "--cluster",
        action="store_true",
        help="on a 3-node NATS cluster, two engines (docs/PERFORMANCE.md)",
    )
    bench.add_argument(
        "--publisher",
        choices=["raw", "paho"],
        default=d.publisher,
        help="load generator's client (default raw)",
    )
    bench.add_argument(
        "--loadgen-nice",
        type=int,
        default=d.loadgen_nice,
        metavar="N",
        help="the load generator's nice value while it streams (default 10; 0: unchanged)",
    )
    bench.add_argument(
        "--no-acks", action="store_true", help="the probe's cameras do not acknowledge commands"
    )
    bench.add_argument(
        "--trace", action="store_true", help="split each trigger's latency into its hops"
    )
    bench.add_argument(
        "--telemetry",
        choices=["1hz", "motion"],
        default=d.telemetry,
        help="devices report every GPS epoch (1hz, default) or motion-scaled",
    )
    bench.add_argument(
        "--side-by-side",
        action="store_true",
        help="the same fleet at 1 Hz, then motion-scaled, in one run (docs/PERFORMANCE.md)",
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


def run(args: argparse.Namespace, console: Console) -> int:
    """``actimesh bench``."""
    from actimesh.bench import BenchSettings, bench  # noqa: PLC0415 - keep `--help` fast
    from actimesh.bench.sidebyside import bench_side_by_side  # noqa: PLC0415

    if args.overload:
        return _overload(args, console)
    base = BenchSettings.smoke() if args.smoke else BenchSettings()
    overrides: dict[str, Any] = {
        "publisher": args.publisher,
        "acks": not args.no_acks,
        "search": args.search,
        "seed": args.seed,
        "trace": args.trace,
        "cluster": args.cluster,
        "telemetry": args.telemetry,
        "loadgen_nice": args.loadgen_nice,
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
    if args.side_by_side:
        if args.sweep:
            raise ConfigError("--side-by-side runs one fleet size: drop --sweep")
        run_async(bench_side_by_side(settings, console, json_path=args.json, plot_path=args.plot))
        return EXIT_OK
    run_async(bench(settings, console, sweep=args.sweep, json_path=args.json, plot_path=args.plot))
    return EXIT_OK


def _overload(args: argparse.Namespace, console: Console) -> int:
    """``actimesh bench --overload``: the preset, with the options given explicitly."""
    from actimesh.bench import BenchSettings  # noqa: PLC0415 - keep `--help` fast
    from actimesh.bench.overload import overload_bench  # noqa: PLC0415

    d = BenchSettings()
    base = BenchSettings.overload(smoke=args.smoke)
    overrides: dict[str, Any] = {"publisher": args.publisher, "acks": not args.no_acks}
    if not args.smoke:
        # Only what was given: the preset's fleet, not the ordinary run's default.
        given = {
            "devices": args.devices,
            "triggers_per_s": args.triggers,
            "duration_s": args.duration,
            "flood_messages": args.flood,
        }
        overrides |= {k: v for k, v in given.items() if v != getattr(d, k)}
    overrides["seed"] = args.seed
    run_async(overload_bench(replace(base, **overrides), console, json_path=args.json))
    return EXIT_OK
