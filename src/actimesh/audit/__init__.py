"""Audit of the ledger: verify the chain, export a case, apply retention.

* :func:`verify_ledger` walks the hash chain (:mod:`actimesh.ledger.chain`) and names
  every record that was changed, removed, inserted or reordered, then checks that the
  query tables (activations, decisions, acks, case links) agree with the chain. A chain
  cannot show that its tail was cut off: compare with a head recorded elsewhere
  (:func:`read_head`, ``verify_ledger(path, head=...)``).
* :func:`export_case` writes one case's records, with everything needed to check their
  hashes, as JSON Lines and CSV.
* :func:`apply_retention` redacts what is older than the retention period and not linked
  to a case, deletes recordings whose activations are all gone, and records each deletion
  in the chain. :func:`retention_loop` runs it periodically beside the engine.

Each works on a SQLite file or on an agency's chain in PostgreSQL: the checks are
written once, and read the ledger through a snapshot of either store (:mod:`._store`,
:mod:`._postgres`).

The package sits beside the drill and the runtime, not inside ``triggers``, because
retention reaches both the ledger (``triggers``) and the recordings (``devices``).
"""

from actimesh.audit._export import ExportResult, export_case, link_case
from actimesh.audit._retention import (
    RetentionReport,
    apply_retention,
    retain,
    retention_loop,
)
from actimesh.audit._store import parse_head, read_head
from actimesh.audit._verify import Finding, Tamper, VerifyReport, verify_ledger

__all__ = [
    "ExportResult",
    "Finding",
    "RetentionReport",
    "Tamper",
    "VerifyReport",
    "apply_retention",
    "export_case",
    "link_case",
    "parse_head",
    "read_head",
    "retain",
    "retention_loop",
    "verify_ledger",
]
