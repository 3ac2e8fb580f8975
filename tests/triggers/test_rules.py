"""The rules table: defaults from the seed documents, and operator overrides."""

from __future__ import annotations

import pytest

from actimesh.broker.messages import CAMERA_KINDS, DeviceKind
from actimesh.errors import ConfigError
from actimesh.triggers.rules import (
    DEFAULT_RULES,
    DISPATCH_SENDER,
    THIRTY_FEET_M,
    Rule,
    RuleTable,
    rules_from_toml,
)


@pytest.mark.parametrize("event_type", ["taser_draw", "emergency_lights", "collision"])
def test_seed_triggers_activate_every_camera_within_thirty_feet(event_type: str) -> None:
    rule = DEFAULT_RULES.get(event_type)
    assert rule is not None
    assert rule.radius_m == pytest.approx(30 * 0.3048)
    assert rule.camera_kinds == CAMERA_KINDS
    assert rule.pre_roll_s == 30.0
    assert rule.include_paired


def test_dispatch_zone_takes_its_radius_from_the_event_up_to_the_cap() -> None:
    rule = DEFAULT_RULES.get("dispatch_zone")
    assert rule is not None
    assert rule.radius_for(50.0) == 50.0
    assert rule.radius_for(5000.0) == rule.radius_m
    assert rule.radius_for(None) == rule.radius_m
    taser = DEFAULT_RULES.get("taser_draw")
    assert taser is not None
    assert taser.radius_for(500.0) == THIRTY_FEET_M


def test_new_trigger_type_is_a_table_not_code() -> None:
    table = rules_from_toml(
        {"holster_draw": {"camera_kinds": ["body_cam"], "radius_m": 9.144, "pre_roll_s": 60}}
    )
    rule = table.get("holster_draw")
    assert rule is not None
    assert rule.camera_kinds == frozenset({DeviceKind.BODY_CAM})
    assert rule.pre_roll_s == 60.0
    assert table.get("taser_draw") == DEFAULT_RULES.get("taser_draw")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"radius_m": -1}, "radius_m must be between"),
        ({"radius_m": "far"}, "radius_m must be a number"),
        ({"pre_roll_s": 121}, "pre_roll_s must be between"),
        ({"camera_kinds": ["toaster"]}, "camera_kinds must list"),
        ({"camera_kinds": ["gateway"]}, "cannot record"),
        ({"include_paired": "yes"}, "must be true or false"),
        ({"radiuss": 3}, "unknown setting 'radiuss'"),
    ],
)
def test_bad_rule_settings_say_what_is_wrong(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rules_from_toml({"holster_draw": raw})


def test_bad_event_type_name_is_rejected() -> None:
    with pytest.raises(ConfigError, match="event type must match"):
        Rule("Taser Draw")


def test_duplicate_rule_is_rejected() -> None:
    with pytest.raises(ConfigError, match="defined twice"):
        RuleTable.of([Rule("collision"), Rule("collision")])


@pytest.mark.parametrize(
    ("event_type", "senders"),
    [
        ("taser_draw", {"cew"}),
        ("emergency_lights", {"gateway"}),
        ("collision", {"gateway"}),
        ("dispatch_zone", {DISPATCH_SENDER}),
    ],
)
def test_each_trigger_type_names_who_may_raise_it(event_type: str, senders: set[str]) -> None:
    rule = DEFAULT_RULES.get(event_type)
    assert rule is not None
    assert rule.senders == senders


def test_allow_list_checks_the_kind_and_keeps_dispatch_apart() -> None:
    taser = DEFAULT_RULES.get("taser_draw")
    zone = DEFAULT_RULES.get("dispatch_zone")
    assert taser is not None
    assert zone is not None
    assert taser.allows(DeviceKind.CEW)
    assert not taser.allows(DeviceKind.BODY_CAM)
    assert not taser.allows(None)  # a device of unknown kind raises nothing
    assert not taser.allows(DeviceKind.CEW, dispatch=True)  # dispatch raises only zones
    assert zone.allows(None, dispatch=True)
    assert not zone.allows(DeviceKind.GATEWAY)


def test_holster_draw_comes_from_holster_sensors_unless_told_otherwise() -> None:
    table = rules_from_toml({"holster_draw": {"camera_kinds": ["body_cam"]}})
    rule = table.get("holster_draw")
    assert rule is not None
    assert rule.senders == {DeviceKind.HOLSTER.value}
    table = rules_from_toml({"holster_draw": {"senders": ["holster", "cew"]}})
    rule = table.get("holster_draw")
    assert rule is not None
    assert rule.allows(DeviceKind.CEW)


def test_a_new_trigger_type_must_say_who_raises_it() -> None:
    with pytest.raises(ConfigError, match=r"rule 'gunshot': say which devices may raise it"):
        rules_from_toml({"gunshot": {"camera_kinds": ["body_cam"]}})
    rule = rules_from_toml({"gunshot": {"senders": ["gateway"]}}).get("gunshot")
    assert rule is not None
    assert rule.allows(DeviceKind.GATEWAY)
    assert Rule("gunshot").senders == frozenset()  # in code, with no senders: nobody


@pytest.mark.parametrize(
    ("senders", "message"),
    [
        (["toaster"], "unknown sender toaster"),
        ([], "senders must be a non-empty list"),
        ("cew", "senders must be a non-empty list"),
        ([3], "senders must be a non-empty list"),
    ],
)
def test_bad_senders_say_what_is_wrong(senders: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rules_from_toml({"taser_draw": {"senders": senders}})
