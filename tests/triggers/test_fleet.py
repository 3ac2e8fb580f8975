"""The fleet view: self-described devices, or a registry that has the last word."""

from __future__ import annotations

from actimesh.broker.messages import DeviceKind, Presence
from actimesh.triggers.fleet import DeviceDirectory, Fleet, StaticDirectory

T0 = 1_800_000_000.0


def registry() -> StaticDirectory:
    directory = StaticDirectory()
    directory.add("bwc-1", DeviceKind.BODY_CAM, "u1")
    directory.add("cew-1", DeviceKind.CEW, "u1", ("bwc-1",))
    return directory


def test_without_a_directory_presence_says_what_a_device_is() -> None:
    fleet = Fleet()
    fleet.presence(
        "gw-1",
        Presence(online=True, device_kind=DeviceKind.GATEWAY, unit="u9", paired=("dash-1",)),
        T0,
    )
    info = fleet.get("gw-1")
    assert info is not None
    assert (info.kind, info.unit, info.paired) == (DeviceKind.GATEWAY, "u9", ("dash-1",))
    assert fleet.kind_of("gw-1") is DeviceKind.GATEWAY
    assert fleet.kind_of("never-seen") is None


def test_registry_overrules_a_presence_that_claims_another_kind_or_pairing() -> None:
    directory: DeviceDirectory = registry()
    fleet = Fleet(directory)
    lie = Presence(online=True, device_kind=DeviceKind.GATEWAY, unit="u7", paired=("bwc-9",))
    fleet.presence("cew-1", lie, T0)
    info = fleet.get("cew-1")
    assert info is not None
    assert (info.kind, info.unit, info.paired) == (DeviceKind.CEW, "u1", ("bwc-1",))
    assert info.online  # presence still says whether it is there
    assert fleet.contradictions == {"kind": 1, "paired": 1}
    # Agreeing with the registry (or saying nothing) is not counted.
    fleet.presence("cew-1", Presence(online=True, device_kind=DeviceKind.CEW), T0)
    fleet.presence("bwc-1", Presence(online=True), T0)
    assert fleet.contradictions == {"kind": 1, "paired": 1}


def test_device_the_registry_does_not_know_has_no_kind() -> None:
    fleet = Fleet(registry())
    fleet.presence("rogue", Presence(online=True, device_kind=DeviceKind.GATEWAY), T0)
    info = fleet.get("rogue")
    assert info is not None
    assert info.kind is None
    assert not info.is_camera
    assert fleet.kind_of("rogue") is None
    assert fleet.contradictions == {"unregistered": 1}


def test_registry_is_asked_afresh_so_a_removed_device_stops_at_once() -> None:
    directory = registry()
    fleet = Fleet(directory)
    fleet.presence("cew-1", Presence(online=True), T0)
    assert fleet.kind_of("cew-1") is DeviceKind.CEW
    directory.remove("cew-1")
    assert fleet.kind_of("cew-1") is None


def test_telemetry_and_pairings_learn_kinds_from_the_registry() -> None:
    fleet = Fleet(registry())
    info = fleet.touch("bwc-1", T0)  # first telemetry, no presence heard yet
    assert info.kind is DeviceKind.BODY_CAM
    assert info.is_camera
    (paired,) = fleet.cameras_of(("bwc-1",))
    assert paired.kind is DeviceKind.BODY_CAM
    (unknown,) = Fleet(registry()).cameras_of(("bwc-1",))
    assert unknown.kind is DeviceKind.BODY_CAM


def test_device_registered_after_it_announced_itself_is_known_at_its_next_event() -> None:
    directory = StaticDirectory()
    fleet = Fleet(directory)
    fleet.presence("cew-2", Presence(online=True, device_kind=DeviceKind.CEW), T0)
    assert fleet.kind_of("cew-2") is None
    directory.add("cew-2", DeviceKind.CEW, "u2", ("bwc-2",))
    assert fleet.kind_of("cew-2") is DeviceKind.CEW
    info = fleet.get("cew-2")
    assert info is not None
    assert (info.unit, info.paired) == ("u2", ("bwc-2",))
