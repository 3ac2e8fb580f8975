"""The fleet simulator builds crews the way agencies equip them."""

from __future__ import annotations

from pathlib import Path

import pytest

from actimesh.broker.messages import DeviceKind
from actimesh.broker.topics import Topics
from actimesh.devices import MediaKind, MediaSettings, SyntheticSource
from actimesh.devices.h264_live import LiveH264Source
from actimesh.devices.simulator import FleetSimulator, SimSettings
from actimesh.geofence import distance_m


def build(tmp_path: Path, units: int = 5) -> FleetSimulator:
    return FleetSimulator(
        topics=Topics("sim"),
        broker_host="127.0.0.1",
        broker_port=1,
        data_dir=tmp_path,
        settings=SimSettings(units=units, seed=1),
    )


def test_each_unit_is_a_cruiser_with_paired_cameras_and_armed_officers(tmp_path: Path) -> None:
    sim = build(tmp_path)
    for unit in sim.units:
        assert unit.gateway is not None
        assert set(unit.gateway.paired) == {f"{unit.name}-dash", f"{unit.name}-rear"}
        assert 1 <= len(unit.body_cams) == len(unit.cews) <= 2
        for body, cew in zip(unit.body_cams, unit.cews, strict=True):
            assert body.kind is DeviceKind.BODY_CAM
            assert cew.paired == (body.device_id,)
            assert cew.local_peers == (body,)
            # A CEW has no GPS of its own: it borrows the body camera's fix.
            assert cew.position() is None
            assert cew.telemetry().lat is None
    assert len(sim.agents) == sum(3 + 2 * len(u.body_cams) for u in sim.units)


def test_units_start_inside_the_patrol_area(tmp_path: Path) -> None:
    sim = build(tmp_path, units=50)
    lat0, lon0 = sim.settings.center
    for unit in sim.units:
        assert distance_m(lat0, lon0, unit.car.lat, unit.car.lon) <= sim.settings.area_radius_m + 1


def test_reported_fixes_scatter_like_their_accuracy(tmp_path: Path) -> None:
    sim = build(tmp_path, units=1)
    car = sim.units[0].car
    errors = [
        distance_m(car.lat, car.lon, f.lat, f.lon) for f in (car.fix(0.0) for _ in range(400))
    ]
    mean = sum(errors) / len(errors)
    assert 0.5 * car.acc < mean < 1.5 * car.acc


def test_move_reaches_the_target_without_overshooting(tmp_path: Path) -> None:
    sim = build(tmp_path, units=1)
    car = sim.units[0].car
    target = (car.lat + 0.001, car.lon)
    car.path = [target]
    steps = 0
    while not car.follow(14.0):
        steps += 1
        assert steps < 100
    assert (car.lat, car.lon) == target
    assert steps == pytest.approx(111.3 / 14.0, abs=1)


def test_fleet_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="between 1 and 2000"):
        SimSettings(units=0)


def test_one_setting_switches_the_fleet_to_real_h264(tmp_path: Path) -> None:
    media = MediaSettings(source=MediaKind.H264, width=160, height=90, fps=5)
    sim = FleetSimulator(
        topics=Topics("sim"),
        broker_host="127.0.0.1",
        broker_port=1,
        data_dir=tmp_path,
        settings=SimSettings(units=1, seed=1, media=media),
    )
    cameras = [a.camera for a in sim.agents if a.camera is not None]
    try:
        sources = [c.source for c in cameras]
        assert sources
        assert all(isinstance(s, LiveH264Source) and s.running for s in sources)
        # Real video is filmed from now on, not backfilled.
        assert all(c.started_at == sim._started for c in cameras)
    finally:
        sim.close()
    assert not any(isinstance(s, LiveH264Source) and s.running for s in sources)


def test_default_fleet_keeps_synthetic_segments_and_starts_warm(tmp_path: Path) -> None:
    sim = build(tmp_path, units=1)
    cameras = [a.camera for a in sim.agents if a.camera is not None]
    assert all(isinstance(c.source, SyntheticSource) for c in cameras)
    assert all(c.started_at < sim._started - sim.settings.pre_roll_s for c in cameras)


def test_a_simulated_fleet_speaks_the_mqtt_version_it_is_told(tmp_path: Path) -> None:
    assert {a.link.settings.protocol for a in build(tmp_path).agents} == {"5"}
    sim = FleetSimulator(
        topics=Topics("sim"),
        broker_host="127.0.0.1",
        broker_port=1,
        data_dir=tmp_path,
        settings=SimSettings(units=2, seed=1, mqtt_protocol="3.1.1"),
    )
    assert {a.link.settings.protocol for a in sim.agents} == {"3.1.1"}


def test_a_few_body_cameras_film_real_video_so_their_recordings_play(tmp_path: Path) -> None:
    sim = FleetSimulator(
        topics=Topics("sim"),
        broker_host="127.0.0.1",
        broker_port=1,
        data_dir=tmp_path,
        settings=SimSettings(units=3, seed=1, video_cameras=2),
    )
    try:
        video = {
            a.device_id
            for a in sim.agents
            if a.camera is not None and isinstance(a.camera.source, LiveH264Source)
        }
        assert video == {"unit001-bwc1", "unit002-bwc1"}
        synthetic = [
            a.camera for a in sim.agents if a.camera is not None and a.device_id not in video
        ]
        assert all(isinstance(c.source, SyntheticSource) for c in synthetic)
    finally:
        sim.close()
