"""The ``actimesh`` command.

    actimesh up [--sim N]         broker (managed Mosquitto), engine, optional fleet
    actimesh sim --broker URL     a simulated fleet against any broker
    actimesh drill                self-check on a real broker; non-zero exit on any miss

Errors an operator can cause (bad flags, config, a missing broker) print one line saying
what is wrong and how to fix it, with no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from rich.console import Console

from actimesh import __version__
from actimesh.config import load_settings
from actimesh.devices.simulator import SimSettings
from actimesh.errors import ActimeshError, ConfigError
from actimesh.geofence import InclusionMode, InclusionPolicy

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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="actimesh", description="Camera activation mesh for police fleets.")
    parser.add_argument("--version", action="version", version=f"actimesh {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", help="run the broker, the trigger engine and optionally a fleet")
    up.add_argument("--config", type=Path, help="TOML settings file (defaults are embedded)")
    up.add_argument("--agency", help="agency id, the topic namespace (default: demo)")
    up.add_argument("--data-dir", type=Path, help="ledger, broker and recordings (default: "
                    "./actimesh-data)")  # fmt: skip
    up.add_argument("--broker", metavar="URL", help="use the broker at mqtt://HOST:PORT "
                    "instead of a managed Mosquitto")  # fmt: skip
    up.add_argument("--broker-port", type=_port, help="port of the managed Mosquitto "
                    "(default 1883)")  # fmt: skip
    up.add_argument("--sim", type=_positive_int, metavar="UNITS",
                    help="also run a simulated fleet of this many cruiser crews")  # fmt: skip
    up.add_argument("--seed", type=int, help="random seed of the simulated fleet")

    sim = sub.add_parser("sim", help="run a simulated fleet against a broker")
    sim.add_argument("--broker", metavar="URL", required=True, help="mqtt://HOST:PORT")
    sim.add_argument("--agency", default="demo", help="agency id (default: demo)")
    sim.add_argument("--units", type=_positive_int, default=8, help="cruiser crews (default 8)")
    sim.add_argument("--data-dir", type=Path, default=Path("actimesh-data"),
                     help="where simulated cameras store recordings")  # fmt: skip
    sim.add_argument("--seed", type=int, help="random seed")

    drill = sub.add_parser("drill", help="self-check: fire triggers at known geometry, verify")
    drill.add_argument("--rounds", type=_positive_int, default=5, help="rounds (default 5)")
    drill.add_argument("--data-dir", type=Path, help="keep recordings and ledger here "
                       "(default: a temporary folder)")  # fmt: skip
    drill.add_argument("--policy", choices=[m.value for m in InclusionMode],
                       default=InclusionMode.INCLUSIVE.value,
                       help="accuracy inclusion policy (default inclusive)")  # fmt: skip
    return parser


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
    from actimesh.drill import run_drill  # noqa: PLC0415 - keep `--help` fast
    from actimesh.runtime import run_sim, run_up  # noqa: PLC0415

    if args.command == "up":
        settings = load_settings(
            args.config,
            agency=args.agency,
            data_dir=args.data_dir,
            broker_url=args.broker,
            broker_port=args.broker_port,
        )
        sim = SimSettings(units=args.sim, seed=args.seed) if args.sim else None
        _run(run_up(settings, sim, console))
        return EXIT_OK
    if args.command == "sim":
        sim = SimSettings(units=args.units, seed=args.seed)
        _run(run_sim(agency=args.agency, broker_url=args.broker, data_dir=args.data_dir,
                     sim=sim, console=console))  # fmt: skip
        return EXIT_OK
    if args.command == "drill":
        policy = InclusionPolicy(mode=InclusionMode(args.policy))
        report = _run(run_drill(console, rounds=args.rounds, data_dir=args.data_dir,
                                policy=policy))  # fmt: skip
        return EXIT_OK if report.ok else EXIT_FAILED
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``actimesh`` console script."""
    args = _parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Logs and CI are not terminals: give tables room instead of rich's 80-column default.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    try:
        return _command(args, console)
    except KeyboardInterrupt:
        print("actimesh: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:  # SIGTERM
        print("actimesh: stopped", file=sys.stderr)
        return EXIT_OK
    except Exception as exc:
        error = _user_error(exc)
        if error is None:
            raise
        print(f"actimesh: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_FAILED


def _user_error(exc: BaseException) -> ActimeshError | None:
    """The error to show the operator, looking inside TaskGroup exception groups."""
    if isinstance(exc, ActimeshError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
