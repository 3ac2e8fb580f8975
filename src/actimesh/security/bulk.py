"""A fleet as a CSV file: what ``actimesh devices import`` reads and ``export`` writes.

One header row, then one device a row::

    id,kind,unit,call_sign,officer,paired
    bwc-0001,body_cam,unit-01,12A1,Cst. Lee #4411,
    cew-0001,cew,unit-01,12A1,Cst. Lee #4411,bwc-0001
    dash-0001,dash_cam,unit-01,12A1,,

``paired`` lists the devices a row's device starts locally, separated by ``;`` (or by
commas inside a quoted field); a paired device may come later in the same file. Header
names are matched without regard to case, spaces or ``_`` (``Call Sign`` is fine), and
empty cells mean "none". Export writes exactly this format, sorted by id, with no
secrets, so an export imports into an empty registry as it is.

An import is all or nothing. :func:`read_fleet` checks every row on its own and against
the rest of the file, :meth:`Registry.problems
<actimesh.security.registry.Registry.problems>` checks them against the registry, and
every problem is reported at once with its row number (the header is row 1, as a
spreadsheet numbers it), what is wrong and how to fix it. Only a file with none is
registered, in one transaction: a half-imported fleet would leave cameras whose pairs
are missing, and running the corrected file again would then trip over every row that
did go in.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from actimesh.broker.messages import DeviceKind
from actimesh.errors import SecurityError
from actimesh.security.registry import Device, DeviceCredentials, DeviceSpec, check_spec

__all__ = [
    "CREDENTIAL_COLUMNS",
    "FLEET_COLUMNS",
    "MAX_ROWS",
    "FleetFile",
    "RowProblem",
    "credentials_csv",
    "fleet_csv",
    "read_fleet",
]

FLEET_COLUMNS = ("id", "kind", "unit", "call_sign", "officer", "paired")
CREDENTIAL_COLUMNS = ("id", "password", "private_key", "public_key")
#: Rows one file may hold: ten times the largest fleet asked for, and a bound on memory.
MAX_ROWS = 100_000
_KINDS = ", ".join(k.value for k in DeviceKind)


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One thing wrong with one row of a fleet file."""

    #: The row's number in the file (the header is row 1).
    row: int
    #: What is wrong and how to fix it, in one line.
    detail: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.detail}"


@dataclass(frozen=True, slots=True)
class FleetFile:
    """A fleet file read: the devices of its good rows, and the problems of the rest."""

    specs: tuple[DeviceSpec, ...]
    #: Each spec's row number, by device id.
    rows: Mapping[str, int]
    problems: tuple[RowProblem, ...]


def _label(header: str) -> str:
    return header.strip().lower().replace(" ", "_").replace("-", "_")


def _cell(value: str | None) -> str | None:
    text = (value or "").strip()
    return text or None


def _paired(value: str | None) -> tuple[str, ...]:
    text = (value or "").replace(",", ";")
    return tuple(p.strip() for p in text.split(";") if p.strip())


def _spec(row: Sequence[str]) -> DeviceSpec:
    """The device a row names; :class:`SecurityError` says what is wrong with it."""
    device_id = (row[0] or "").strip()
    if not device_id:
        raise SecurityError("the id is empty: give every device an id")
    kind_text = (row[1] or "").strip()
    try:
        kind = DeviceKind(kind_text)
    except ValueError:
        raise SecurityError(
            f"kind {kind_text!r} is not a device kind: use one of {_KINDS}"
        ) from None
    spec = DeviceSpec(
        device_id=device_id,
        kind=kind,
        unit=_cell(row[2]),
        call_sign=_cell(row[3]),
        officer=_cell(row[4]),
        paired=_paired(row[5]),
    )
    check_spec(spec)
    return spec


def read_fleet(text: str) -> FleetFile:
    """Read a fleet file; every row is checked, and every problem kept (none raised)."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        header = []
    except csv.Error as exc:
        return FleetFile((), {}, (RowProblem(1, f"not CSV ({exc})"),))
    wanted = ",".join(FLEET_COLUMNS)
    if tuple(_label(h) for h in header) != FLEET_COLUMNS:
        got = ",".join(header) or "nothing"
        detail = f"the header is {got!r}: the first row must be {wanted}"
        return FleetFile((), {}, (RowProblem(1, detail),))
    specs: list[DeviceSpec] = []
    rows: dict[str, int] = {}
    problems: list[RowProblem] = []
    number = 1
    try:
        for row in reader:
            number += 1
            if not any(cell.strip() for cell in row):
                continue  # a blank line: nothing to register
            if number > MAX_ROWS + 1:
                problems.append(RowProblem(number, f"more than {MAX_ROWS} rows: split the file"))
                break
            if len(row) != len(FLEET_COLUMNS):
                problems.append(
                    RowProblem(
                        number,
                        f"{len(row)} columns, not {len(FLEET_COLUMNS)} ({wanted}): quote a "
                        "cell that holds a comma, and leave an empty cell for what is unknown",
                    )
                )
                continue
            try:
                spec = _spec(row)
            except SecurityError as exc:
                problems.append(RowProblem(number, str(exc)))
                continue
            if spec.device_id in rows:
                first = rows[spec.device_id]
                problems.append(
                    RowProblem(
                        number,
                        f"device {spec.device_id!r} is on row {first} already: keep one row",
                    )
                )
                continue
            rows[spec.device_id] = number
            specs.append(spec)
    except csv.Error as exc:
        problems.append(RowProblem(number, f"not CSV ({exc}): fix the quoting on this row"))
    return FleetFile(tuple(specs), rows, tuple(problems))


def fleet_csv(devices: Iterable[Device]) -> str:
    """Devices as a fleet file (no secrets), sorted by id: what ``devices export`` writes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FLEET_COLUMNS)
    for d in sorted(devices, key=lambda d: d.device_id):
        writer.writerow(
            (
                d.device_id,
                d.kind.value,
                d.unit or "",
                d.call_sign or "",
                d.officer or "",
                ";".join(d.paired),
            )
        )
    return out.getvalue()


def credentials_csv(creds: Iterable[DeviceCredentials]) -> str:
    """The credentials of imported devices, one row each (:data:`CREDENTIAL_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CREDENTIAL_COLUMNS)
    for c in sorted(creds, key=lambda c: c.device_id):
        writer.writerow((c.device_id, c.password, c.private_key, c.public_key))
    return out.getvalue()
