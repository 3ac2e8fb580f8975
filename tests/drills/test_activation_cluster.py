"""`actimesh drill --cluster`: the geometry and pre-roll drill, unchanged, on the cluster
shape (three authenticated NATS nodes, devices on their MQTT 3.1.1 listeners, the
engine on NATS, a PostgreSQL ledger)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actimesh import cli
from actimesh.drills import default_scenarios, run_drill
from actimesh.drills.activation import PRE_ROLL_S
from actimesh.drills.cluster_faults import cluster_mesh
from actimesh.geofence import InclusionMode, InclusionPolicy
from tests.drills.test_activation import recording_console

pytestmark = [pytest.mark.integration, pytest.mark.time_limit(120)]


async def test_the_geometry_drill_passes_on_the_cluster(tmp_path: Path) -> None:
    console, out = recording_console()
    report = await run_drill(
        console, rounds=1, data_dir=tmp_path, mqtt_protocol="3.1.1", mesh=cluster_mesh
    )
    text = out.getvalue()
    assert report.ok, text
    assert "3 NATS nodes" in text
    assert "drill passed" in text
    assert report.duplicate_ignored
    for r in report.results:
        assert r.expected, r.name
        assert r.commanded == r.expected, (r.name, text)
        assert not r.missed, (r.name, text)
        assert not r.false, (r.name, text)
        assert r.pre_roll_min >= PRE_ROLL_S, (r.name, r.pre_roll_min)
    # The ledger is PostgreSQL's, not a SQLite file in the data directory.
    assert not (tmp_path / "ledger.sqlite3").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cluster", "--mqtt-protocol", "5"], "speak 3.1.1 only"),
        (["--cluster", "--media", "real"], "drop --cluster"),
    ],
)
def test_what_the_cluster_drill_cannot_do_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    assert cli.main(["drill", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert says in err


@pytest.mark.cluster_drill
async def test_the_cluster_drill_catches_a_wrong_engine(tmp_path: Path) -> None:
    """Its checks bite on the cluster too: an engine under another policy fails it.

    In `make drill-cluster`, not `make test` (CONTRIBUTING.md, "Test time budget"): it
    waits out the drill's 5 s for the camera it misses, 13 s in all, and the checks it
    proves are the ones `test_activation.py` proves on Mosquitto, defined once."""
    console, out = recording_console()
    report = await run_drill(
        console,
        rounds=1,
        data_dir=tmp_path,
        policy=InclusionPolicy(mode=InclusionMode.CENTRE),
        scenarios=default_scenarios(InclusionPolicy(mode=InclusionMode.INCLUSIVE)),
        mqtt_protocol="3.1.1",
        mesh=cluster_mesh,
    )
    assert not report.ok
    assert report.results[0].missed == {"s1-bwc-10m-acc1_5"}
    assert "drill FAILED" in out.getvalue()
