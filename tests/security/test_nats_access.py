"""The registry's access rules as NATS users: what each account is granted, what is
left out, and the bcrypt hashes the registry keeps for them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from actimesh.broker.messages import DeviceKind
from actimesh.broker.nats.auth import ConnectionType, NatsUser, bcrypt_hash
from actimesh.security.acl import (
    SERVICE_DISPATCH,
    SERVICE_ENGINE,
    AccountRole,
    AclAccount,
    AclDevice,
    AclPolicy,
    render_access,
)
from actimesh.security.nats_access import nats_access, registry_nats_access
from actimesh.security.registry import DeviceSpec, Registry

POLICY = AclPolicy("ag", "dispatch-1", frozenset({DeviceKind.CEW.value}))
HASH = bcrypt_hash("x")


def _users(*devices: AclDevice, accounts: tuple[AclAccount, ...] = ()) -> dict[str, NatsUser]:
    access = render_access(POLICY, devices, accounts)
    hashes = {c.username: HASH for c in access.clients}
    return {u.name: u for u in nats_access(access, hashes).users}


def test_a_device_gets_exactly_its_own_subjects_over_mqtt_only() -> None:
    users = _users(AclDevice("cam.7", kind="body_cam"), AclDevice("cew-1", kind="cew"))
    cam = users["cam.7"]
    own = "am.v1.ag.dev.cam//7"
    assert cam.connection_types == (ConnectionType.MQTT,)
    # ... and its own OwnTracks topic, for a phone tracking it (docs/DEVICES.md)
    owntracks = "owntracks.cam//7.*"
    assert set(cam.publish) == {f"{own}.telemetry", f"{own}.ack", f"{own}.presence", owntracks}
    # ... and reads the engine's slow-down, which it may not publish
    assert set(cam.subscribe) == {f"{own}.cmd", f"{own}.confirm", "am.v1.ag.engine.slowdown"}
    assert "am.v1.ag.dev.cew-1.event" in users["cew-1"].publish  # its kind raises triggers


def test_disabled_devices_and_accounts_without_a_nats_hash_are_left_out() -> None:
    access = render_access(
        POLICY, [AclDevice("cam-1", disabled=True), AclDevice("cam-2"), AclDevice("cam-3")], []
    )
    users = nats_access(access, {"cam-1": HASH, "cam-2": HASH})
    assert [u.name for u in users.users] == ["cam-2"]


def test_the_engine_is_native_and_gets_the_jetstream_calls_of_its_links() -> None:
    engine = _users(accounts=(AclAccount(SERVICE_ENGINE, AccountRole.ENGINE),))[SERVICE_ENGINE]
    assert engine.connection_types == (ConnectionType.STANDARD,)
    assert "$MQTT.msgs.am.v1.ag.dev.*.cmd" in engine.publish
    assert "$JS.API.CONSUMER.CREATE.$MQTT_msgs.>" in engine.publish
    assert "$JS.ACK.$MQTT_msgs.>" in engine.publish
    assert not any(s.startswith("$share") for s in engine.subscribe)  # MQTT only
    assert not any(s.startswith(("$JS.API.STREAM", "$MQTT.sess")) for s in engine.publish)


def test_a_multi_level_grant_also_grants_its_parent_level() -> None:
    # An MQTT '#' matches its parent level; the server subscribes that one separately.
    reader = AclAccount("int-news", AccountRole.INTEGRATOR)
    news = _users(accounts=(reader,))["int-news"]
    assert news.connection_types == (ConnectionType.MQTT,)
    assert {"am.v1.ag.activations.>", "am.v1.ag.activations"} <= set(news.subscribe)
    assert news.publish == ()


def test_the_admin_account_has_nothing_to_do_on_a_cluster_and_no_login() -> None:
    assert _users(accounts=(AclAccount("svc-admin", AccountRole.ADMIN),)) == {}


def test_a_nats_user_takes_only_a_bcrypt_hash() -> None:
    with pytest.raises(ValueError, match="bcrypt"):
        NatsUser("cam-1", "$7$101$abc$def", (), (), (ConnectionType.MQTT,))


def test_the_registry_keeps_a_bcrypt_hash_from_add_and_rotate(tmp_path: Path) -> None:
    with Registry.open(tmp_path) as registry:
        registry.add("cam-1", DeviceKind.BODY_CAM)
        before = registry.nats_hashes()["cam-1"]
        registry.rotate("cam-1")
        assert registry.nats_hashes()["cam-1"] != before
        assert registry.nats_hashes()["cam-1"].startswith("$2b$04$")
        users = registry_nats_access(registry, POLICY)
    assert [u.name for u in users.users] == ["cam-1"]


def test_a_registry_from_before_nats_gains_the_column_and_a_rotation_fills_it(
    tmp_path: Path,
) -> None:
    with Registry.open(tmp_path) as registry:
        registry.add("cam-1", DeviceKind.BODY_CAM)
    with sqlite3.connect(tmp_path / "registry.sqlite3") as db:
        db.execute("ALTER TABLE devices DROP COLUMN nats_hash")
    with Registry.open(tmp_path) as registry:
        assert registry.nats_hashes() == {}  # no password in clear to hash again
        assert registry_nats_access(registry, POLICY).users == ()
        registry.rotate("cam-1")
        assert set(registry.nats_hashes()) == {"cam-1"}


def test_kept_service_passwords_get_their_hash(tmp_path: Path) -> None:
    with Registry.open(tmp_path) as registry:
        registry.ensure_service_accounts(tmp_path / "secrets")
        registry._db.execute("UPDATE accounts SET nats_hash = NULL")
        registry.ensure_service_accounts(tmp_path / "secrets", keep_existing=True)
        assert SERVICE_ENGINE in registry.nats_hashes()


def test_a_simulated_fleet_gets_cluster_logins_only_when_asked(tmp_path: Path) -> None:
    # bcrypt is 0.9 ms a device: not paid on every start of a fleet that runs on Mosquitto.
    specs = [DeviceSpec("sim-1", DeviceKind.BODY_CAM)]
    with Registry.open(tmp_path) as registry:
        registry.provision_simulated(specs)
        assert registry.nats_hashes() == {}
        registry.provision_simulated(specs, cluster_logins=True)
        assert set(registry.nats_hashes()) == {"sim-1"}


def test_the_dispatch_reads_owntracks_locations_on_the_cluster_too() -> None:
    # The same Access as on Mosquitto: read the app's topic, never publish on it.
    dispatch = _users(accounts=(AclAccount(SERVICE_DISPATCH, AccountRole.DISPATCH),))
    user = dispatch[SERVICE_DISPATCH]
    assert "owntracks.*.*" in user.subscribe
    assert not any(s.startswith("owntracks") for s in user.publish)
