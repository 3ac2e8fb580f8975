"""`actimesh cluster up` as an operator runs it: a simulated fleet's trigger commands its
cameras through the NATS cluster, the engines record it in PostgreSQL, the dispatch
sees it over MQTT 3.1.1, and Ctrl-C leaves no process behind; started again on the
same data directory, it finds its ledger and its NATS stores."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import httpx
import pytest

from actimesh.broker.client import _no_lost_cancel
from actimesh.broker.messages import AckStatus
from actimesh.ledger import open_ledger
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(240)]

SRC = Path(__file__).parents[2] / "src"


def _stat(pid: int) -> tuple[int, str] | None:
    """``(parent pid, start time)`` of a live process, None once it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), fields[19]


def _descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``, with its start time (a pid may be reused)."""
    children: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
            start[int(entry.name)] = st[1]
    out: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = start[pid]
        todo.extend(children.get(pid, []))
    return out


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's root-only temporary tree: PostgreSQL runs as `nobody` under root.
    root = Path(tempfile.mkdtemp(prefix="actimesh-cluster-"))
    root.chmod(0o755)
    try:
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _banner(log: Path) -> dict[str, str] | None:
    text = log.read_text(errors="replace")
    if "Ctrl-C stops everything." not in text:
        return None
    text = " ".join(text.split())  # the console wraps long lines
    found = {
        "ledger": re.search(r"ledger (postgresql://\S+)", text),
        "dispatch": re.search(r"dispatch (http://\S+)", text),
        "password": re.search(r"user admin, password (\S+)", text),
        "mqtt": re.search(r"node n2: mqtt://127\.0\.0\.1:(\d+)", text),
    }
    return {k: m.group(1) for k, m in found.items() if m is not None}


async def _mqtt_answer(port: int, client_id: str, user: str | None, password: str | None) -> str:
    """How a node's MQTT listener answers this login: "accepted" or its refusal."""
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        username=user,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=10,
    )
    _no_lost_cancel(client)
    try:
        async with client:
            return "accepted"
    except aiomqtt.MqttError as exc:
        return str(exc)


def _actimesh(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "actimesh", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def _accounts_apply_live(data_dir: Path, port: int) -> None:
    """Nobody gets on anonymously; a device added with `actimesh devices add` while the
    cluster runs logs in at once, and is cut off once removed."""
    assert await _mqtt_answer(port, "demo-anyone", None, None) != "accepted"
    added = _actimesh(
        "devices", "add", "cam-live", "--kind", "body_cam", "--data-dir", str(data_dir)
    )
    found = re.search(r"password\s+(\S+)", added)
    assert found is not None, added
    password = found.group(1)
    assert await _mqtt_answer(port, "demo-cam-live", "cam-live", password) == "accepted"
    _actimesh("devices", "remove", "cam-live", "--data-dir", str(data_dir))
    assert await _mqtt_answer(port, "demo-cam-live", "cam-live", password) != "accepted"


async def test_cluster_up_commands_cameras_records_them_and_stops_clean(data_dir: Path) -> None:
    first, password = await _run_until_recorded(data_dir, "first", before=set(), password=None)
    # Again on the same data directory: the same ledger, and the NATS nodes find their
    # stores again (under the same server names, on new ports).
    both, _ = await _run_until_recorded(data_dir, "second", before=first, password=password)
    assert first < both


async def _run_until_recorded(
    data_dir: Path, name: str, *, before: set[str], password: str | None
) -> tuple[set[str], str]:
    """Run `cluster up` until an activation not in ``before`` has a camera's recording
    answer in the ledger and the dispatch shows a camera recording; then SIGINT it and
    check that nothing it started is left. The activations recorded, and the dispatch's
    admin password (printed on the first start only)."""
    log = data_dir.parent / f"cluster-up-{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, waited on below
            [
                sys.executable,
                "-m",
                "actimesh",
                "cluster",
                "up",
                "--data-dir",
                str(data_dir),
                "--sim",
                "2",
                "--seed",
                "7",
                "--http-port",
                "0",
                "--evidence-port",
                "0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(SRC)},
            start_new_session=True,
        )
    running: dict[int, str] = {}
    try:

        def started() -> dict[str, str] | None:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            return _banner(log)

        banner = await eventually(started, timeout=60, every=0.2)
        assert banner["ledger"].startswith("postgresql://actimesh@")  # no password shown
        password = banner.get("password", password)
        assert password is not None
        running = _descendants(proc.pid)
        names = {Path(_cmdline(pid)[0]).name for pid in running if _cmdline(pid)}
        assert {"nats-server", "postgres"} <= names
        assert sum("serve_engine" in " ".join(_cmdline(pid)) for pid in running) == 2
        if not before:
            await _accounts_apply_live(data_dir, int(banner["mqtt"]))

        # The ledger (PostgreSQL, password from the data directory) holds a camera's
        # "recording" answer to an activation of this run.
        secret = (data_dir / "secrets" / "postgres.password").read_text().strip()
        url = banner["ledger"].replace("actimesh@", f"actimesh:{secret}@", 1)
        async with open_ledger(url, create=False, agency="demo") as ledger:

            async def recorded() -> set[str]:
                aids = set()
                for aid in await ledger.activation_ids():
                    acks = await ledger.acks(aid)
                    if any(a.status == AckStatus.RECORDING.value for a in acks):
                        aids.add(aid)
                return aids if aids - before else set()

            aids = await eventually(recorded, timeout=30, every=0.2)
        assert before <= aids  # the first run's records are still there

        # The dispatch, reading MQTT 3.1.1 from the cluster, shows the camera recording.
        async with httpx.AsyncClient(base_url=banner["dispatch"], trust_env=False) as web:
            login = {"username": "admin", "password": password}
            assert (await web.post("/api/v1/session", json=login)).status_code == 200

            async def seen_recording() -> bool:
                devices = (await web.get("/api/v1/devices")).json()
                return any(d["status"] == "recording" for d in devices)

            await eventually(seen_recording, timeout=20, every=0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    tail = log.read_text(errors="replace")[-2000:]
    assert code == 130, tail  # interrupted, as Ctrl-C
    left = {pid for pid, start in running.items() if (st := _stat(pid)) and st[1] == start}
    assert not left, f"still running after cluster up stopped: {left}"
    assert "Traceback" not in log.read_text(errors="replace"), tail
    return aids, password


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
