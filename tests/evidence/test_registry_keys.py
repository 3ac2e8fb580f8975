"""Upload logins are checked by the device registry itself: unknown, removed and rotated
devices are refused, and no registry file is ever created by a check."""

from __future__ import annotations

from pathlib import Path

from actimesh.broker.messages import DeviceKind
from actimesh.evidence import RegistryKeys
from actimesh.security.registry import REGISTRY_NAME, Registry


def test_registry_checks_a_devices_password_and_nothing_else(tmp_path: Path) -> None:
    with Registry.open(tmp_path) as registry:
        creds = registry.add("bwc1", DeviceKind.BODY_CAM)
        other = registry.add("bwc2", DeviceKind.BODY_CAM)
        svc = registry.ensure_service_accounts(tmp_path / "secrets")["svc-engine"]
        assert registry.check_password("bwc1", creds.password)
        assert not registry.check_password("bwc1", other.password)
        assert not registry.check_password("bwc1", "")
        assert not registry.check_password("nobody", creds.password)
        # Service accounts are not devices: their login never uploads evidence.
        assert not registry.check_password("svc-engine", svc.password)
        registry.remove("bwc1")
        assert not registry.check_password("bwc1", creds.password)


def test_registry_keys_follow_rotation_and_removal(tmp_path: Path) -> None:
    keys = RegistryKeys(tmp_path)
    assert keys.authenticate("bwc1", "x") is None  # no registry at all ...
    assert not (tmp_path / REGISTRY_NAME).exists()  # ... and none created by asking
    with Registry.open(tmp_path) as registry:
        old = registry.add("bwc1", DeviceKind.BODY_CAM)
    who = keys.authenticate("bwc1", old.password)
    assert who is not None
    assert who.device_id == "bwc1"
    assert who.public_key.public_bytes_raw().hex() == old.public_key
    assert keys.authenticate("bwc1", old.password + "x") is None
    assert keys.authenticate("../bwc1", old.password) is None
    with Registry.open(tmp_path) as registry:
        new = registry.rotate("bwc1")
    assert keys.authenticate("bwc1", old.password) is None
    rotated = keys.public_key("bwc1")
    assert rotated is not None
    assert rotated.public_bytes_raw().hex() == new.public_key
    with Registry.open(tmp_path) as registry:
        registry.remove("bwc1")
    assert keys.authenticate("bwc1", new.password) is None
    assert keys.public_key("bwc1") is None
