"""Fan-out planning: who records for one trigger, and what the ledger says about the rest."""

from __future__ import annotations

import pytest

from actimesh.broker.messages import (
    ActivationReason,
    DeviceKind,
    Event,
    LeftOutReason,
    Presence,
    activation_id,
)
from actimesh.geofence import GridIndex, InclusionMode, InclusionPolicy, destination
from actimesh.triggers import left_out_of
from actimesh.triggers.fanout import (
    Exclusion,
    Plan,
    PositionSource,
    plan_activation,
)
from actimesh.triggers.fleet import OFFLINE_MEMORY_S, Fleet, LastFix
from actimesh.triggers.rules import DEFAULT_RULES, Rule

T0 = 1_800_000_000.0
CENTER = (51.0447, -114.0719)


class Scene:
    """A fleet and an index built up device by device."""

    def __init__(self) -> None:
        self.fleet = Fleet()
        self.index = GridIndex()

    def device(
        self,
        device_id: str,
        kind: DeviceKind,
        *,
        at: float | None = None,
        bearing: float = 0.0,
        acc: float | None = 0.0,
        age: float = 0.0,
        paired: tuple[str, ...] = (),
    ) -> None:
        self.fleet.presence(device_id, Presence(online=True, device_kind=kind, paired=paired), T0)
        if at is not None:
            lat, lon = destination(*CENTER, bearing, at)
            self.index.upsert(device_id, lat, lon, acc, T0 - age)

    def go_offline(self, device_id: str, *, ago: float = 1.0) -> None:
        """Switch ``device_id`` off ``ago`` seconds before T0, where it last was."""
        fix = self.index.get(device_id)
        assert fix is not None
        self.index.remove(device_id)
        last = LastFix(fix.lat, fix.lon, fix.acc, fix.ts)
        self.fleet.presence(device_id, Presence(online=False), T0 - ago, last)

    def plan(self, policy: InclusionPolicy | None = None) -> Plan:
        return plan_activation(
            event=taser(fix=True),
            source="cew1",
            rule=rule("taser_draw"),
            fleet=self.fleet,
            index=self.index,
            policy=policy or InclusionPolicy(),
        )


def taser(eid: str = "e1", *, fix: bool = False) -> Event:
    if fix:
        return Event(eid=eid, type="taser_draw", ts=T0, lat=CENTER[0], lon=CENTER[1], acc=0.0)
    return Event(eid=eid, type="taser_draw", ts=T0)


def rule(name: str) -> Rule:
    found = DEFAULT_RULES.get(name)
    assert found is not None
    return found


def test_taser_draw_activates_body_cams_within_radius_and_not_beyond() -> None:
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW, paired=("bwc-own",))
    scene.device("bwc-own", DeviceKind.BODY_CAM, at=0.0)
    scene.device("bwc-9.0", DeviceKind.BODY_CAM, at=9.0, bearing=45)
    scene.device("bwc-9.3", DeviceKind.BODY_CAM, at=9.3, bearing=200)
    scene.device("dash-5", DeviceKind.DASH_CAM, at=5.0, bearing=300)
    plan = plan_activation(
        event=taser(),
        source="cew1",
        rule=rule("taser_draw"),
        fleet=scene.fleet,
        index=scene.index,
        policy=InclusionPolicy(),
    )
    commanded = {t.device_id: t.reason for t in plan.targets}
    assert commanded == {
        "bwc-own": ActivationReason.PAIRED,
        "bwc-9.0": ActivationReason.PROXIMITY,
        "dash-5": ActivationReason.PROXIMITY,
    }
    # The CEW has no GPS: the event borrowed its paired body camera's fix.
    assert plan.position_source is PositionSource.PAIRED_DEVICE
    left_out = {d.device_id: d.reason for d in plan.decisions if not d.commanded}
    assert left_out == {"bwc-9.3": Exclusion.TOO_FAR}
    distances = {t.device_id: t.distance_m for t in plan.targets}
    assert distances["bwc-9.0"] == pytest.approx(9.0, abs=0.01)


def test_paired_cameras_activate_with_no_gps_fix_anywhere() -> None:
    scene = Scene()
    scene.device("gw", DeviceKind.GATEWAY, paired=("dash", "rear"))
    scene.device("dash", DeviceKind.DASH_CAM)
    scene.device("rear", DeviceKind.REAR_CAM)
    event = Event(eid="crash", type="collision", ts=T0)
    plan = plan_activation(
        event=event,
        source="gw",
        rule=rule("collision"),
        fleet=scene.fleet,
        index=scene.index,
        policy=InclusionPolicy(),
    )
    assert {t.device_id for t in plan.targets} == {"dash", "rear"}
    assert all(t.reason is ActivationReason.PAIRED for t in plan.targets)
    assert plan.position_source is PositionSource.NONE
    assert plan.lat is None


def test_paired_camera_never_heard_of_is_still_commanded() -> None:
    scene = Scene()
    scene.device("gw", DeviceKind.GATEWAY, paired=("dash-unknown",))
    plan = plan_activation(
        event=Event(eid="x", type="emergency_lights", ts=T0),
        source="gw",
        rule=rule("emergency_lights"),
        fleet=scene.fleet,
        index=scene.index,
        policy=InclusionPolicy(),
    )
    assert [t.device_id for t in plan.targets] == ["dash-unknown"]
    assert plan.decisions[0].reason == "paired_offline_queued"


def test_stale_fix_is_not_trusted_as_within_thirty_feet() -> None:
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW)
    scene.device("bwc-stale", DeviceKind.BODY_CAM, at=3.0, age=25.0)
    plan = plan_activation(
        event=taser(fix=True),
        source="cew1",
        rule=rule("taser_draw"),
        fleet=scene.fleet,
        index=scene.index,
        policy=InclusionPolicy(max_fix_age_s=10.0),
    )
    assert plan.targets == ()
    (decision,) = plan.decisions
    assert decision.reason == Exclusion.STALE
    assert decision.fix_age_s == pytest.approx(25.0)


def test_offline_camera_is_reported_not_commanded() -> None:
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW)
    scene.device("bwc-off", DeviceKind.BODY_CAM, at=4.0)
    scene.go_offline("bwc-off")
    plan = plan_activation(
        event=taser(fix=True),
        source="cew1",
        rule=rule("taser_draw"),
        fleet=scene.fleet,
        index=scene.index,
        policy=InclusionPolicy(),
    )
    assert plan.targets == ()
    assert [(d.device_id, d.reason) for d in plan.decisions] == [("bwc-off", Exclusion.OFFLINE)]


@pytest.mark.parametrize("ago", [11.0, 3600.0, OFFLINE_MEMORY_S - 1])
def test_camera_switched_off_long_before_the_event_is_still_reported_offline(
    ago: float,
) -> None:
    """The offline row does not depend on the fix-age window: a camera switched off
    11 s or an hour before a trigger beside it is what an investigator asks about."""
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW)
    scene.device("bwc-off", DeviceKind.BODY_CAM, at=4.0, age=ago)
    scene.go_offline("bwc-off", ago=ago)
    (decision,) = scene.plan().decisions
    assert (decision.device_id, decision.reason) == ("bwc-off", Exclusion.OFFLINE)
    assert decision.fix_age_s == pytest.approx(ago)
    assert decision.distance_m == pytest.approx(4.0, abs=1e-6)


def test_camera_switched_off_longer_ago_than_a_shift_is_forgotten() -> None:
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW)
    scene.device("bwc-old", DeviceKind.BODY_CAM, at=4.0)
    scene.go_offline("bwc-old", ago=OFFLINE_MEMORY_S + 1)
    assert scene.plan().decisions == ()


def test_offline_memory_holds_each_device_once_and_prunes_as_devices_leave() -> None:
    fleet = Fleet(offline_memory_s=100.0)
    fix = LastFix(CENTER[0], CENTER[1], 0.0, T0)
    for i in range(3):  # off, on, off again: one entry
        fleet.presence("bwc", Presence(online=i % 2 == 1), T0 + i, fix)
    assert [i.device_id for i, _ in fleet.offline_near(*CENTER, 10.0, T0)] == ["bwc"]
    fleet.presence("other", Presence(online=False), T0 + 150, fix)  # prunes "bwc"
    assert [i.device_id for i, _ in fleet.offline_near(*CENTER, 10.0, 0.0)] == ["other"]


def test_camera_back_online_is_no_longer_reported_offline() -> None:
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW)
    scene.device("bwc", DeviceKind.BODY_CAM, at=4.0)
    scene.go_offline("bwc", ago=5.0)
    scene.fleet.presence("bwc", Presence(online=True), T0 - 2)
    assert scene.plan().decisions == ()


@pytest.mark.parametrize("mode", list(InclusionMode))
def test_every_camera_just_outside_the_radius_gets_a_row_in_either_mode(
    mode: InclusionMode,
) -> None:
    """Centre mode commands only within 9.144 m, but still says why the camera at
    9.3 m (and the stale one at 5 m) was left out."""
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW)
    scene.device("bwc-9.3", DeviceKind.BODY_CAM, at=9.3, acc=0.0)
    scene.device("bwc-14", DeviceKind.BODY_CAM, at=14.0, bearing=90, acc=0.0)
    scene.device("bwc-stale", DeviceKind.BODY_CAM, at=5.0, bearing=180, age=25.0)
    plan = scene.plan(InclusionPolicy(mode=mode))
    assert plan.targets == ()
    reasons = {d.device_id: d.reason for d in plan.decisions}
    assert reasons == {
        "bwc-9.3": Exclusion.TOO_FAR,
        "bwc-14": Exclusion.TOO_FAR,
        "bwc-stale": Exclusion.STALE,
    }


def test_accuracy_margin_widens_radius_in_inclusive_mode_only() -> None:
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW)
    scene.device("bwc", DeviceKind.BODY_CAM, at=10.0, acc=1.5)

    def commanded(mode: InclusionMode) -> bool:
        plan = plan_activation(
            event=taser(fix=True),
            source="cew1",
            rule=rule("taser_draw"),
            fleet=scene.fleet,
            index=scene.index,
            policy=InclusionPolicy(mode=mode),
        )
        return any(t.device_id == "bwc" for t in plan.targets)

    assert commanded(InclusionMode.INCLUSIVE)
    assert not commanded(InclusionMode.CENTRE)


def test_rule_limited_to_body_cams_records_why_dash_cam_was_left_out() -> None:
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW)
    scene.device("dash", DeviceKind.DASH_CAM, at=2.0)
    body_only = Rule("holster_draw", camera_kinds=frozenset({DeviceKind.BODY_CAM}))
    plan = plan_activation(
        event=Event(eid="h", type="holster_draw", ts=T0, lat=CENTER[0], lon=CENTER[1]),
        source="cew1",
        rule=body_only,
        fleet=scene.fleet,
        index=scene.index,
        policy=InclusionPolicy(),
    )
    assert plan.targets == ()
    assert plan.decisions[0].reason == Exclusion.KIND_NOT_IN_RULE


def test_dispatch_zone_uses_event_radius_and_no_pairing() -> None:
    scene = Scene()
    scene.device("dispatch", DeviceKind.GATEWAY, paired=("dash-far",))
    scene.device("dash-far", DeviceKind.DASH_CAM, at=500.0)
    scene.device("bwc-40", DeviceKind.BODY_CAM, at=40.0)
    event = Event(eid="z1", type="dispatch_zone", ts=T0, lat=CENTER[0], lon=CENTER[1], radius=50.0)
    plan = plan_activation(
        event=event,
        source="dispatch",
        rule=rule("dispatch_zone"),
        fleet=scene.fleet,
        index=scene.index,
        policy=InclusionPolicy(),
    )
    assert plan.radius_m == 50.0
    assert {t.device_id for t in plan.targets} == {"bwc-40"}


def test_activation_id_is_deterministic_per_source_and_event() -> None:
    assert activation_id("cew1", "e1") == activation_id("cew1", "e1")
    assert activation_id("cew1", "e1") != activation_id("cew2", "e1")
    assert activation_id("cew1", "e1") != activation_id("cew1", "e2")
    assert activation_id("a" * 64, "b" * 64).startswith("act-")
    assert len(activation_id("a" * 64, "b" * 64)) <= 64


FT = 0.3048
#: The rule's radius (30 ft) and just either side of it.
INSIDE_M, OUTSIDE_M = 29.9 * FT, 30.1 * FT


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param(CENTER, id="calgary"),
        pytest.param((89.99995, 10.0), id="north-pole"),
        pytest.param((-89.99995, -170.0), id="south-pole"),
        pytest.param((-16.8, 179.99995), id="antimeridian"),
    ],
)
@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(InclusionPolicy(), id="inclusive"),
        pytest.param(InclusionPolicy(mode=InclusionMode.CENTRE), id="centre"),
        pytest.param(
            InclusionPolicy(mode=InclusionMode.CENTRE, max_margin_m=0.0), id="centre-no-margin"
        ),
        pytest.param(InclusionPolicy(max_margin_m=2.0), id="inclusive-2m"),
    ],
)
def test_every_camera_in_the_decision_band_gets_a_row_with_its_reason_in_every_policy(
    origin: tuple[float, float], policy: InclusionPolicy
) -> None:
    """29.9 ft is commanded and 30.1 ft is not, exactly, in either mode, at the pole and
    across the 180th meridian; every camera out to radius + max_margin_m (42 ft, 49 ft)
    has a decision row with its distance, and the record lists every one left out."""
    fleet, index = Fleet(), GridIndex()
    placed = {"bwc-in": INSIDE_M, "bwc-out": OUTSIDE_M, "bwc-42": 42 * FT, "bwc-49": 49 * FT}
    fleet.presence("cew1", Presence(online=True, device_kind=DeviceKind.CEW), T0)
    for n, (device_id, dist) in enumerate(placed.items()):
        fleet.presence(device_id, Presence(online=True, device_kind=DeviceKind.BODY_CAM), T0)
        index.upsert(device_id, *destination(*origin, 90.0 * n + 15, dist), 0.0, T0)
    beyond = destination(*origin, 300.0, policy.search_radius_m(rule("taser_draw").radius_m) + 0.5)
    fleet.presence("bwc-far", Presence(online=True, device_kind=DeviceKind.BODY_CAM), T0)
    index.upsert("bwc-far", *beyond, 0.0, T0)
    event = Event(eid="e1", type="taser_draw", ts=T0, lat=origin[0], lon=origin[1], acc=0.0)
    plan = plan_activation(
        event=event,
        source="cew1",
        rule=rule("taser_draw"),
        fleet=fleet,
        index=index,
        policy=policy,
    )
    assert [t.device_id for t in plan.targets] == ["bwc-in"]
    rows = {d.device_id: d for d in plan.decisions}
    assert set(rows) == set(placed)  # bwc-far is beyond the band: no row in any mode
    for device_id, dist in placed.items():
        assert rows[device_id].distance_m == pytest.approx(dist, abs=1e-6)
    assert rows["bwc-in"].reason == "proximity"
    assert plan.excluded == 3
    record = left_out_of(plan.decisions)
    assert [(c.id, c.reason.value) for c in record] == [
        ("bwc-42", "too_far"),
        ("bwc-49", "too_far"),
        ("bwc-out", "too_far"),
    ]
    assert {c.id: c.dist for c in record}["bwc-out"] == pytest.approx(OUTSIDE_M, abs=1e-6)
    assert all(c.device_kind is DeviceKind.BODY_CAM and c.margin == 0.0 for c in record)


def test_the_record_names_each_reason_the_ledger_gives() -> None:
    """Stale, offline and a kind the rule does not start reach the record by name."""
    assert {e.value for e in Exclusion} == {r.value for r in LeftOutReason}
    scene = Scene()
    scene.device("cew1", DeviceKind.CEW)
    scene.device("bwc-stale", DeviceKind.BODY_CAM, at=3.0, age=25.0)
    scene.device("dash", DeviceKind.DASH_CAM, at=2.0, bearing=90)
    scene.device("bwc-off", DeviceKind.BODY_CAM, at=4.0, bearing=180)
    scene.go_offline("bwc-off", ago=60.0)
    plan = plan_activation(
        event=taser(fix=True),
        source="cew1",
        rule=Rule("taser_draw", frozenset({DeviceKind.BODY_CAM}), include_paired=False),
        fleet=scene.fleet,
        index=scene.index,
        policy=InclusionPolicy(mode=InclusionMode.CENTRE),
    )
    record = {c.id: c for c in left_out_of(plan.decisions)}
    assert {k: c.reason.value for k, c in record.items()} == {
        "bwc-off": "offline",
        "bwc-stale": "stale",
        "dash": "kind_not_in_rule",
    }
    assert record["bwc-stale"].age == pytest.approx(25.0)
    assert record["bwc-off"].dist == pytest.approx(4.0, abs=1e-6)
    assert record["dash"].dist == pytest.approx(2.0, abs=1e-6)
