"""The device registry: identities, accounts, hashes only, and the broker files."""

from __future__ import annotations

import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from actimesh import security
from actimesh.broker.client import LinkSettings
from actimesh.broker.dynsec import Access
from actimesh.broker.messages import DeviceKind
from actimesh.errors import SecurityError
from actimesh.security import (
    SERVICE_ACCOUNTS,
    AccountRole,
    AclPolicy,
    DeviceSpec,
    Registry,
    prepare_broker,
    read_secret,
    verify_password,
)

POLICY = AclPolicy("calgary", "dispatch-console-1")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.open(tmp_path)
    yield reg
    reg.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _hash_of(path: Path, name: str) -> str:
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT password_hash FROM devices WHERE id = ? UNION ALL "
            "SELECT password_hash FROM accounts WHERE name = ?",
            (name, name),
        ).fetchone()
    return str(row[0])


def test_add_returns_credentials_once_and_stores_only_a_hash(registry: Registry) -> None:
    creds = registry.add("bwc-1", DeviceKind.BODY_CAM, unit="unit7")
    assert creds.username == "bwc-1"
    assert creds.password not in repr(creds)
    assert creds.private_key not in repr(creds)
    hashed = _hash_of(registry.path, "bwc-1")
    assert hashed.startswith("$7$")
    assert verify_password(creds.password, hashed)
    raw = registry.path.read_bytes()
    assert creds.password.encode() not in raw
    assert creds.private_key.encode() not in raw
    assert _mode(registry.path) == 0o600


def test_device_key_pair_is_ed25519_and_the_public_half_is_registered(registry: Registry) -> None:
    creds = registry.add("bwc-1", DeviceKind.BODY_CAM)
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(creds.private_key))
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(registry.get("bwc-1").public_key))
    public.verify(private.sign(b"manifest"), b"manifest")


def test_list_and_get_show_what_was_registered(registry: Registry) -> None:
    registry.add("bwc-1", DeviceKind.BODY_CAM, unit="u1")
    registry.add("cew-1", DeviceKind.CEW, unit="u1", paired=["bwc-1"])
    devices = registry.devices()
    assert [d.device_id for d in devices] == ["bwc-1", "cew-1"]
    cew = registry.get("cew-1")
    assert cew.kind is DeviceKind.CEW
    assert cew.unit == "u1"
    assert cew.paired == ("bwc-1",)
    assert not cew.simulated
    assert cew.created <= cew.rotated <= time.time()


@pytest.mark.parametrize(
    ("device_id", "fragment"),
    [
        ("svc-engine", "reserved"),
        ("int-acme", "reserved"),
        ("SVC-x", "reserved"),
        ("dispatch-console-1", "reserved"),
        ("a/b", "not valid"),
        ("+", "not valid"),
        ("#", "not valid"),
        ("", "not valid"),
        ("x" * 65, "not valid"),
        ("-lead", "not valid"),
    ],
)
def test_bad_or_reserved_ids_are_one_line_errors(
    registry: Registry, device_id: str, fragment: str
) -> None:
    with pytest.raises(SecurityError, match=fragment) as info:
        registry.add(device_id, DeviceKind.BODY_CAM)
    assert "\n" not in str(info.value)
    assert registry.devices() == []


def test_duplicate_and_unknown_pairing_are_refused(registry: Registry) -> None:
    registry.add("bwc-1", DeviceKind.BODY_CAM)
    with pytest.raises(SecurityError, match=r"already registered.*rotate"):
        registry.add("bwc-1", DeviceKind.DASH_CAM)
    with pytest.raises(SecurityError, match="no such device"):
        registry.add("cew-1", DeviceKind.CEW, paired=["bwc-9"])
    with pytest.raises(SecurityError, match="itself"):
        registry.add("cew-1", DeviceKind.CEW, paired=["cew-1"])
    with pytest.raises(SecurityError, match="unit"):
        registry.add("cew-1", DeviceKind.CEW, unit="bad unit")
    assert [d.device_id for d in registry.devices()] == ["bwc-1"]


def test_rotate_replaces_password_and_key(registry: Registry) -> None:
    first = registry.add("bwc-1", DeviceKind.BODY_CAM)
    second = registry.rotate("bwc-1")
    hashed = _hash_of(registry.path, "bwc-1")
    assert verify_password(second.password, hashed)
    assert not verify_password(first.password, hashed)
    assert registry.get("bwc-1").public_key == second.public_key != first.public_key
    with pytest.raises(SecurityError, match="not registered"):
        registry.rotate("nope")


def test_remove_unpairs_the_devices_that_paired_with_it(registry: Registry) -> None:
    registry.add("bwc-1", DeviceKind.BODY_CAM)
    registry.add("cew-1", DeviceKind.CEW, paired=["bwc-1"])
    assert registry.remove("bwc-1") == ("cew-1",)
    assert registry.get("cew-1").paired == ()
    with pytest.raises(SecurityError, match="not registered"):
        registry.get("bwc-1")
    with pytest.raises(SecurityError, match="not registered"):
        registry.remove("bwc-1")


def test_integrators_read_only_by_default_and_unique(registry: Registry) -> None:
    creds = registry.add_integrator("acme")
    assert creds.username == "int-acme"
    registry.add_integrator("int-watch", telemetry=True)
    found = {a.name: a for a in registry.integrators()}
    assert not found["int-acme"].telemetry
    assert found["int-watch"].telemetry
    assert found["int-acme"].role is AccountRole.INTEGRATOR
    with pytest.raises(SecurityError, match="already exists"):
        registry.add_integrator("acme")
    with pytest.raises(SecurityError, match="not valid"):
        registry.add_integrator("a b")
    registry.remove_integrator("acme")
    with pytest.raises(SecurityError, match="does not exist"):
        registry.remove_integrator("acme")
    assert [a.name for a in registry.integrators()] == ["int-watch"]


def test_service_accounts_get_new_passwords_in_private_files(
    registry: Registry, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    first = registry.ensure_service_accounts(secrets)
    second = registry.ensure_service_accounts(secrets)
    assert set(first) == set(SERVICE_ACCOUNTS)
    assert _mode(secrets) == 0o700
    for name in SERVICE_ACCOUNTS:
        path = secrets / f"{name}.password"
        assert _mode(path) == 0o600
        assert path.read_text().strip() == second[name].password != first[name].password
        assert read_secret(tmp_path, name) == second[name].password
        assert verify_password(second[name].password, _hash_of(registry.path, name))
    with pytest.raises(SecurityError, match="actimesh up"):
        read_secret(tmp_path / "elsewhere", "svc-engine")


def test_bulk_provisioning_rotates_each_run_and_drops_stale_simulated_devices(
    registry: Registry,
) -> None:
    fleet = [
        DeviceSpec("u1-bwc1", DeviceKind.BODY_CAM, "u1"),
        DeviceSpec("u1-cew1", DeviceKind.CEW, "u1", ("u1-bwc1",)),
        DeviceSpec("u2-bwc1", DeviceKind.BODY_CAM, "u2"),
    ]
    first = registry.provision_simulated(fleet)
    second = registry.provision_simulated(fleet[:2])
    assert set(first) == {"u1-bwc1", "u1-cew1", "u2-bwc1"}
    assert set(second) == {"u1-bwc1", "u1-cew1"}
    assert [d.device_id for d in registry.devices()] == ["u1-bwc1", "u1-cew1"]
    assert all(d.simulated for d in registry.devices())
    hashed = _hash_of(registry.path, "u1-bwc1")
    assert verify_password(second["u1-bwc1"].password, hashed)
    assert not verify_password(first["u1-bwc1"].password, hashed)


def test_bulk_provisioning_never_takes_over_an_operator_device(registry: Registry) -> None:
    registry.add("u1-bwc1", DeviceKind.BODY_CAM)
    with pytest.raises(SecurityError, match="registered by an operator"):
        registry.provision_simulated([DeviceSpec("u1-bwc1", DeviceKind.BODY_CAM)])
    with pytest.raises(SecurityError, match="not in the simulated fleet"):
        registry.provision_simulated([DeviceSpec("x", DeviceKind.CEW, paired=("y",))])
    assert not registry.get("u1-bwc1").simulated


def test_bulk_provisioning_of_ten_thousand_devices_is_fast(registry: Registry) -> None:
    fleet = [DeviceSpec(f"d{i:05d}", DeviceKind.BODY_CAM, f"u{i // 5}") for i in range(10_000)]
    started = time.perf_counter()
    creds = registry.provision_simulated(fleet)
    elapsed = time.perf_counter() - started
    assert len(creds) == 10_000
    assert len(registry.password_file_text().splitlines()) == 10_000
    # ~0.1 ms a device here (PBKDF2 at 101 iterations plus an Ed25519 key); the bound
    # leaves room for a loaded CI machine but fails a per-device cost 10 times higher.
    assert elapsed < 15.0, f"{elapsed:.1f} s"


def test_broker_files_are_private_and_keep_the_policy(registry: Registry, tmp_path: Path) -> None:
    registry.add("bwc-1", DeviceKind.BODY_CAM)
    registry.add_integrator("acme")
    broker = tmp_path / "broker"
    with pytest.raises(SecurityError, match="actimesh up"):
        registry.write_broker_files(broker)
    files = registry.write_broker_files(broker, POLICY)
    assert _mode(broker) == 0o700
    assert _mode(files.passwd) == _mode(files.access) == 0o600
    names = [line.split(":", 1)[0] for line in files.passwd.read_text().splitlines()]
    assert names == ["bwc-1", "int-acme"]
    access = Access.from_json(files.access.read_text())
    assert {c.username: c.clientid for c in access.clients} == {
        "bwc-1": "calgary-bwc-1",
        "int-acme": "int-acme",
    }
    assert "am/v1/calgary/dev/bwc-1/event" in files.access.read_text()
    # Later renders without a policy (the CLI) reuse the one `up` gave.
    registry.remove("bwc-1")
    again = registry.write_broker_files(broker)
    assert "am/v1/calgary/" in again.access.read_text()
    assert "bwc-1" not in again.access.read_text()
    assert "bwc-1" not in again.passwd.read_text()
    assert not list(broker.glob(".*.tmp"))


def test_prepare_broker_provisions_services_fleet_and_files(tmp_path: Path) -> None:
    fleet = [DeviceSpec("u1-bwc1", DeviceKind.BODY_CAM, "u1")]
    done = prepare_broker(tmp_path, POLICY, devices=fleet, loadgen=True)
    assert done.broker_dir == tmp_path / "broker"
    assert done.service("svc-engine").username == "svc-engine"
    assert done.device("u1-bwc1").username == "u1-bwc1"
    assert done.loadgen is not None
    text = done.files.passwd.read_text()
    for name in (*SERVICE_ACCOUNTS, "u1-bwc1", "svc-loadgen"):
        assert f"\n{name}:" in f"\n{text}"
    with pytest.raises(SecurityError):
        done.service("svc-nope")
    with pytest.raises(SecurityError):
        done.device("nope")


def test_package_exports_what_it_lists() -> None:
    assert all(hasattr(security, name) for name in security.__all__)
    assert len(set(security.__all__)) == len(security.__all__)


def test_credentials_stay_out_of_reprs() -> None:
    settings = LinkSettings(host="h", port=1, client_id="c", username="u", password="hunter2")
    assert "hunter2" not in repr(settings)


def test_event_rights_follow_the_rules_and_are_remembered(
    registry: Registry, tmp_path: Path
) -> None:
    registry.add("bwc-1", DeviceKind.BODY_CAM)
    registry.add("cew-1", DeviceKind.CEW)
    policy = replace(POLICY, event_kinds=frozenset({"cew"}))
    registry.write_broker_files(tmp_path, policy)
    assert registry.policy() == policy
    again = registry.write_broker_files(tmp_path)  # as `actimesh devices add` does
    text = again.access.read_text()
    assert "am/v1/calgary/dev/cew-1/event" in text
    assert "am/v1/calgary/dev/bwc-1/event" not in text
    assert "am/v1/calgary/dev/bwc-1/telemetry" in text
