"""``actimesh audit ...``: exit codes, and one line saying what is wrong and how to fix it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from actimesh import cli
from tests.audit.helpers import T0, record_recording, tamper, write_activations


@pytest.fixture
async def data_dir(tmp_path: Path) -> Path:
    await write_activations(tmp_path / "ledger.sqlite3", range(1, 4))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_an_intact_ledger_is_one_line_and_exit_0(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "verify", "--data-dir", str(data_dir))
    assert (code, err) == (0, "")
    assert out.count("\n") == 1
    assert out.startswith("ledger intact: 6 records (0 redacted by retention), head 6:")


def test_verify_names_tampering_and_exits_1(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tamper(data_dir / "ledger.sqlite3") as db:
        db.execute("UPDATE records SET subject = 'act-9' WHERE seq = 3")
    code, out, err = run(capsys, "verify", "--ledger", str(data_dir / "ledger.sqlite3"))
    assert code == 1
    assert out.startswith("chain seq 3: changed: its fields do not match its hash")
    assert err.count("\n") == 1
    assert "FAILED verification: 1 problem(s)" in err


def test_head_then_verify_against_it_detects_a_cut_tail(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, head, _ = run(capsys, "head", "--data-dir", str(data_dir))
    assert code == 0
    assert head.startswith("6:")
    with tamper(data_dir / "ledger.sqlite3") as db:
        db.execute("DELETE FROM records WHERE seq = 6")
        db.execute("DELETE FROM acks WHERE aid = 'act-3'")
    code, out, _ = run(capsys, "verify", "--data-dir", str(data_dir), "--head", head.strip())
    assert code == 1
    assert out == (
        "chain seq 6: truncated: the chain ends at seq 5 but its head was recorded at seq 6: "
        "the tail was cut off\n"
    )


def test_link_export_and_retain(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--data-dir", str(data_dir)]
    code, out, _ = run(
        capsys, "link", *where, "--case", "CR-1", "--activation", "act-2", "--by", "Sgt Smith"
    )
    assert (code, out) == (0, "linked: activation act-2 to case CR-1 (record 7)\n")
    code, out, _ = run(capsys, "export", *where, "--case", "CR-1", "--out", str(tmp_path / "x"))
    assert code == 0
    assert out.startswith("exported 3 records (1 activations) of case CR-1 to ")
    assert (tmp_path / "x" / "case-CR-1.csv").is_file()
    store = tmp_path / "recordings"
    record_recording(store, "bwc1", "rec-1", ["act-1"], T0)
    code, out, _ = run(capsys, "retain", *where, "--recordings", str(store), "--dry-run")
    assert code == 0
    assert "would redact 4 records (2 activations), would delete 1 recordings" in out
    assert (store / "bwc1" / "rec-1").is_dir()
    code, out, _ = run(capsys, "retain", *where, "--recordings", str(store))
    assert code == 0
    assert "redacted 4 records (2 activations), deleted 1 recordings" in out
    assert not (store / "bwc1" / "rec-1").exists()
    code, out, _ = run(capsys, "verify", *where)
    assert code == 0
    assert "(4 redacted by retention)" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["verify", "--data-dir", "{tmp}/nowhere"],
            1,
            "no ledger at {tmp}/nowhere/ledger.sqlite3; "
            "give the --data-dir of an actimesh data directory or the --ledger file itself",
        ),
        (
            [
                "link",
                "--data-dir",
                "{tmp}",
                "--case",
                "CR-1",
                "--activation",
                "act-7",
                "--by",
                "Sgt",
            ],
            1,
            "no activation 'act-7' in the ledger at {tmp}/ledger.sqlite3; check the id",
        ),
        (
            ["export", "--data-dir", "{tmp}", "--case", "CR-9", "--out", "{tmp}/out"],
            1,
            "case CR-9 has no linked activation in {tmp}/ledger.sqlite3; link one with "
            "`actimesh audit link --case CR-9 --activation AID --by NAME`",
        ),
        (
            ["retain", "--data-dir", "{tmp}", "--recordings", "{tmp}/none"],
            1,
            "no recordings folder at {tmp}/none; check --recordings",
        ),
        (
            ["retain", "--data-dir", "{tmp}", "--config", "{tmp}/short.toml"],
            2,
            "retention.days must be at least 365 (CJIS 5.4 keeps audit records a year), got 30",
        ),
        (
            ["verify", "--data-dir", "{tmp}", "--head", "12"],
            2,
            "argument --head: '12' is not SEQ:HASH as printed by `actimesh audit head` "
            "(see `actimesh audit verify --help`)",
        ),
    ],
)
def test_mistakes_are_one_line_without_traceback(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    (data_dir / "short.toml").write_text("[retention]\ndays = 30\n")
    args = [a.replace("{tmp}", str(data_dir)) for a in argv]
    if code == 2 and "--head" in args:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["audit", *args])
        got, err = exit_info.value.code, capsys.readouterr().err
    else:
        got, _, err = run(capsys, *args)
    assert got == code
    assert err == f"actimesh: {message.replace('{tmp}', str(data_dir))}\n"


def test_a_missing_ledger_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "actimesh", "audit", "head", "--ledger", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


async def test_the_commands_work_on_the_configured_postgres_ledger(
    tmp_path: Path, postgres_url: str, agency: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_activations(postgres_url, range(1, 4), agency=agency)
    config = tmp_path / "actimesh.toml"
    config.write_text(f'agency = "{agency}"\n[ledger]\nurl = "{postgres_url}"\n')
    where = ("--config", str(config))

    def audit(*argv: str) -> tuple[int, str, str]:
        return run(capsys, *argv, *where)

    code, head, _ = await asyncio.to_thread(audit, "head")
    assert (code, head.split(":")[0]) == (0, "6")
    code, out, err = await asyncio.to_thread(audit, "verify", "--head", head.strip())
    assert (code, err) == (0, "")
    assert out.startswith("ledger intact: 6 records (0 redacted by retention), head 6:")
    assert not (Path("actimesh-data") / "ledger.sqlite3").exists()
