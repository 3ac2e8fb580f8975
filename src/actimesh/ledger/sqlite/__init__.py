"""The ledger in a SQLite file: the embedded store of a one-machine deployment."""

from actimesh.ledger.sqlite.schema import SCHEMA_VERSION, read_activation
from actimesh.ledger.sqlite.store import SqliteLedger

__all__ = ["SCHEMA_VERSION", "SqliteLedger", "read_activation"]
