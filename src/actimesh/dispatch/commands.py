"""``actimesh users`` and ``actimesh tokens``: dispatch accounts from the command line.

    actimesh users add NAME --role dispatcher|admin [--password-stdin]
    actimesh users list | disable NAME | enable NAME | remove NAME | passwd NAME
    actimesh tokens create --name N --role integrator|dispatcher|admin
                           [--expires-days D] [--telemetry]
    actimesh tokens list | revoke ID_OR_NAME

They work on ``{data_dir}/dispatch-accounts.sqlite3`` directly, so they also work while
``actimesh up`` runs (a disabled user or a revoked token is refused from the next
request on). A generated password or a token is printed once and stored only as a hash.
Each change is recorded in the ledger (``account_change``, subject ``os:<account>``: who
ran the command).
"""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from actimesh.dispatch.accounts import ACCOUNTS_FILE, USER_ROLES, AccountStore, Role
from actimesh.dispatch.audit import AuditEvent
from actimesh.errors import AccountError, ConfigError
from actimesh.ledger import Ledger, open_ledger

__all__ = ["Bootstrap", "add_parsers", "bootstrap_admin", "run"]

ADMIN = "admin"


def _expiry_days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0 and at most 3650 days")
    return value


def add_parsers(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``users`` and ``tokens`` to the ``actimesh`` command's subparsers."""
    users = sub.add_parser("users", help="dispatch map logins: add, list, disable, remove")
    verbs = users.add_subparsers(dest="verb", required=True, parser_class=parser_class)
    add = verbs.add_parser("add", help="add a user; prints a generated password once")
    add.add_argument("name", help="login name: lowercase letters, digits, . _ - @")
    add.add_argument("--role", required=True, choices=[r.value for r in USER_ROLES])
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead",
    )
    verbs.add_parser("list", help="every user, their role and whether enabled")
    for verb, text in (
        ("disable", "refuse their logins and end their sessions"),
        ("enable", "allow their logins again"),
        ("remove", "delete the user and end their sessions"),
    ):
        verbs.add_parser(verb, help=text).add_argument("name")
    passwd = verbs.add_parser("passwd", help="set a new password (ends their sessions)")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin",
        action="store_true",
        help="read it from standard input (default: generate one)",
    )

    tokens = sub.add_parser("tokens", help="API tokens for integrators: create, list, revoke")
    tverbs = tokens.add_subparsers(dest="verb", required=True, parser_class=parser_class)
    create = tverbs.add_parser("create", help="issue a token; prints it once")
    create.add_argument("--name", required=True, help="what it is for, e.g. cad-bridge")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument(
        "--expires-days",
        type=_expiry_days,
        metavar="D",
        help="expire after D days (default: never)",
    )
    create.add_argument(
        "--telemetry", action="store_true", help="an integrator token may also read live positions"
    )
    tverbs.add_parser("list", help="every token: id, name, role, state, last use")
    revoke = tverbs.add_parser("revoke", help="refuse a token from now on")
    revoke.add_argument("token", metavar="ID_OR_NAME", help="the token's id (amt_…) or name")

    for parser in (*verbs.choices.values(), *tverbs.choices.values()):
        parser.add_argument("--config", type=Path, help="TOML settings file (data_dir)")
        parser.add_argument(
            "--data-dir", type=Path, help="data directory (default ./actimesh-data)"
        )


def _actor() -> str:
    try:
        return f"os:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name (a container without /etc/passwd entry)
        return f"os:uid-{os.getuid()}"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(out: TextIO, rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _password(args: argparse.Namespace, stdin: TextIO) -> str | None:
    if not args.password_stdin:
        return None
    line = stdin.readline().rstrip("\r\n")
    if not line:
        raise ConfigError("--password-stdin: standard input was empty; pipe the password in")
    return line


@dataclass(frozen=True, slots=True)
class _Context:
    store: AccountStore
    ledger: Ledger
    component: str
    actor: str

    async def audit(self, action: str, **body: Any) -> None:
        await self.ledger.record_event(
            self.component,
            AuditEvent.ACCOUNT_CHANGE.value,
            self.actor,
            "ok",
            {"action": action, **body},
        )


async def _users(args: argparse.Namespace, c: _Context, out: TextIO, stdin: TextIO) -> None:
    if args.verb == "list":
        users = await c.store.users()
        if not users:
            out.write("no users; `actimesh users add NAME --role dispatcher` adds one\n")
            return
        rows = [("NAME", "ROLE", "STATE", "CREATED", "PASSWORD SET")]
        rows += [
            (
                u.name,
                u.role.value,
                "disabled" if u.disabled else "enabled",
                _when(u.created_ts),
                _when(u.password_ts),
            )
            for u in users
        ]
        _table(out, rows)
        return
    if args.verb == "add":
        user, generated = await c.store.add_user(args.name, Role(args.role), _password(args, stdin))
        await c.audit("user.add", target=user.name, target_role=user.role.value)
        out.write(f"added user {user.name} ({user.role.value})\n")
        if generated is not None:
            out.write(f"password: {generated}\n")
            out.write(
                "(shown once: give it to them; `actimesh users passwd "
                f"{user.name}` sets a new one)\n"
            )
        return
    if args.verb in ("disable", "enable"):
        user = await c.store.set_disabled(args.name, args.verb == "disable")
        await c.audit(f"user.{args.verb}", target=user.name)
        ended = " and ended their sessions" if args.verb == "disable" else ""
        out.write(f"{args.verb}d user {user.name}{ended}\n")
        return
    if args.verb == "remove":
        user = await c.store.remove_user(args.name)
        await c.audit("user.remove", target=user.name)
        out.write(f"removed user {user.name}\n")
        return
    generated = await c.store.set_password(args.name, _password(args, stdin))
    await c.audit("user.passwd", target=args.name)
    out.write(f"new password set for {args.name}; their sessions ended\n")
    if generated is not None:
        out.write(f"password: {generated}\n(shown once)\n")


async def _tokens(args: argparse.Namespace, c: _Context, out: TextIO) -> None:
    now = c.store.clock()
    if args.verb == "list":
        tokens = await c.store.tokens()
        if not tokens:
            out.write("no tokens; `actimesh tokens create --name N --role integrator` makes one\n")
            return
        rows = [("ID", "NAME", "ROLE", "TELEMETRY", "STATE", "EXPIRES", "LAST USED")]
        rows += [
            (
                t.id,
                t.name,
                t.role.value,
                "yes" if t.telemetry else "no",
                t.state(now),
                _when(t.expires_ts),
                _when(t.last_used_ts),
            )
            for t in tokens
        ]
        _table(out, rows)
        return
    if args.verb == "create":
        expires_s = None if args.expires_days is None else args.expires_days * 86_400.0
        issued = await c.store.create_token(
            args.name,
            Role(args.role),
            created_by=c.actor,
            telemetry=args.telemetry,
            expires_s=expires_s,
        )
        t = issued.token
        await c.audit(
            "token.create",
            target=t.name,
            token=t.id,
            target_role=t.role.value,
            telemetry=t.telemetry,
            expires_ts=t.expires_ts,
        )
        out.write(f"token: {issued.secret}\n")
        out.write(
            f"(shown once) id {t.id}, name {t.name}, role {t.role.value}, telemetry "
            f"{'yes' if t.telemetry else 'no'}, expires {_when(t.expires_ts)}\n"
        )
        out.write("send it as `Authorization: Bearer <token>`; never put it in a URL\n")
        return
    token = await c.store.revoke_token(args.token)
    await c.audit("token.revoke", target=token.name, token=token.id)
    out.write(f"revoked token {token.id} ({token.name})\n")


def run(
    args: argparse.Namespace,
    *,
    data_dir: Path,
    ledger_location: Path | str,
    agency: str,
    out: TextIO,
    stdin: TextIO,
    runner: Callable[[Coroutine[Any, Any, None]], None],
) -> int:
    """Run ``actimesh users …`` or ``actimesh tokens …``; the exit code.

    ``runner`` runs a coroutine to completion (the CLI's, which handles SIGTERM).
    """

    async def main() -> None:
        # The ledger first: a change that could not be audited is not made.
        async with (
            open_ledger(ledger_location, agency=agency) as ledger,
            AccountStore(data_dir / ACCOUNTS_FILE) as store,
        ):
            c = _Context(store, ledger, f"cli/{args.command}", _actor())
            if args.command == "users":
                await _users(args, c, out, stdin)
            else:
                await _tokens(args, c, out)

    runner(main())
    return 0


# ---------------------------------------------------------------------- actimesh up
@dataclass(frozen=True, slots=True)
class Bootstrap:
    """What ``actimesh up`` found or made: the password only when it made ``admin``."""

    users: int
    admin_exists: bool
    password: str | None = None

    def lines(self) -> list[str]:
        """What ``up`` prints about logins."""
        if self.password is not None:
            return [
                f"login    user {ADMIN}, password {self.password}",
                "         (shown once; `actimesh users passwd admin` sets a new one, "
                "`actimesh users add NAME --role dispatcher` adds dispatchers)",
            ]
        if self.admin_exists:
            return [f"login    user {ADMIN} exists ({self.users} users; `actimesh users list`)"]
        return [f"login    {self.users} users (`actimesh users list`)"]


async def bootstrap_admin(data_dir: Path, ledger: Ledger) -> Bootstrap:
    """Create the ``admin`` user on first start (no users at all); say what there is."""
    async with AccountStore(data_dir / ACCOUNTS_FILE) as store:
        count = await store.count_users()
        if count:
            return Bootstrap(count, await store.user(ADMIN) is not None)
        try:
            user, password = await store.add_user(ADMIN, Role.ADMIN)
        except AccountError as exc:
            if exc.reason != "exists":  # another `up` on this data directory was first
                raise
            return Bootstrap(1, True)
    await ledger.record_event(
        "cli/up",
        AuditEvent.ACCOUNT_CHANGE.value,
        _actor(),
        "ok",
        {
            "action": "user.add",
            "target": user.name,
            "target_role": user.role.value,
            "first_start": True,
        },
    )
    return Bootstrap(1, True, password)
