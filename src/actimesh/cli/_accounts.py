"""``actimesh users`` and ``tokens``: dispatch map logins and integrator API tokens.

The verbs and their output belong to :mod:`actimesh.dispatch.commands`; this module
only gives them the data directory from the settings and the command line's runner.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from actimesh.cli._common import Parser, run_async
from actimesh.runtime.config import load_settings

__all__ = ["add_parsers", "run"]


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """``users`` and ``tokens``."""
    from actimesh.dispatch.commands import add_parsers  # noqa: PLC0415 - keep `--help` fast

    add_parsers(sub, Parser)


def run(args: argparse.Namespace, console: Console) -> int:  # noqa: ARG001 - prints plain lines
    """``actimesh users|tokens VERB``."""
    from actimesh.dispatch import commands  # noqa: PLC0415 - keep `--help` fast

    settings = load_settings(args.config, data_dir=args.data_dir)
    return commands.run(
        args,
        data_dir=settings.data_dir,
        ledger_location=settings.ledger_location,
        agency=settings.agency,
        out=sys.stdout,
        stdin=sys.stdin,
        runner=run_async,
    )
