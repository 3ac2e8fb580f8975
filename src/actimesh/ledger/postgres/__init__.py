"""The ledger in a PostgreSQL database: one chain per agency, for engines on several
hosts. :func:`actimesh.ledger.open_ledger` opens it for a ``postgresql://`` location."""

from actimesh.ledger.postgres.schema import SCHEMA_VERSION, lock_key, schema_name
from actimesh.ledger.postgres.store import PostgresLedger

__all__ = ["SCHEMA_VERSION", "PostgresLedger", "lock_key", "schema_name"]
