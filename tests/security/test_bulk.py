"""A fleet as a CSV file: read, registered all at once or not at all, and written back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from actimesh.broker.messages import DeviceKind
from actimesh.errors import SecurityError
from actimesh.security import Registry, verify_password
from actimesh.security.bulk import (
    FLEET_COLUMNS,
    credentials_csv,
    fleet_csv,
    read_fleet,
)

HEADER = ",".join(FLEET_COLUMNS) + "\n"
GOOD = (
    HEADER
    + "bwc-1,body_cam,unit-1,12A1,Cst. Lee #4411,\n"
    + 'cew-1,cew,unit-1,12A1,"Cst. Lee, #4411","bwc-1,dash-1"\n'
    + "dash-1,dash_cam,unit-1,12A1,,\n"
    + "\n"
    + "hs-1,holster,,,,\n"
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry.open(tmp_path / "data") as reg:
        yield reg


def test_a_fleet_file_round_trips_through_the_registry(registry: Registry) -> None:
    fleet = read_fleet(GOOD)
    assert fleet.problems == ()
    assert fleet.rows == {"bwc-1": 2, "cew-1": 3, "dash-1": 4, "hs-1": 6}
    creds = registry.add_many(fleet.specs)
    assert sorted(creds) == ["bwc-1", "cew-1", "dash-1", "hs-1"]
    cew = registry.get("cew-1")
    assert (cew.kind, cew.unit, cew.call_sign, cew.officer, cew.paired) == (
        DeviceKind.CEW,
        "unit-1",
        "12A1",
        "Cst. Lee, #4411",
        ("bwc-1", "dash-1"),
    )
    assert registry.get("hs-1").unit is None
    assert registry.check_password("bwc-1", creds["bwc-1"].password)
    exported = fleet_csv(registry.devices())
    assert exported.splitlines()[0] == ",".join(FLEET_COLUMNS)
    # Export, then import into an empty registry: the same devices, the same file.
    again = read_fleet(exported)
    assert again.problems == ()
    assert sorted(again.specs, key=lambda s: s.device_id) == sorted(
        fleet.specs, key=lambda s: s.device_id
    )
    assert fleet_csv(registry.devices()) == exported
    assert "password" not in exported
    assert creds["bwc-1"].password not in exported


def test_every_bad_row_is_reported_with_its_number_and_a_fix(registry: Registry) -> None:
    registry.add("bwc-old", DeviceKind.BODY_CAM)
    text = (
        "ID,Kind,Unit,Call Sign,Officer,Paired\n"  # header names are matched loosely
        "bwc-1,body_cam,u1,,,\n"  # 2: fine
        "bwc-2,toaster,u1,,,\n"  # 3: no such kind
        "svc-engine,body_cam,,,,\n"  # 4: reserved prefix
        "bwc-1,body_cam,,,,\n"  # 5: id twice
        "bwc-3,body_cam\n"  # 6: too few columns
        "cew-1,cew,,,,bwc-ghost\n"  # 7: paired with nothing (found against the registry)
        "bwc-old,body_cam,,,,\n"  # 8: registered already (against the registry)
        "bwc-4,body_cam,bad unit,,,\n"  # 9: unit not an identifier
        ",body_cam,,,,\n"  # 10: no id
    )
    fleet = read_fleet(text)
    own = {p.row: p.detail for p in fleet.problems}
    assert sorted(own) == [3, 4, 5, 6, 9, 10]
    assert "use one of body_cam" in own[3]
    assert "reserved" in own[4]
    assert "row 2 already" in own[5]
    assert "2 columns, not 6" in own[6]
    assert "unit 'bad unit'" in own[9]
    clashes = registry.problems(fleet.specs)
    assert {fleet.rows[d] for d in clashes} == {7, 8}
    assert "neither registered nor in the file" in clashes["cew-1"]
    assert "devices remove bwc-old" in clashes["bwc-old"]
    assert all(":" in detail for detail in (*own.values(), *clashes.values()))
    # All or nothing: the registry refuses the lot while one clash is left.
    with pytest.raises(SecurityError, match=r"bwc-ghost|bwc-old"):
        registry.add_many(fleet.specs)
    assert [d.device_id for d in registry.devices()] == ["bwc-old"]


def test_a_wrong_header_is_one_problem_on_row_1() -> None:
    fleet = read_fleet("device,type\nbwc-1,body_cam\n")
    assert [
        (p.row, "first row must be id,kind,unit,call_sign,officer,paired" in p.detail)
        for p in fleet.problems
    ] == [(1, True)]
    assert fleet.specs == ()
    assert read_fleet("").problems[0].row == 1


def test_credentials_file_holds_what_logs_each_device_in(registry: Registry) -> None:
    creds = registry.add_many(read_fleet(GOOD).specs)
    lines = credentials_csv(creds.values()).splitlines()
    assert lines[0] == "id,password,private_key,public_key"
    assert len(lines) == 5
    device_id, password, private, public = lines[1].split(",")
    assert device_id == "bwc-1"
    assert verify_password(password, _hash_of(registry, "bwc-1"))
    assert len(private) == 64
    assert public == registry.get("bwc-1").public_key


def _hash_of(registry: Registry, device_id: str) -> str:
    line = next(
        line for line in registry.password_file_text().splitlines() if line.startswith(device_id)
    )
    return line.split(":", 1)[1]
