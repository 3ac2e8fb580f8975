"""The fault drill on the cluster shape: three NATS nodes with authentication, a
PostgreSQL ledger and two engine processes, each fault struck for real, one per test."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from actimesh import cli
from actimesh.drills import CLUSTER_SCENARIOS, run_cluster_fault_drill
from actimesh.drills.netns import namespaces_unavailable
from tests.drills.faults import assert_nothing_lost
from tests.waiting import eventually_sync

# A scenario that passes takes 20 to 45 s; one that loses something waits out the
# drill's own timeouts (45 s for the cameras, 30 s for the ledger) before it says so.
pytestmark = [pytest.mark.integration, pytest.mark.time_limit(150)]

#: Scenarios that lose nothing, run in `make test` (20 to 45 s each).
_HOLDING = ["engine kill -9", "PostgreSQL restart"]
#: Scenarios that lose nothing either since the engine's track reaches back 60 s and a
#: camera whose device went silent is held longer (docs/SCALING.md, "The fault drill on
#: the cluster": 6 of 6 runs each), but take 25 to 65 s each on the shared machine, and
#: `make test` is over its time budget already (CONTRIBUTING.md): `make drill-cluster`
#: runs them, with the same checks. The network cut (every run over a minute) is
#: checked whole by its own test below, also in `make drill-cluster`.
_HOLDING_SLOW = ["camera's node kill -9", "stream leader kill -9"]


def test_every_scenario_is_checked_somewhere() -> None:
    names = [name for name, _ in CLUSTER_SCENARIOS]
    assert sorted([*_HOLDING, *_HOLDING_SLOW, "node cut off (network)"]) == sorted(names)


@pytest.mark.parametrize("scenario", _HOLDING)
async def test_a_cluster_fault_loses_and_duplicates_nothing(tmp_path: Path, scenario: str) -> None:
    await _nothing_lost(tmp_path, scenario)


@pytest.mark.cluster_drill
@pytest.mark.parametrize("scenario", _HOLDING_SLOW)
async def test_a_node_kill_loses_and_duplicates_nothing(tmp_path: Path, scenario: str) -> None:
    await _nothing_lost(tmp_path, scenario)


async def _nothing_lost(tmp_path: Path, scenario: str) -> None:
    out = io.StringIO()
    report = await run_cluster_fault_drill(
        Console(file=out, width=220), root=tmp_path, short=True, only=scenario
    )
    (result,) = report.results
    assert_nothing_lost(result, out.getvalue())
    assert result.pre_roll_min >= 30.0
    # Triggers raised after the fault were served by what survived it.
    assert result.recovery_s is not None
    assert 0.0 <= result.recovery_s < 45.0
    (saved,) = json.loads((tmp_path / "fault-drill.json").read_text())
    assert saved["name"] == scenario
    assert saved["ok"] is True


#: The console line of the cut: the node, its address and namespace, and its rejoining.
_CUT_LINE = re.compile(
    r"cut (n\d) \(10\.213\.[\d.]+, namespace (amcut-[0-9a-f]+)\) off the network for "
    r"35 s; it rejoined ([\d.]+) s after healing"
)


@pytest.mark.cluster_drill
@pytest.mark.time_limit(300)
@pytest.mark.skipif(namespaces_unavailable() is not None, reason=f"{namespaces_unavailable()}")
def test_a_node_cut_off_the_network_rejoins_and_duplicates_nothing(tmp_path: Path) -> None:
    """The partition through the CLI: the node is cut off for real (its own namespace,
    its end of the veth pair down), the devices and engines on it move to the others,
    it rejoins after healing, and no trigger or camera is lost or doubled (a trigger
    re-sent by a CEW whose node was cut arrives about 31 s late: its cameras are judged
    on the fixes either side of its event, or held for their next fix)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "actimesh",
            *("drill", "--faults", "--cluster", "--short"),
            *("--only", "node cut off (network)", "--data-dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        env={**os.environ, "COLUMNS": "300"},
    )
    (tmp_path / "drill.out").write_text(done.stdout + done.stderr)  # kept for a look after
    found = _CUT_LINE.search(done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found[3]) < 30.0  # healthy and routed to both others again
    (saved,) = json.loads((tmp_path / "fault-drill.json").read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert saved["ok"] is True
    assert saved["lost"] == 0, done.stdout
    assert saved["triggers"] == 12
    assert saved["activations"] == saved["triggers"], done.stdout
    assert saved["duplicates"] == 0, done.stdout
    assert saved["ledger_ok"] is True
    assert saved["recovery_s"] is not None
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    )
    assert found[2] not in listed.stdout


def _cut_namespace(data_dir: Path) -> str | None:
    """The namespace of the drill's cut node, once its end of the pair is down."""
    try:
        pid = (data_dir / "cluster-5" / "nats" / "n1" / "nats.pid").read_text().strip()
    except OSError:
        return None
    named = subprocess.run(
        ["ip", "netns", "identify", pid], capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()
    if not named.startswith("amcut-"):
        return None
    links = subprocess.run(
        ["ip", "-n", named, "-o", "link", "show"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    return named if "amcut" in links and "state DOWN" in links else None


@pytest.mark.time_limit(120)
@pytest.mark.skipif(namespaces_unavailable() is not None, reason=f"{namespaces_unavailable()}")
def test_ctrl_c_during_the_cut_leaves_no_namespace_and_nothing_running(tmp_path: Path) -> None:
    drill = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "actimesh",
            *("drill", "--faults", "--cluster", "--short"),
            *("--only", "node cut off (network)", "--data-dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A shell starts background jobs with SIGINT ignored: Ctrl-C needs its default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    try:
        netns = eventually_sync(lambda: _cut_namespace(tmp_path), timeout=90, every=0.2)
        inside = subprocess.run(
            ["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
        assert len(inside) == 2  # the node and its auth callout
        drill.send_signal(signal.SIGINT)
        assert drill.wait(timeout=30) == 130
    finally:
        drill.kill()
        drill.wait()
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    )
    assert netns not in listed.stdout
    assert not [pid for pid in inside if Path(f"/proc/{pid}").exists()]


@pytest.mark.cluster_drill
async def test_without_namespaces_the_node_is_frozen_instead_and_the_drill_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not root, or no ``ip``: the cut falls back to SIGSTOP on loopback, and says so.
    (The freeze has not been re-run since the late-trigger fixes: only the mechanics
    are checked.)"""
    monkeypatch.setattr(
        "actimesh.drills.cluster_faults.namespaces_unavailable", lambda: "no namespaces here"
    )
    out = io.StringIO()
    report = await run_cluster_fault_drill(
        Console(file=out, width=300), root=tmp_path, short=True, only="node cut off (network)"
    )
    (result,) = report.results
    text = out.getvalue()
    assert "froze n1 (SIGSTOP) for 20 s, not cut off the network: no namespaces here" in text
    assert result.activations == result.triggers == 12, text
    assert result.duplicates == 0, text
    assert result.ledger_ok


def test_every_cluster_fault_named_in_the_issue_has_a_scenario() -> None:
    assert [name for name, _ in CLUSTER_SCENARIOS] == [
        "camera's node kill -9",
        "stream leader kill -9",
        "engine kill -9",
        "PostgreSQL restart",
        "node cut off (network)",
    ]


def test_an_unknown_cluster_scenario_is_refused_with_the_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["drill", "--faults", "--cluster", "--only", "broker restart"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "'stream leader kill -9'" in err
