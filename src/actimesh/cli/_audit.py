"""``actimesh audit``: the tamper-evident ledger from the operator's side (verify it,
record its head, link activations to cases, export a case, apply retention)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from actimesh.cli._common import EXIT_FAILED, EXIT_OK, Parser, run_async
from actimesh.errors import ActimeshError
from actimesh.runtime.config import load_settings

if TYPE_CHECKING:
    from actimesh.ledger import Head

__all__ = ["add_parser", "run"]


def _head(text: str) -> Head:
    from actimesh.audit import parse_head  # noqa: PLC0415 - keep `--help` fast

    try:
        return parse_head(text)
    except ActimeshError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """``audit verify|head|link|export|retain``."""
    audit = sub.add_parser("audit", help="verify, export and prune the tamper-evident ledger")
    verbs = audit.add_subparsers(dest="audit", required=True, parser_class=Parser)
    helps = {
        "verify": "check every record and the tables; exit 1 naming any tampering",
        "head": "print the chain's head (SEQ:HASH): record it elsewhere, verify against it",
        "link": "link an activation to a case, so retention keeps it",
        "export": "write one case's records with their hashes (JSON Lines and CSV)",
        "retain": "apply retention: redact and delete what is old and not linked to a case",
    }
    parsers = {verb: verbs.add_parser(verb, help=text) for verb, text in helps.items()}
    for each in parsers.values():
        each.add_argument(
            "--config", type=Path, help="TOML settings file (data_dir, [ledger], [retention])"
        )
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


def run(args: argparse.Namespace, console: Console) -> int:  # noqa: ARG001 - prints plain lines
    """``actimesh audit VERB``."""
    from actimesh import audit  # noqa: PLC0415 - keep `--help` fast

    settings = load_settings(args.config, data_dir=args.data_dir)
    # --ledger names a SQLite file; otherwise the settings' ledger (a [ledger] url, or
    # the data directory's file).
    ledger = args.ledger or settings.ledger_location
    agency = settings.agency
    if args.audit == "head":
        print(audit.read_head(ledger, agency=agency))
        return EXIT_OK
    if args.audit == "verify":
        report = audit.verify_ledger(ledger, head=args.head, agency=agency)
        for finding in report.findings:
            print(finding)
        if report.ok:
            print(report.summary())
            return EXIT_OK
        print(f"actimesh: {report.summary()}", file=sys.stderr)
        return EXIT_FAILED
    if args.audit == "link":
        seq, new = run_async(
            audit.link_case(ledger, args.case, args.activation, args.by, agency=agency)
        )
        done = "linked" if new else "already linked"
        print(f"{done}: activation {args.activation} to case {args.case} (record {seq})")
        return EXIT_OK
    if args.audit == "export":
        out = audit.export_case(ledger, args.case, args.out, agency=agency)
        print(
            f"exported {out.records} records ({len(out.activations)} activations) of case "
            f"{args.case} to {out.jsonl}, {out.csv.name} and {out.manifest.name}"
        )
        return EXIT_OK
    retained = run_async(
        audit.retain(
            ledger,
            settings.retention.days,
            recordings=args.recordings,
            dry_run=args.dry_run,
            agency=agency,
        )
    )
    print(retained.summary())
    return EXIT_FAILED if retained.problems else EXIT_OK
