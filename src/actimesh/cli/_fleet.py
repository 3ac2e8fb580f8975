"""``actimesh devices import FILE.csv`` and ``devices export FILE.csv``: a whole fleet at once.

Import registers every device of the file in one registry transaction and applies them
to a running broker with one reload (one Dynamic Security sync), so 1,350 cameras take
seconds rather than the 40 minutes one ``devices add`` per camera would. It is all or
nothing (:mod:`actimesh.security.bulk` says why): a file with any bad row registers
nothing, and every bad row is reported with its number, what is wrong and how to fix it.
The credentials go to a new file only the owner may read, never to the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from actimesh.cli._common import EXIT_FAILED, EXIT_OK, Parser
from actimesh.errors import ConfigError
from actimesh.runtime.config import Settings

__all__ = ["add_verbs", "export_fleet", "import_fleet"]


def add_verbs(verbs: argparse._SubParsersAction[Parser]) -> None:
    """``devices import`` and ``devices export``."""
    imp = verbs.add_parser(
        "import",
        help="register every device of a CSV file (id,kind,unit,call_sign,officer,paired) "
        "in one broker reload; credentials to a 0600 file",
    )
    imp.add_argument("file", type=Path, metavar="FILE.csv")
    imp.add_argument(
        "--credentials",
        type=Path,
        metavar="PATH",
        help="where to write the new devices' credentials (a new file, mode 0600; "
        "default: DATA_DIR/secrets/devices-YYYYmmdd-HHMMSS.csv)",
    )
    exp = verbs.add_parser(
        "export", help="write every registered device to a CSV file import reads (no secrets)"
    )
    exp.add_argument("file", type=Path, metavar="FILE.csv", help="'-' for standard output")


def _create_private(path: Path) -> int:
    """A new, empty file ``path``, mode 0600, open for writing; refuse to replace one."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists already: it may hold credentials of an earlier import; move it "
            "away or give --credentials another path"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path}: {exc.strerror}; give --credentials a path in a folder "
            "you may write"
        ) from None


def _write_all(fd: int, text: str) -> None:
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def import_fleet(args: argparse.Namespace, settings: Settings) -> int:
    """``actimesh devices import FILE.csv``."""
    from actimesh.cli._devices import endpoint_lines, engine_key_line  # noqa: PLC0415
    from actimesh.security import SECRETS_DIR, Registry  # noqa: PLC0415 - keep `--help` fast
    from actimesh.security.bulk import RowProblem, credentials_csv, read_fleet  # noqa: PLC0415
    from actimesh.security.provision import apply_to_broker  # noqa: PLC0415

    started = time.perf_counter()
    source: Path = args.file
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no file {source}: give the path of the fleet CSV") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {source} ({exc}): save it as UTF-8 CSV") from None
    fleet = read_fleet(text)
    data_dir = settings.data_dir
    with Registry.open(data_dir) as registry:
        clashes = registry.problems(fleet.specs)
        problems = sorted(
            [*fleet.problems, *(RowProblem(fleet.rows[i], d) for i, d in clashes.items())],
            key=lambda p: p.row,
        )
        if problems:
            for problem in problems:
                print(f"{source}: {problem}", file=sys.stderr)
            print(
                f"actimesh: {len(problems)} problem(s) in {source}, nothing imported: fix "
                "those rows and run the same command again",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if not fleet.specs:
            raise ConfigError(f"{source} lists no devices: add a row per device under the header")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target: Path = args.credentials or data_dir / SECRETS_DIR / f"devices-{stamp}.csv"
        if args.credentials is None:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The file first, so that a path we may not write costs nothing; removed again if
        # the registry refuses the devices (another import got there in between).
        fd = _create_private(target)
        try:
            creds = registry.add_many(fleet.specs)
        except BaseException:
            os.close(fd)
            target.unlink()
            raise
        _write_all(fd, credentials_csv(creds.values()))
    pid = apply_to_broker(data_dir, settings.acl_policy())
    took = time.perf_counter() - started
    print(f"imported {len(creds)} devices from {source} in {took:.1f} s")
    print(
        f"credentials: {target} (mode 0600; id,password,private_key,public_key): put each "
        "on its device, then delete the file"
    )
    for line in (*endpoint_lines(settings), *engine_key_line(data_dir)):
        print(line)
    print(
        f"broker: applied live in one reload (pid {pid})"
        if pid is not None
        else f"broker: not running on {data_dir}; applies at its next start"
    )
    return EXIT_OK


def export_fleet(args: argparse.Namespace, settings: Settings) -> int:
    """``actimesh devices export FILE.csv``: operator-registered devices (simulated ones
    belong to the simulator and are made afresh on every run)."""
    from actimesh.security import Registry  # noqa: PLC0415 - keep `--help` fast
    from actimesh.security.bulk import fleet_csv  # noqa: PLC0415

    with Registry.open(settings.data_dir) as registry:
        devices = [d for d in registry.devices() if not d.simulated]
    text = fleet_csv(devices)
    if str(args.file) == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        args.file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {args.file}: {exc.strerror}") from None
    print(f"exported {len(devices)} devices to {args.file} (no secrets)")
    return EXIT_OK
