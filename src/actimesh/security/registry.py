"""The device registry: who may connect to the managed broker, as what.

One SQLite file, ``{data_dir}/registry.sqlite3`` (mode 0600), holds:

* **devices**: id (= MQTT username), kind, unit, paired device ids, the Ed25519 public
  key the device signs its recording manifests with, and whether the simulator owns it;
* **accounts** that are not devices: the service accounts of the processes actimesh
  starts (``svc-engine``, ``svc-dispatch``, ``svc-monitor``), integrators
  (``int-{name}``, activations and alerts, telemetry only if granted), operators
  (``op-{name}``, activations, alerts and dead letters) and the benchmark's load
  generator.

Only password *hashes* are stored (:mod:`.passwords`): the ``$7$`` hash Mosquitto
checks and the bcrypt hash a NATS cluster checks (:meth:`Registry.nats_hashes`). A
password, and a device's private key, exist in clear only in the value returned by
:meth:`Registry.add` or :meth:`Registry.rotate`, which the CLI prints once.
Service-account passwords are new on every start of ``actimesh up`` and written to
``{data_dir}/secrets/{account}.password`` (0600, folder 0700) for the processes that
need them.

The broker never reads this file: :meth:`Registry.write_broker_files` renders the
Mosquitto ``passwd`` and ``acl`` files from it (atomically, 0600), and a reload of the
running broker applies them (see :meth:`ManagedMosquitto.reload
<actimesh.broker.mosquitto.ManagedMosquitto.reload>`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.broker.dynsec import Access, plugin_config
from actimesh.broker.messages import DeviceKind
from actimesh.broker.nats.auth import bcrypt_hash
from actimesh.broker.topics import is_identifier
from actimesh.errors import SecurityError
from actimesh.private import write_private
from actimesh.security.acl import (
    INTEGRATOR_PREFIX,
    LOADGEN_ACCOUNT,
    OPERATOR_PREFIX,
    SERVICE_ADAPTER,
    SERVICE_ADMIN,
    SERVICE_DISPATCH,
    SERVICE_ENGINE,
    SERVICE_MONITOR,
    AccountRole,
    AclAccount,
    AclDevice,
    AclPolicy,
    render_access,
)
from actimesh.security.passwords import (
    generate_password,
    hash_password,
    password_line,
    verify_password,
)

__all__ = [
    "ACCESS_NAME",
    "ADMIN_NAME",
    "DYNSEC_NAME",
    "MAX_LABEL",
    "MAX_PAIRED",
    "PASSWD_NAME",
    "REGISTRY_NAME",
    "RESERVED_PREFIXES",
    "SECRETS_DIR",
    "Account",
    "BrokerFiles",
    "Credentials",
    "Device",
    "DeviceCredentials",
    "DeviceSpec",
    "Registry",
    "check_spec",
    "read_secret",
]

REGISTRY_NAME = "registry.sqlite3"
SECRETS_DIR = "secrets"
PASSWD_NAME = "passwd"  # noqa: S105 - a file name
ACCESS_NAME = "access.json"
ADMIN_NAME = "admin"
DYNSEC_NAME = "dynsec.json"
#: Device ids may not start with these: they name service accounts, integrators,
#: operators and the dispatch console's zone device, whose topics the ACL gives to those
#: accounts.
RESERVED_PREFIXES = ("svc-", "int-", "op-", "dispatch-")
#: A presence message carries at most this many paired ids.
MAX_PAIRED = 16

_SERVICE_ROLES = {
    SERVICE_ENGINE: AccountRole.ENGINE,
    SERVICE_DISPATCH: AccountRole.DISPATCH,
    SERVICE_MONITOR: AccountRole.MONITOR,
    SERVICE_ADMIN: AccountRole.ADMIN,
    SERVICE_ADAPTER: AccountRole.ADAPTER,
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    unit TEXT,
    paired TEXT NOT NULL DEFAULT '[]',
    public_key TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    simulated INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    rotated REAL NOT NULL,
    disabled TEXT,
    nats_hash TEXT,
    call_sign TEXT,
    officer TEXT
);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    telemetry INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT NOT NULL,
    created REAL NOT NULL,
    rotated REAL NOT NULL,
    nats_hash TEXT
);
"""
_SCHEMA_VERSION = 1
_SELECT_DEVICES = (
    "SELECT id, kind, unit, paired, public_key, simulated, created, rotated, disabled, "
    "call_sign, officer FROM devices"
)
#: A call sign or an officer: printable text, at most this long.
MAX_LABEL = 64
#: Checked against when a device id is unknown (no password matches it).
_UNKNOWN_HASH = hash_password(generate_password())


@dataclass(frozen=True, slots=True)
class Credentials:
    """An MQTT username and its password (kept out of ``repr``, so out of logs)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """What a device needs, shown once: its MQTT login and its Ed25519 signing key."""

    device_id: str
    password: str = field(repr=False)
    #: Raw 32-byte Ed25519 private key, hex. It signs the device's recording manifests.
    private_key: str = field(repr=False)
    #: Raw 32-byte Ed25519 public key, hex (also in the registry).
    public_key: str

    @property
    def username(self) -> str:
        return self.device_id

    @property
    def mqtt(self) -> Credentials:
        return Credentials(self.device_id, self.password)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device to register: what ``actimesh devices add`` takes, or the simulator builds."""

    device_id: str
    kind: DeviceKind
    unit: str | None = None
    paired: tuple[str, ...] = ()
    #: The radio call sign of the unit or officer it rides with (``12A3``), if any.
    call_sign: str | None = None
    #: Who carries or drives it (a badge number or name), if any.
    officer: str | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device (no secrets)."""

    device_id: str
    kind: DeviceKind
    unit: str | None
    paired: tuple[str, ...]
    public_key: str
    simulated: bool
    created: float
    rotated: float
    #: Why the account is disabled (``actimesh devices disable``, or quarantined for
    #: flooding); None while it may connect.
    disabled: str | None = None
    call_sign: str | None = None
    officer: str | None = None


@dataclass(frozen=True, slots=True)
class Account:
    """A registered non-device account (no secrets)."""

    name: str
    role: AccountRole
    telemetry: bool
    created: float
    rotated: float


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The broker's files rendered from the registry."""

    passwd: Path
    access: Path
    #: The admin login, when the service accounts exist (``actimesh up`` makes them).
    admin: Path


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def read_secret(data_dir: Path, account: str) -> str:
    """The password ``actimesh up`` wrote for service ``account`` in ``data_dir``."""
    path = data_dir / SECRETS_DIR / f"{account}.password"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SecurityError(
            f"no password for {account} at {path}: start `actimesh up --data-dir {data_dir}` "
            "first, which writes it"
        ) from None


def _issue(device_id: str) -> DeviceCredentials:
    """A new password and Ed25519 key pair for ``device_id``."""
    key = Ed25519PrivateKey.generate()
    return DeviceCredentials(
        device_id,
        generate_password(),
        key.private_bytes_raw().hex(),
        key.public_key().public_bytes_raw().hex(),
    )


def _check_id(device_id: str) -> None:
    if not is_identifier(device_id):
        raise SecurityError(
            f"device id {device_id!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    lowered = device_id.lower()
    for prefix in RESERVED_PREFIXES:
        if lowered.startswith(prefix):
            raise SecurityError(
                f"device id {device_id!r} starts with {prefix!r}, which is reserved for "
                "service accounts, integrators and dispatch: choose another id"
            )


def check_spec(spec: DeviceSpec) -> None:
    """Refuse a device spec that is wrong on its own (:class:`SecurityError` says what and
    how to fix it): its id, kind, unit, call sign, officer and pairing list."""
    _check_spec(spec)


def _check_spec(spec: DeviceSpec) -> None:
    _check_id(spec.device_id)
    if not isinstance(spec.kind, DeviceKind):
        raise SecurityError(f"device {spec.device_id}: kind {spec.kind!r} is not a device kind")
    if spec.unit is not None and not is_identifier(spec.unit):
        raise SecurityError(
            f"unit {spec.unit!r} of {spec.device_id} is not valid: use letters, digits, "
            "'.', '_' or '-'"
        )
    for what, label in (("call sign", spec.call_sign), ("officer", spec.officer)):
        if label is not None and (
            not label or len(label) > MAX_LABEL or not label.isprintable() or label != label.strip()
        ):
            raise SecurityError(
                f"{what} {label!r} of {spec.device_id} is not valid: use 1-{MAX_LABEL} printable "
                "characters with no leading or trailing space"
            )
    if len(spec.paired) > MAX_PAIRED:
        raise SecurityError(f"device {spec.device_id} pairs with more than {MAX_PAIRED} devices")
    if spec.device_id in spec.paired:
        raise SecurityError(f"device {spec.device_id} cannot be paired with itself")
    if len(set(spec.paired)) != len(spec.paired):
        raise SecurityError(f"device {spec.device_id} lists a paired device twice")


class Registry:
    """The registry at ``path`` (created, 0600, on first use). A context manager.

    Writes take SQLite's write lock at once (``BEGIN IMMEDIATE``), so ``actimesh devices``
    and a starting ``actimesh up`` on the same data directory take turns, never interleave.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Created 0600 before SQLite opens it: it holds hashes and public keys.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(devices)")}
            if "disabled" not in columns:  # a registry from before accounts could be disabled
                self._db.execute("ALTER TABLE devices ADD COLUMN disabled TEXT")
            for table in ("devices", "accounts"):  # from before NATS clusters
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if "nats_hash" not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN nats_hash TEXT")
            for added in ("call_sign", "officer"):  # from before bulk import
                if added not in columns:
                    self._db.execute(f"ALTER TABLE devices ADD COLUMN {added} TEXT")
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                (str(_SCHEMA_VERSION),),
            )
        except sqlite3.DatabaseError as exc:
            raise SecurityError(f"cannot open the device registry {path}: {exc}") from exc

    @classmethod
    def open(cls, data_dir: Path) -> Registry:
        """The registry of data directory ``data_dir``."""
        return cls(data_dir / REGISTRY_NAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ------------------------------------------------------------------ devices
    def get(self, device_id: str) -> Device:
        """The device ``device_id``; :class:`SecurityError` if it is not registered."""
        row = self._db.execute(
            _SELECT_DEVICES + " WHERE id = ?",
            (device_id,),
        ).fetchone()
        if row is None:
            raise SecurityError(
                f"device {device_id!r} is not registered: see `actimesh devices list`"
            )
        return _device(row)

    def devices(self) -> list[Device]:
        """Every registered device, by id."""
        rows = self._db.execute(_SELECT_DEVICES + " ORDER BY id").fetchall()
        return [_device(row) for row in rows]

    def check_password(self, device_id: str, password: str) -> bool:
        """True when ``password`` is the broker password of registered device ``device_id``.

        The comparison is constant-time (:func:`~actimesh.security.passwords.verify_password`);
        an unknown or removed device is False, as is an account that is not a device.
        """
        row = self._db.execute(
            "SELECT password_hash FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        # An unknown id costs one PBKDF2 too, so timing does not tell which ids exist.
        matches = verify_password(password, _UNKNOWN_HASH if row is None else str(row[0]))
        return row is not None and matches

    def _exists(self, db: sqlite3.Connection, device_id: str) -> bool:
        return db.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone() is not None

    def add(
        self,
        device_id: str,
        kind: DeviceKind,
        *,
        unit: str | None = None,
        paired: Sequence[str] = (),
        call_sign: str | None = None,
        officer: str | None = None,
    ) -> DeviceCredentials:
        """Register a device; its credentials are in the result and nowhere else."""
        spec = DeviceSpec(device_id, kind, unit, tuple(paired), call_sign, officer)
        _check_spec(spec)
        issued = _issue(device_id)
        password, public = issued.password, issued.public_key
        now = time.time()
        with self._write() as db:
            if self._exists(db, device_id):
                raise SecurityError(
                    f"device {device_id!r} is already registered: `actimesh devices rotate "
                    f"{device_id}` issues new credentials"
                )
            for other in spec.paired:
                if not self._exists(db, other):
                    raise SecurityError(
                        f"cannot pair {device_id} with {other!r}: no such device (add it first)"
                    )
            db.execute(
                _INSERT_DEVICE,
                _device_values(spec, public, hash_password(password), bcrypt_hash(password), now),
            )
        return issued

    def problems(self, specs: Sequence[DeviceSpec]) -> dict[str, str]:
        """What stops ``specs`` being registered together, by device id: an id that is
        registered already, or a paired device neither registered nor among ``specs``.
        Each message says how to fix it. The checks of each spec on its own
        (:func:`check_spec`) are the caller's."""
        registered = {row[0] for row in self._db.execute("SELECT id FROM devices")}
        new = {s.device_id for s in specs}
        out: dict[str, str] = {}
        for spec in specs:
            if spec.device_id in registered:
                out[spec.device_id] = (
                    f"device {spec.device_id!r} is already registered: take the row out of "
                    f"the file, or `actimesh devices remove {spec.device_id}` first"
                )
                continue
            missing = [p for p in spec.paired if p not in registered and p not in new]
            if missing:
                out[spec.device_id] = (
                    f"paired device {missing[0]!r} is neither registered nor in the file: "
                    "add a row for it, or take it out of this row's paired column"
                )
        return out

    def add_many(self, specs: Sequence[DeviceSpec]) -> dict[str, DeviceCredentials]:
        """Register every device of ``specs`` in one transaction, or none of them: their
        credentials are in the result and nowhere else. :class:`SecurityError` names the
        first problem (see :meth:`problems` for all of them)."""
        if len({s.device_id for s in specs}) != len(specs):
            raise SecurityError("the devices to register list an id twice")
        for spec in specs:
            _check_spec(spec)
        creds: dict[str, DeviceCredentials] = {}
        rows = []
        now = time.time()
        for spec in specs:
            issued = creds[spec.device_id] = _issue(spec.device_id)
            password = issued.password
            rows.append(
                _device_values(
                    spec, issued.public_key, hash_password(password), bcrypt_hash(password), now
                )
            )
        with self._write():
            problems = self.problems(specs)
            if problems:
                raise SecurityError(next(iter(problems.values())))
            self._db.executemany(_INSERT_DEVICE, rows)
        return creds

    def rotate(self, device_id: str) -> DeviceCredentials:
        """New password and key pair for ``device_id``; the old ones stop working on reload."""
        issued = _issue(device_id)
        password, public = issued.password, issued.public_key
        with self._write() as db:
            cur = db.execute(
                "UPDATE devices SET password_hash = ?, nats_hash = ?, public_key = ?, rotated = ? "
                "WHERE id = ?",
                (hash_password(password), bcrypt_hash(password), public, time.time(), device_id),
            )
            if cur.rowcount == 0:
                raise SecurityError(
                    f"device {device_id!r} is not registered: see `actimesh devices list`"
                )
        return issued

    def disable(self, device_id: str, reason: str) -> bool:
        """Refuse ``device_id`` at the broker from the next reload (which also disconnects
        it) until :meth:`enable`. Returns False if it was disabled already."""
        with self._write() as db:
            row = db.execute("SELECT disabled FROM devices WHERE id = ?", (device_id,)).fetchone()
            if row is None:
                raise SecurityError(
                    f"device {device_id!r} is not registered: see `actimesh devices list`"
                )
            if row[0] is not None:
                return False
            db.execute("UPDATE devices SET disabled = ? WHERE id = ?", (reason, device_id))
            return True

    def enable(self, device_id: str) -> bool:
        """Let a disabled ``device_id`` log in again. Returns False if it was not disabled."""
        with self._write() as db:
            row = db.execute("SELECT disabled FROM devices WHERE id = ?", (device_id,)).fetchone()
            if row is None:
                raise SecurityError(
                    f"device {device_id!r} is not registered: see `actimesh devices list`"
                )
            db.execute("UPDATE devices SET disabled = NULL WHERE id = ?", (device_id,))
            return row[0] is not None

    def remove(self, device_id: str) -> tuple[str, ...]:
        """Remove ``device_id``; returns the devices that were paired with it (no longer)."""
        with self._write() as db:
            if not self._exists(db, device_id):
                raise SecurityError(
                    f"device {device_id!r} is not registered: see `actimesh devices list`"
                )
            db.execute("DELETE FROM devices WHERE id = ?", (device_id,))
            return self._unpair(db, {device_id})

    def _unpair(self, db: sqlite3.Connection, gone: set[str]) -> tuple[str, ...]:
        changed = []
        for other, paired_json in db.execute("SELECT id, paired FROM devices").fetchall():
            paired = json.loads(paired_json)
            kept = [p for p in paired if p not in gone]
            if kept != paired:
                changed.append(other)
                db.execute("UPDATE devices SET paired = ? WHERE id = ?", (json.dumps(kept), other))
        return tuple(sorted(changed))

    def provision_simulated(
        self, specs: Sequence[DeviceSpec], *, cluster_logins: bool = False
    ) -> dict[str, DeviceCredentials]:
        """Register the simulated fleet ``specs``, with new credentials for every device.

        Called on every start of a simulation: simulated devices that are not in
        ``specs`` any more are removed, and every one in it gets a new password and key
        (returned, never shown). An id that an operator registered is refused: the
        simulator would otherwise take over a real camera's credentials.

        ``cluster_logins``: also the bcrypt hash a NATS cluster needs to admit them
        (0.9 ms a device, against 0.1 ms for the rest: 9 s more for 10,000 devices on
        every start, so only for a fleet that runs on a cluster).
        """
        ids = {s.device_id for s in specs}
        if len(ids) != len(specs):
            raise SecurityError("the simulated fleet lists a device id twice")
        for spec in specs:
            _check_spec(spec)
            missing = [p for p in spec.paired if p not in ids]
            if missing:
                raise SecurityError(
                    f"simulated device {spec.device_id} pairs with {missing[0]!r}, which is "
                    "not in the simulated fleet"
                )
        creds: dict[str, DeviceCredentials] = {}
        rows = []
        now = time.time()
        for spec in specs:
            issued = creds[spec.device_id] = _issue(spec.device_id)
            password = issued.password
            rows.append(
                (
                    spec.device_id,
                    spec.kind.value,
                    spec.unit,
                    json.dumps(list(spec.paired)),
                    issued.public_key,
                    hash_password(password),
                    bcrypt_hash(password) if cluster_logins else None,
                    now,
                    now,
                )
            )
        with self._write() as db:
            operator = {
                row[0]
                for row in db.execute("SELECT id FROM devices WHERE simulated = 0").fetchall()
            }
            clash = sorted(ids & operator)
            if clash:
                raise SecurityError(
                    f"simulated device {clash[0]!r} is registered by an operator: remove it "
                    "(`actimesh devices remove`) or simulate in another data directory"
                )
            stale = {
                row[0]
                for row in db.execute("SELECT id FROM devices WHERE simulated = 1").fetchall()
            } - ids
            db.executemany("DELETE FROM devices WHERE id = ?", [(d,) for d in sorted(stale)])
            if stale:
                self._unpair(db, stale)
            db.executemany(
                "INSERT INTO devices (id, kind, unit, paired, public_key, password_hash, "
                "nats_hash, simulated, created, rotated) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, unit = excluded.unit, "
                "paired = excluded.paired, public_key = excluded.public_key, "
                "password_hash = excluded.password_hash, nats_hash = excluded.nats_hash, "
                "rotated = excluded.rotated",
                rows,
            )
        return creds

    # ------------------------------------------------------------------ accounts
    def accounts(self) -> list[Account]:
        """Every non-device account, by name."""
        rows = self._db.execute(
            "SELECT name, role, telemetry, created, rotated FROM accounts ORDER BY name"
        ).fetchall()
        return [Account(n, AccountRole(r), bool(t), c, rot) for n, r, t, c, rot in rows]

    def integrators(self) -> list[Account]:
        """The integrator accounts, by name."""
        return [a for a in self.accounts() if a.role is AccountRole.INTEGRATOR]

    def _set_account(
        self, name: str, role: AccountRole, *, telemetry: bool = False, new: bool = False
    ) -> Credentials:
        password = generate_password()
        now = time.time()
        with self._write() as db:
            if new and db.execute("SELECT 1 FROM accounts WHERE name = ?", (name,)).fetchone():
                raise SecurityError(f"account {name!r} already exists: remove it first")
            db.execute(
                "INSERT INTO accounts (name, role, telemetry, password_hash, nats_hash, created, "
                "rotated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "role = excluded.role, telemetry = excluded.telemetry, "
                "password_hash = excluded.password_hash, nats_hash = excluded.nats_hash, "
                "rotated = excluded.rotated",
                (
                    name,
                    role.value,
                    int(telemetry),
                    hash_password(password),
                    bcrypt_hash(password),
                    now,
                    now,
                ),
            )
        return Credentials(name, password)

    def add_integrator(self, name: str, *, telemetry: bool = False) -> Credentials:
        """A read-only integrator account ``int-{name}``: activations, and telemetry only
        if ``telemetry``. Its password is in the result and nowhere else."""
        account = _integrator_account(name)
        return self._set_account(account, AccountRole.INTEGRATOR, telemetry=telemetry, new=True)

    def remove_integrator(self, name: str) -> None:
        """Remove integrator ``int-{name}`` (``name`` may include the prefix)."""
        self._remove_account(_integrator_account(name), AccountRole.INTEGRATOR, "integrators")

    def operators(self) -> list[Account]:
        """The operator accounts, by name."""
        return [a for a in self.accounts() if a.role is AccountRole.OPERATOR]

    def add_operator(self, name: str) -> Credentials:
        """An operator account ``op-{name}``: activations, alerts and dead letters, read
        only. Its password is in the result and nowhere else."""
        account = _prefixed(name, OPERATOR_PREFIX, "operator")
        return self._set_account(account, AccountRole.OPERATOR, new=True)

    def remove_operator(self, name: str) -> None:
        """Remove operator ``op-{name}`` (``name`` may include the prefix)."""
        account = _prefixed(name, OPERATOR_PREFIX, "operator")
        self._remove_account(account, AccountRole.OPERATOR, "operators")

    def _remove_account(self, account: str, role: AccountRole, command: str) -> None:
        """Remove ``account`` of ``role``; ``command``: the CLI command that lists them."""
        with self._write() as db:
            cur = db.execute(
                "DELETE FROM accounts WHERE name = ? AND role = ?", (account, role.value)
            )
            if cur.rowcount == 0:
                raise SecurityError(
                    f"{role.value} {account!r} does not exist: see `actimesh {command} list`"
                )

    def ensure_service_accounts(
        self, secrets_dir: Path, *, keep_existing: bool = False
    ) -> dict[str, Credentials]:
        """Passwords for ``svc-engine``, ``svc-dispatch`` and ``svc-monitor``, each in
        ``secrets_dir/{account}.password`` (0600, folder 0700).

        New ones each time by default (``actimesh up`` rotates them on every start). With
        ``keep_existing``, an account whose password file is there is left as it is: an
        external broker's processes read those files, and a rotation would lock them out.
        """
        _private_dir(secrets_dir)
        known = {a.name for a in self.accounts()}
        out = {}
        for name, role in _SERVICE_ROLES.items():
            path = secrets_dir / f"{name}.password"
            if keep_existing and name in known and path.is_file():
                kept = Credentials(name, path.read_text(encoding="utf-8").strip())
                with self._write() as db:  # a registry from before NATS clusters
                    db.execute(
                        "UPDATE accounts SET nats_hash = ? WHERE name = ? AND nats_hash IS NULL",
                        (bcrypt_hash(kept.password), name),
                    )
                out[name] = kept
                continue
            creds = self._set_account(name, role)
            write_private(path, creds.password + "\n")
            out[name] = creds
        return out

    def ensure_loadgen(self) -> Credentials:
        """The load generator's account (``actimesh bench`` and the fault drill only)."""
        return self._set_account(LOADGEN_ACCOUNT, AccountRole.LOADGEN)

    # ------------------------------------------------------------------ broker files
    def password_file_text(self) -> str:
        """The Mosquitto ``password_file``: every device and account, hashes only."""
        rows = self._db.execute(
            "SELECT id, password_hash FROM devices UNION ALL "
            "SELECT name, password_hash FROM accounts ORDER BY 1"
        ).fetchall()
        return "".join(password_line(name, hashed) + "\n" for name, hashed in rows)

    def nats_hashes(self) -> dict[str, str]:
        """The bcrypt hash a NATS cluster checks, of every device and account that has
        one. One registered before the registry kept them has none until rotated (its
        password exists nowhere in clear to hash again)."""
        rows = self._db.execute(
            "SELECT id, nats_hash FROM devices WHERE nats_hash IS NOT NULL UNION ALL "
            "SELECT name, nats_hash FROM accounts WHERE nats_hash IS NOT NULL ORDER BY 1"
        ).fetchall()
        return {str(name): str(hashed) for name, hashed in rows}

    def access(self, policy: AclPolicy) -> Access:
        """Every account's client id, roles and whether it is disabled, for ``policy``."""
        rows = self._db.execute("SELECT id, disabled, kind FROM devices ORDER BY id").fetchall()
        devices = [AclDevice(str(i), disabled=d is not None, kind=str(k)) for i, d, k in rows]
        accounts = [AclAccount(a.name, a.role, a.telemetry) for a in self.accounts()]
        return render_access(policy, devices, accounts)

    def policy(self) -> AclPolicy | None:
        """The ACL policy the broker files were last rendered with, if any."""
        rows = dict(
            self._db.execute(
                "SELECT key, value FROM meta "
                "WHERE key IN ('agency', 'dispatch_device', 'event_kinds')"
            ).fetchall()
        )
        if "agency" not in rows or "dispatch_device" not in rows:
            return None
        kinds = rows.get("event_kinds")
        event_kinds = None if kinds is None else frozenset(json.loads(kinds))
        return AclPolicy(rows["agency"], rows["dispatch_device"], event_kinds)

    def write_broker_files(self, broker_dir: Path, policy: AclPolicy | None = None) -> BrokerFiles:
        """Render ``passwd``, ``access.json`` and ``admin`` into ``broker_dir`` (atomically,
        0600); the running broker applies them on reload (broker/mosquitto.py).

        ``policy`` (agency and dispatch device) is remembered; later calls without one,
        e.g. from ``actimesh devices add``, reuse it, so a command run without the
        operator's config cannot re-render the ACL for the wrong agency.
        """
        if policy is None:
            policy = self.policy()
            if policy is None:
                raise SecurityError(
                    f"the registry {self.path} has not been used by `actimesh up` yet: "
                    "start it once (it renders the broker files), or pass --config"
                )
        else:
            with self._write() as db:
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [("agency", policy.agency), ("dispatch_device", policy.dispatch_device)],
                )
                if policy.event_kinds is None:
                    db.execute("DELETE FROM meta WHERE key = 'event_kinds'")
                else:
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES ('event_kinds', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (json.dumps(sorted(policy.event_kinds)),),
                    )
        _private_dir(broker_dir)
        files = BrokerFiles(
            broker_dir / PASSWD_NAME, broker_dir / ACCESS_NAME, broker_dir / ADMIN_NAME
        )
        try:
            admin = read_secret(self.path.parent, SERVICE_ADMIN)
        except SecurityError:
            pass  # no `actimesh up` yet: it writes the admin login before it starts
        else:
            write_private(files.admin, f"{SERVICE_ADMIN}\n{admin}\n")
        access = self.access(policy)
        write_private(files.access, access.to_json())
        # The plugin's own config, for a broker actimesh does not run (the managed one
        # writes it from access.json on every start, and is synced live while it runs).
        write_private(broker_dir / DYNSEC_NAME, plugin_config(access))
        write_private(files.passwd, self.password_file_text())
        return files


_INSERT_DEVICE = (
    "INSERT INTO devices (id, kind, unit, paired, public_key, password_hash, nats_hash, "
    "simulated, created, rotated, call_sign, officer) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)"
)


def _device_values(
    spec: DeviceSpec, public: str, password_hash: str, nats_hash: str, now: float
) -> tuple[object, ...]:
    return (
        spec.device_id,
        spec.kind.value,
        spec.unit,
        json.dumps(list(spec.paired)),
        public,
        password_hash,
        nats_hash,
        now,
        now,
        spec.call_sign,
        spec.officer,
    )


def _integrator_account(name: str) -> str:
    return _prefixed(name, INTEGRATOR_PREFIX, "integrator")


def _prefixed(name: str, prefix: str, what: str) -> str:
    account = name if name.startswith(prefix) else f"{prefix}{name}"
    if not is_identifier(account):
        raise SecurityError(
            f"{what} name {name!r} is not valid: use letters, digits, '.', '_' or '-' "
            f"(at most {64 - len(prefix)})"
        )
    return account


def _device(row: tuple[object, ...]) -> Device:
    (
        device_id,
        kind,
        unit,
        paired,
        public_key,
        simulated,
        created,
        rotated,
        disabled,
        call_sign,
        officer,
    ) = row
    return Device(
        device_id=str(device_id),
        kind=DeviceKind(str(kind)),
        unit=None if unit is None else str(unit),
        paired=tuple(json.loads(str(paired))),
        public_key=str(public_key),
        simulated=bool(simulated),
        created=float(str(created)),
        rotated=float(str(rotated)),
        disabled=None if disabled is None else str(disabled),
        call_sign=None if call_sign is None else str(call_sign),
        officer=None if officer is None else str(officer),
    )
