"""``actimesh fuzz``: progress in tenths, the report's lines, and exit 1 on any finding,
so CI can run it as it runs the tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from actimesh.cli._common import EXIT_FAILED, EXIT_OK, positive_int, run_async
from actimesh.errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """``fuzz``."""
    fuzz = sub.add_parser(
        "fuzz",
        help="hostile payloads against the codec and the engine's intake; exit 1 on any finding",
    )
    fuzz.add_argument(
        "--count", type=positive_int, default=1_000_000, help="payloads (default 1,000,000)"
    )
    fuzz.add_argument(
        "--seed", type=int, default=0, help="the same seed makes the same payloads (default 0)"
    )
    fuzz.add_argument(
        "--target",
        choices=["codec", "intake", "protocols", "all"],
        default="all",
        help="the codec, a real engine's intake, the device-protocol parsers (OwnTracks, "
        "NMEA, OsmAnd), or all (default)",
    )
    fuzz.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    fuzz.add_argument(
        "--replay",
        type=int,
        metavar="INDEX",
        help="run only case INDEX of --seed, to reproduce a finding",
    )


def run(args: argparse.Namespace, console: Console) -> int:  # noqa: ARG001 - prints plain lines
    """``actimesh fuzz``: exit 1 on any finding."""
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

    report = run_async(run_fuzz(settings, progress))
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
