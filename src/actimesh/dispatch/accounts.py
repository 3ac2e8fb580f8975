"""Dispatch users, API tokens and browser sessions, in ``{data_dir}/dispatch-accounts.sqlite3``.

A separate file from the webhook outbox: it holds credentials (password hashes, token
hashes), is created mode 0600, and is also written by the ``actimesh users`` and
``actimesh tokens`` commands while the service runs (SQLite in WAL mode lets both).

* **Users** log in to the map: a name, a role (``dispatcher`` or ``admin``) and a scrypt
  password hash. Disabling or removing a user, or changing their password, ends their
  sessions at once.
* **API tokens** are for integrators and scripts: 256 bits from ``secrets``, shown once,
  stored only as their SHA-256 (a hash lookup, so the secret itself is never compared
  and a stolen database yields no usable token). The first characters (``amt_`` and 8
  more) are kept in clear as the token's id, so an operator can tell tokens apart and
  revoke one. A role, an optional expiry, and the ``telemetry`` grant.
* **Sessions** back the browser's cookie: 256-bit random ids stored as SHA-256, an idle
  and an absolute timeout.

Passwords are hashed with scrypt (stdlib ``hashlib.scrypt``), N=2**15, r=8, p=3: one of
the OWASP Password Storage Cheat Sheet's equivalent scrypt settings (32 MiB of memory per
guess, which is what makes GPU and ASIC guessing costly), about 0.25 s on one core of
the project's 2-core machine. The parameters are stored with each hash, so they can be
raised later without invalidating existing passwords.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from actimesh.dispatch._sqlite import SqliteStore, SqliteThread
from actimesh.errors import AccountError, LedgerError

__all__ = [
    "ACCOUNTS_FILE",
    "NAME_PATTERN",
    "TOKEN_PREFIX",
    "USER_ROLES",
    "AccountStore",
    "IssuedToken",
    "Role",
    "Session",
    "Token",
    "User",
    "check_name",
    "check_password_rules",
    "generate_password",
    "hash_password",
    "verify_password",
]

ACCOUNTS_FILE = "dispatch-accounts.sqlite3"
#: User and token names: lowercase, so "Kim" and "kim" can never be two accounts.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._@-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
#: Marks actimesh tokens (secret scanners and people can recognise a leaked one).
TOKEN_PREFIX = "amt_"  # noqa: S105 - a public marker, not a secret
_TOKEN_ID_CHARS = 8
MIN_PASSWORD = 12
MAX_PASSWORD = 1024

# scrypt: see the module docstring. maxmem leaves room above the 128*N*r bytes it needs.
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 3
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_SCRYPT_MAX_N = 2**20  # refuse absurd parameters read back from a tampered file
_SALT_BYTES = 16
_KEY_BYTES = 32
#: last_seen / last_used are written at most this often (not on every request).
_TOUCH_S = 30.0


class Role(StrEnum):
    """What a user or token may do; each role includes the ones before it."""

    #: Read-only: activations, their outcomes, the live stream, metrics. No positions
    #: unless the token has the ``telemetry`` grant.
    INTEGRATOR = "integrator"
    #: The live map with positions, and dispatcher zones (activates cameras).
    DISPATCHER = "dispatcher"
    #: Everything: webhooks, users and tokens.
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def includes(self, other: Role) -> bool:
        """True if this role may do what ``other`` may."""
        return self.rank >= other.rank


_RANKS = {Role.INTEGRATOR: 0, Role.DISPATCHER: 1, Role.ADMIN: 2}
#: Roles a person logging in to the map can have (integrators use tokens).
USER_ROLES = (Role.DISPATCHER, Role.ADMIN)


# ---------------------------------------------------------------------- passwords
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _password_bytes(password: str) -> bytes:
    # NFKC, as NIST SP 800-63B asks: the same password typed on another keyboard or
    # system (composed or decomposed accents) must match.
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$key`` (base64). Slow on purpose: call it off the event loop."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.scrypt(
        _password_bytes(password),
        salt=salt,
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        maxmem=_SCRYPT_MAXMEM,
        dklen=_KEY_BYTES,
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``; the comparison takes constant time."""
    try:
        scheme, n_text, r_text, p_text, salt_text, key_text = encoded.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(key_text, validate=True)
    except ValueError:
        return False
    if scheme != "scrypt" or not (1 < n <= _SCRYPT_MAX_N and 0 < r <= 32 and 0 < p <= 16):
        return False
    try:
        key = hashlib.scrypt(
            _password_bytes(password),
            salt=salt,
            n=n,
            r=r,
            p=p,
            maxmem=max(_SCRYPT_MAXMEM, 256 * n * r),
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(key, expected)


def generate_password() -> str:
    """A random password of 144 bits (24 URL-safe characters), for people to copy once."""
    return secrets.token_urlsafe(18)


def check_password_rules(password: str) -> None:
    """Raise :class:`AccountError` if ``password`` is too short, too long or not text."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(
            "invalid",
            f"the password must have at least {MIN_PASSWORD} characters; "
            "leave it out to get a generated one",
        )
    if len(password) > MAX_PASSWORD:
        raise AccountError("invalid", f"the password must have at most {MAX_PASSWORD} characters")
    if not password.isprintable():
        raise AccountError("invalid", "the password must be printable text (no control characters)")


def check_name(what: str, name: str) -> str:
    """``name`` if it is a valid user or token name, else :class:`AccountError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AccountError(
            "invalid",
            f"{what} {name!r} must be 1 to 64 lowercase letters, digits, '.', '_', "
            "'-' or '@', starting with a letter or digit",
        )
    return name


def sha256_hex(secret: str) -> str:
    """The stored form of a token or session id."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class User:
    """A person who logs in to the map."""

    name: str
    role: Role
    created_ts: float
    password_ts: float
    disabled_ts: float | None = None

    @property
    def disabled(self) -> bool:
        return self.disabled_ts is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "created_ts": self.created_ts,
            "password_ts": self.password_ts,
            "disabled": self.disabled,
            "disabled_ts": self.disabled_ts,
        }


@dataclass(frozen=True, slots=True)
class Token:
    """An API token as stored (its secret is not)."""

    id: str
    name: str
    role: Role
    telemetry: bool
    created_ts: float
    created_by: str
    expires_ts: float | None = None
    revoked_ts: float | None = None
    last_used_ts: float | None = None

    def state(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_ts is not None:
            return "revoked"
        if self.expires_ts is not None and self.expires_ts <= now:
            return "expired"
        return "active"

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "telemetry": self.telemetry,
            "created_ts": self.created_ts,
            "created_by": self.created_by,
            "expires_ts": self.expires_ts,
            "revoked_ts": self.revoked_ts,
            "last_used_ts": self.last_used_ts,
            "state": self.state(now),
        }


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token just created: the only time its secret exists outside the client."""

    token: Token
    secret: str


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser."""

    key: str  # SHA-256 of the session id
    user: User
    created_ts: float
    last_seen_ts: float
    client: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    password    TEXT NOT NULL,
    created_ts  REAL NOT NULL,
    password_ts REAL NOT NULL,
    disabled_ts REAL
);
CREATE TABLE IF NOT EXISTS tokens (
    id           TEXT PRIMARY KEY,
    sha256       TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    telemetry    INTEGER NOT NULL,
    created_ts   REAL NOT NULL,
    created_by   TEXT NOT NULL,
    expires_ts   REAL,
    revoked_ts   REAL,
    last_used_ts REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    sha256       TEXT PRIMARY KEY,
    user         TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    created_ts   REAL NOT NULL,
    last_seen_ts REAL NOT NULL,
    client       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user);
"""
_SELECT_USERS = "SELECT name, role, created_ts, password_ts, disabled_ts, password FROM users"
_SELECT_TOKENS = (
    "SELECT id, name, role, telemetry, created_ts, created_by, expires_ts, revoked_ts, "
    "last_used_ts FROM tokens"
)


def _user(row: Sequence[Any]) -> User:
    return User(row[0], Role(row[1]), row[2], row[3], row[4])


def _token(row: Sequence[Any]) -> Token:
    return Token(row[0], row[1], Role(row[2]), bool(row[3]), row[4], row[5], row[6], row[7], row[8])


class AccountStore(SqliteStore):
    """Users, tokens and sessions. ``async with AccountStore(path) as store``.

    Every call runs on the store's own database thread, except password hashing, which
    runs on a worker thread so that a login never holds up other requests' lookups.
    """

    label = "dispatch accounts"

    def __init__(
        self,
        path: Path,
        *,
        session_idle_s: float = 30 * 60.0,
        session_max_s: float = 12 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.session_idle_s = session_idle_s
        self.session_max_s = session_max_s
        self.clock = clock
        self._thread = SqliteThread("accounts", self._connect)

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 before SQLite opens it: its -wal and -shm files inherit the mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(self.path, 0o600)
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA secure_delete=ON")
            conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(
                f"cannot open the dispatch accounts at {self.path}: {exc}; check the "
                "--data-dir is writable"
            ) from exc
        return conn

    def _write(self, fn: Callable[[], Any]) -> Any:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            result = fn()
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"dispatch accounts: {exc}") from exc
            raise
        return result

    # ------------------------------------------------------------------ users
    def _get_user(self, name: str) -> User | None:
        row = self._tx(f"{_SELECT_USERS} WHERE name = ?", (name,)).fetchone()
        return None if row is None else _user(row)

    def _known_user(self, name: str) -> User:
        found = self._get_user(name)
        if found is None:
            raise AccountError("unknown", f"no user {name!r}; `actimesh users list` shows them")
        return found

    def _enabled_admins(self) -> int:
        row = self._tx(
            "SELECT count(*) FROM users WHERE role = ? AND disabled_ts IS NULL", (Role.ADMIN,)
        ).fetchone()
        return int(row[0])

    def _keep_an_admin(self, user: User, what: str) -> None:
        if user.role is Role.ADMIN and not user.disabled and self._enabled_admins() <= 1:
            raise AccountError(
                "last_admin",
                f"cannot {what} {user.name!r}: it is the only enabled admin; "
                "add another admin first",
            )

    async def add_user(
        self, name: str, role: Role, password: str | None = None
    ) -> tuple[User, str | None]:
        """Add a user; the generated password when none was given (shown once)."""
        check_name("user name", name)
        if role not in USER_ROLES:
            raise AccountError(
                "invalid",
                f"a user's role is dispatcher or admin, not {role}; integrators "
                "use API tokens (`actimesh tokens create --role integrator`)",
            )
        generated = None
        if password is None:
            password = generated = generate_password()
        check_password_rules(password)
        encoded = await _hash(password)
        now = self.clock()

        def add() -> User:
            if self._get_user(name) is not None:
                raise AccountError("exists", f"user {name!r} already exists")
            self._tx(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?, NULL)",
                (name, role.value, encoded, now, now),
            )
            return User(name, role, now, now)

        user: User = await self._thread.run(lambda: self._write(add))
        return user, generated

    async def users(self) -> list[User]:
        """Every user, by name."""
        return await self._thread.run(
            lambda: [_user(r) for r in self._tx(f"{_SELECT_USERS} ORDER BY name")]
        )

    async def user(self, name: str) -> User | None:
        """One user, or None."""
        return await self._thread.run(lambda: self._get_user(name))

    async def count_users(self) -> int:
        """How many users there are (enabled or not)."""
        return await self._thread.run(
            lambda: int(self._tx("SELECT count(*) FROM users").fetchone()[0])
        )

    async def set_disabled(self, name: str, disabled: bool) -> User:
        """Disable (ending every session of theirs) or enable a user."""
        now = self.clock()

        def change() -> User:
            user = self._known_user(name)
            if disabled:
                self._keep_an_admin(user, "disable")
                self._tx(
                    "UPDATE users SET disabled_ts = coalesce(disabled_ts, ?) WHERE name = ?",
                    (now, name),
                )
                self._tx("DELETE FROM sessions WHERE user = ?", (name,))
            else:
                self._tx("UPDATE users SET disabled_ts = NULL WHERE name = ?", (name,))
            return self._known_user(name)

        user: User = await self._thread.run(lambda: self._write(change))
        return user

    async def remove_user(self, name: str) -> User:
        """Remove a user and their sessions."""

        def remove() -> User:
            user = self._known_user(name)
            self._keep_an_admin(user, "remove")
            self._tx("DELETE FROM sessions WHERE user = ?", (name,))
            self._tx("DELETE FROM users WHERE name = ?", (name,))
            return user

        user: User = await self._thread.run(lambda: self._write(remove))
        return user

    async def set_password(self, name: str, password: str | None = None) -> str | None:
        """Set a new password (ending the user's sessions); the generated one if none given."""
        generated = None
        if password is None:
            password = generated = generate_password()
        check_password_rules(password)
        encoded = await _hash(password)
        now = self.clock()

        def change() -> None:
            self._known_user(name)
            self._tx(
                "UPDATE users SET password = ?, password_ts = ? WHERE name = ?",
                (encoded, now, name),
            )
            self._tx("DELETE FROM sessions WHERE user = ?", (name,))

        await self._thread.run(lambda: self._write(change))
        return generated

    async def password_hash(self, name: str) -> tuple[User, str] | None:
        """A user and their stored hash, for the login check (which runs elsewhere)."""

        def fetch() -> tuple[User, str] | None:
            row = self._tx(f"{_SELECT_USERS} WHERE name = ?", (name,)).fetchone()
            return None if row is None else (_user(row), str(row[5]))

        return await self._thread.run(fetch)

    # ------------------------------------------------------------------ tokens
    async def create_token(
        self,
        name: str,
        role: Role,
        *,
        created_by: str,
        telemetry: bool = False,
        expires_s: float | None = None,
    ) -> IssuedToken:
        """Issue a token; its secret is in the result and nowhere else."""
        check_name("token name", name)
        if expires_s is not None and not expires_s > 0:
            raise AccountError("invalid", "a token's expiry must be in the future")
        now = self.clock()

        def create() -> IssuedToken:
            taken = self._tx(
                "SELECT 1 FROM tokens WHERE name = ? AND revoked_ts IS NULL "
                "AND (expires_ts IS NULL OR expires_ts > ?)",
                (name, now),
            ).fetchone()
            if taken is not None:
                raise AccountError(
                    "exists",
                    f"an active token is already named {name!r}; revoke it or choose another name",
                )
            while True:
                secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
                token_id = secret[: len(TOKEN_PREFIX) + _TOKEN_ID_CHARS]
                if self._tx("SELECT 1 FROM tokens WHERE id = ?", (token_id,)).fetchone() is None:
                    break
            expires = None if expires_s is None else now + expires_s
            self._tx(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                (
                    token_id,
                    sha256_hex(secret),
                    name,
                    role.value,
                    int(telemetry),
                    now,
                    created_by,
                    expires,
                ),
            )
            token = Token(token_id, name, role, telemetry, now, created_by, expires)
            return IssuedToken(token, secret)

        issued: IssuedToken = await self._thread.run(lambda: self._write(create))
        return issued

    async def tokens(self) -> list[Token]:
        """Every token (revoked and expired ones too), newest first."""
        return await self._thread.run(
            lambda: [_token(r) for r in self._tx(f"{_SELECT_TOKENS} ORDER BY created_ts DESC")]
        )

    async def revoke_token(self, key: str) -> Token:
        """Revoke the token with this id (``amt_…``) or this active token name."""
        now = self.clock()

        def revoke() -> Token:
            rows = self._tx(
                f"{_SELECT_TOKENS} WHERE id = ? OR (name = ? AND revoked_ts IS NULL)",
                (key, key),
            ).fetchall()
            if not rows:
                raise AccountError(
                    "unknown", f"no token {key!r}; `actimesh tokens list` shows ids and names"
                )
            if len(rows) > 1:
                raise AccountError("invalid", f"{key!r} names several tokens; give the token id")
            token = _token(rows[0])
            self._tx(
                "UPDATE tokens SET revoked_ts = coalesce(revoked_ts, ?) WHERE id = ?",
                (now, token.id),
            )
            found = self._tx(f"{_SELECT_TOKENS} WHERE id = ?", (token.id,)).fetchone()
            return _token(found)

        token: Token = await self._thread.run(lambda: self._write(revoke))
        return token

    async def resolve_token(self, secret: str) -> Token | None:
        """The active token whose secret this is, or None (unknown, revoked or expired)."""
        digest = sha256_hex(secret)
        now = self.clock()

        def resolve() -> Token | None:
            row = self._tx(f"{_SELECT_TOKENS} WHERE sha256 = ?", (digest,)).fetchone()
            if row is None:
                return None
            token = _token(row)
            if token.state(now) != "active":
                return None
            if token.last_used_ts is None or now - token.last_used_ts > _TOUCH_S:
                self._tx("UPDATE tokens SET last_used_ts = ? WHERE id = ?", (now, token.id))
            return token

        return await self._thread.run(resolve)

    # ------------------------------------------------------------------ sessions
    async def create_session(
        self, user: User, *, client: str, replaces: str | None = None
    ) -> tuple[str, Session]:
        """A new session id for ``user`` (and the end of ``replaces``, the session id the
        browser had before: a fresh id on every login defeats session fixation)."""
        session_id = secrets.token_urlsafe(32)
        key = sha256_hex(session_id)
        now = self.clock()

        def create() -> Session:
            if replaces is not None:
                self._tx("DELETE FROM sessions WHERE sha256 = ?", (sha256_hex(replaces),))
            self._tx(
                "DELETE FROM sessions WHERE last_seen_ts < ? OR created_ts < ?",
                (now - self.session_idle_s, now - self.session_max_s),
            )
            self._tx(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (key, user.name, now, now, client)
            )
            return Session(key, user, now, now, client)

        session: Session = await self._thread.run(lambda: self._write(create))
        return session_id, session

    async def resolve_session(self, session_id: str, *, touch: bool = True) -> Session | None:
        """The live session with this id, or None (unknown, timed out, user disabled)."""
        key = sha256_hex(session_id)
        now = self.clock()

        def resolve() -> Session | None:
            row = self._tx(
                "SELECT s.created_ts, s.last_seen_ts, s.client, u.name, u.role, u.created_ts, "
                "u.password_ts, u.disabled_ts FROM sessions s JOIN users u ON u.name = s.user "
                "WHERE s.sha256 = ?",
                (key,),
            ).fetchone()
            if row is None:
                return None
            created, seen, client = row[0], row[1], row[2]
            user = _user(row[3:])
            if (
                user.disabled
                or now - seen > self.session_idle_s
                or now - created > self.session_max_s
            ):
                self._tx("DELETE FROM sessions WHERE sha256 = ?", (key,))
                return None
            if touch and now - seen > _TOUCH_S:
                self._tx("UPDATE sessions SET last_seen_ts = ? WHERE sha256 = ?", (now, key))
                seen = now
            return Session(key, user, created, seen, client)

        return await self._thread.run(resolve)

    async def end_session(self, session_id: str) -> bool:
        """Log out: False if there was no such session."""
        key = sha256_hex(session_id)
        return await self._thread.run(
            lambda: self._tx("DELETE FROM sessions WHERE sha256 = ?", (key,)).rowcount > 0
        )


async def _hash(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)
