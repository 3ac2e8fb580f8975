"""The parser of every command, and :func:`main`, which turns what went wrong into one
line on stderr and an exit code.

Each command group lives in a module of its own with an ``add_parser(s)`` and a ``run``;
this module puts them together in the order ``actimesh --help`` lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Mapping, Sequence

from rich.console import Console

from actimesh import __version__
from actimesh.cli import (
    _accounts,
    _audit,
    _bench,
    _certs,
    _cluster,
    _devices,
    _drill,
    _fuzz,
    _up,
)
from actimesh.cli._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Parser
from actimesh.errors import ConfigError, first_error

__all__ = ["main"]

Handler = Callable[[argparse.Namespace, Console], int]

_HANDLERS: Mapping[str, Handler] = {
    "up": _up.run,
    "engine": _up.run,
    "sim": _up.run,
    "dispatch": _up.run,
    "evidence": _up.run,
    "cluster": _cluster.run,
    "drill": _drill.run,
    "audit": _audit.run,
    "bench": _bench.run,
    "fuzz": _fuzz.run,
    "devices": _devices.run,
    "integrators": _devices.run,
    "operators": _devices.run,
    "services": _devices.run,
    "certs": _certs.run,
    "users": _accounts.run,
    "tokens": _accounts.run,
}


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="actimesh", description="Camera activation mesh for police fleets.")
    parser.add_argument("--version", action="version", version=f"actimesh {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _up.add_parsers(sub)
    _cluster.add_parser(sub)
    _drill.add_parser(sub)
    _audit.add_parser(sub)
    _bench.add_parser(sub)
    _fuzz.add_parser(sub)
    _devices.add_parsers(sub)
    _certs.add_parser(sub)
    _accounts.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``actimesh`` console script."""
    args = _parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Logs and CI are not terminals: give tables room instead of rich's 80-column default.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    try:
        return _HANDLERS[args.command](args, console)
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
