"""`actimesh users` and `actimesh tokens`: real files, the real ledger, the real CLI."""

from __future__ import annotations

import asyncio
import getpass
import io
import json
import re
import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from actimesh import cli
from actimesh.audit import verify_ledger
from actimesh.dispatch.accounts import ACCOUNTS_FILE, AccountStore, Role, verify_password
from actimesh.ledger.postgres import schema_name


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def changes(data: Path) -> list[tuple[str, str, str, dict[str, object]]]:
    with sqlite3.connect(data / "ledger.sqlite3") as db:
        rows = db.execute(
            "SELECT component, subject, outcome, body FROM records "
            "WHERE event_type = 'account_change' ORDER BY seq"
        ).fetchall()
    return [(c, s, o, json.loads(b)) for c, s, o, b in rows]


async def _password_of(data: Path, name: str) -> str:
    async with AccountStore(data / ACCOUNTS_FILE) as store:
        found = await store.password_hash(name)
    assert found is not None
    return found[1]


def test_users_are_managed_from_the_command_line_and_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = str(tmp_path)
    code, out, _ = run(capsys, "users", "add", "boss", "--role", "admin", "--data-dir", data)
    assert code == 0
    found = re.search(r"^password: (\S+)$", out, re.MULTILINE)
    assert found is not None, out
    assert "shown once" in out
    stored = asyncio.run(_password_of(tmp_path, "boss"))
    assert verify_password(found.group(1), stored)

    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough passphrase\n"))
    code, out, _ = run(
        capsys,
        "users",
        "add",
        "kim",
        "--role",
        "dispatcher",
        "--password-stdin",
        "--data-dir",
        data,
    )
    assert code == 0
    assert "password:" not in out
    assert verify_password("a long enough passphrase", asyncio.run(_password_of(tmp_path, "kim")))

    code, out, _ = run(capsys, "users", "list", "--data-dir", data)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "STATE", "CREATED", "PASSWORD", "SET"]
    assert lines[1].split()[:3] == ["boss", "admin", "enabled"]
    assert lines[2].split()[:3] == ["kim", "dispatcher", "enabled"]

    assert run(capsys, "users", "disable", "kim", "--data-dir", data)[0] == 0
    listed = run(capsys, "users", "list", "--data-dir", data)[1].splitlines()
    assert listed[2].split()[:3] == ["kim", "dispatcher", "disabled"]
    assert run(capsys, "users", "enable", "kim", "--data-dir", data)[0] == 0
    code, out, _ = run(capsys, "users", "passwd", "kim", "--data-dir", data)
    assert code == 0
    assert re.search(r"^password: \S{20,}$", out, re.MULTILINE)
    assert run(capsys, "users", "remove", "kim", "--data-dir", data)[0] == 0

    # Mistakes are one line, and change nothing.
    code, _, err = run(capsys, "users", "add", "boss", "--role", "admin", "--data-dir", data)
    assert (code, err) == (1, "actimesh: user 'boss' already exists\n")
    code, _, err = run(capsys, "users", "remove", "boss", "--data-dir", data)
    assert code == 1
    assert err.count("\n") == 1
    assert "only enabled admin" in err
    code, _, err = run(capsys, "users", "add", "x", "--role", "integrator", "--data-dir", data)
    assert code == 2
    assert "invalid choice: 'integrator'" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    code, _, err = run(
        capsys,
        "users",
        "add",
        "lee",
        "--role",
        "dispatcher",
        "--password-stdin",
        "--data-dir",
        data,
    )
    assert code == 1
    assert "at least 12 characters" in err

    who = f"os:{getpass.getuser()}"
    assert [(c, s, o, b["action"], b["target"]) for c, s, o, b in changes(tmp_path)] == [
        ("cli/users", who, "ok", "user.add", "boss"),
        ("cli/users", who, "ok", "user.add", "kim"),
        ("cli/users", who, "ok", "user.disable", "kim"),
        ("cli/users", who, "ok", "user.enable", "kim"),
        ("cli/users", who, "ok", "user.passwd", "kim"),
        ("cli/users", who, "ok", "user.remove", "kim"),
    ]
    assert verify_ledger(tmp_path / "ledger.sqlite3").ok


def test_tokens_are_created_once_listed_without_secrets_and_revoked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path)
    code, out, _ = run(
        capsys,
        "tokens",
        "create",
        "--name",
        "cad-bridge",
        "--role",
        "integrator",
        "--expires-days",
        "30",
        "--telemetry",
        "--data-dir",
        data,
    )
    assert code == 0
    found = re.search(r"^token: (amt_\S{43,})$", out, re.MULTILINE)
    assert found is not None, out
    token = found.group(1)
    assert "Authorization: Bearer" in out

    async def resolve() -> tuple[str, Role, bool] | None:
        async with AccountStore(tmp_path / ACCOUNTS_FILE) as store:
            t = await store.resolve_token(token)
        return None if t is None else (t.name, t.role, t.telemetry)

    assert asyncio.run(resolve()) == ("cad-bridge", Role.INTEGRATOR, True)
    code, out, _ = run(capsys, "tokens", "list", "--data-dir", data)
    assert token not in out
    row = out.splitlines()[1].split()
    assert row[:5] == [token[:12], "cad-bridge", "integrator", "yes", "active"]
    code, _, err = run(
        capsys, "tokens", "create", "--name", "cad-bridge", "--role", "admin", "--data-dir", data
    )
    assert (code, err.count("\n")) == (1, 1)
    assert "already named 'cad-bridge'" in err
    code, _, err = run(
        capsys,
        "tokens",
        "create",
        "--name",
        "x",
        "--role",
        "admin",
        "--expires-days",
        "0",
        "--data-dir",
        data,
    )
    assert code == 2
    assert "must be more than 0" in err

    code, out, _ = run(capsys, "tokens", "revoke", token[:12], "--data-dir", data)
    assert (code, out) == (0, f"revoked token {token[:12]} (cad-bridge)\n")
    assert asyncio.run(resolve()) is None
    assert "revoked" in run(capsys, "tokens", "list", "--data-dir", data)[1]
    code, _, err = run(capsys, "tokens", "revoke", "nope", "--data-dir", data)
    assert code == 1
    assert "no token 'nope'" in err
    actions = [(b["action"], b["token"]) for _, _, _, b in changes(tmp_path)]
    assert actions == [("token.create", token[:12]), ("token.revoke", token[:12])]
    assert token not in json.dumps(changes(tmp_path))


def test_account_changes_are_audited_in_the_configured_postgres_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres_url: str, agency: str
) -> None:
    config = tmp_path / "actimesh.toml"
    config.write_text(f'agency = "{agency}"\n[ledger]\nurl = "{postgres_url}"\n')
    where = ("--config", str(config), "--data-dir", str(tmp_path))
    code, out, _ = run(capsys, "users", "add", "boss", "--role", "admin", *where)
    assert code == 0, out
    assert not (tmp_path / "ledger.sqlite3").exists()
    with psycopg.connect(postgres_url) as conn:
        schema = sql.Identifier(schema_name(agency))
        conn.execute(sql.SQL("SET search_path TO {}").format(schema))
        rows = conn.execute(
            "SELECT component, body FROM records WHERE event_type = 'account_change'"
        ).fetchall()
    assert [(c, json.loads(b)["target"]) for c, b in rows] == [("cli/users", "boss")]
    assert verify_ledger(postgres_url, agency=agency).ok
