"""Engine signing keys on disk, and what a signed command binds."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from pydantic import ValidationError

from actimesh.broker.codec import decode, encode
from actimesh.broker.messages import ActivationReason, Command
from actimesh.errors import ConfigError, PayloadError
from actimesh.security import signing
from actimesh.security.signing import (
    COMMAND_SIGNATURE_DOMAIN,
    CommandSigner,
    CommandVerifier,
    command_signing_bytes,
    engine_key_paths,
    load_engine_public_key,
    load_or_create_engine_key,
    public_key_hex,
    refusal_code,
)

NOW = 1_750_000_000.0
AGENCY = "metro"


def make(signer: CommandSigner, device_id: str = "bwc-1", **changes: object) -> Command:
    fields: dict[str, object] = {
        "agency": AGENCY,
        "device_id": device_id,
        "aid": "act-1",
        "eid": "e-1",
        "src": "cew-7",
        "type": "taser_draw",
        "ets": NOW,
        "pre": 30.0,
        "reason": ActivationReason.PROXIMITY,
        "dist": 6.2,
        "ts": NOW + 0.01,
        "exp": NOW + 300.0,
    }
    fields.update(changes)
    return signer.command(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- key files


def test_engine_key_is_created_private_and_its_public_half_published(tmp_path: Path) -> None:
    key = load_or_create_engine_key(tmp_path)
    private, public = engine_key_paths(tmp_path)
    assert private == tmp_path / "keys" / "engine-signing.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert public.read_text() == public_key_hex(key.public_key()) + "\n"
    assert len(public.read_text().strip()) == 64
    assert [p.name for p in private.parent.iterdir() if p.name.startswith(".")] == []
    # Loaded again, it is the same key.
    again = load_or_create_engine_key(tmp_path)
    assert public_key_hex(again.public_key()) == public_key_hex(key.public_key())
    assert load_engine_public_key(public).public_bytes_raw() == key.public_key().public_bytes_raw()


def test_replicas_starting_together_share_one_key(tmp_path: Path) -> None:
    keys: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        keys.append(public_key_hex(load_or_create_engine_key(tmp_path).public_key()))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1
    assert engine_key_paths(tmp_path)[1].read_text().strip() == keys[0]


def test_public_file_follows_a_rotated_private_key(tmp_path: Path) -> None:
    old = load_or_create_engine_key(tmp_path)
    private, public = engine_key_paths(tmp_path)
    private.rename(private.with_suffix(".pem.old"))  # the operator moves it away
    new = load_or_create_engine_key(tmp_path)
    assert public_key_hex(new.public_key()) != public_key_hex(old.public_key())
    assert public.read_text().strip() == public_key_hex(new.public_key())


def test_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    load_or_create_engine_key(tmp_path)
    private, _ = engine_key_paths(tmp_path)
    private.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\): run `chmod 600"):
        load_or_create_engine_key(tmp_path)


def test_damaged_or_foreign_key_files_are_one_line_errors(tmp_path: Path) -> None:
    private, public = engine_key_paths(tmp_path)
    private.parent.mkdir(mode=0o700)
    private.write_text("not a key")
    private.chmod(0o600)
    with pytest.raises(ConfigError, match="not an unencrypted PKCS8 PEM key") as info:
        load_or_create_engine_key(tmp_path)
    assert "\n" not in str(info.value)
    ec = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private.write_bytes(ec)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_or_create_engine_key(tmp_path)
    with pytest.raises(ConfigError, match=r"no engine public key at .*engine-signing\.pub"):
        load_engine_public_key(public)
    public.write_text("abc")
    with pytest.raises(ConfigError, match="not 64 hex characters"):
        load_engine_public_key(public)
    with pytest.raises(ConfigError, match="not 64 hex characters"):
        CommandVerifier.from_hex("zz" * 32)


def test_unwritable_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "keys"
        blocker.write_text("a file where the keys folder should be")
    else:
        tmp_path.chmod(0o500)
    with pytest.raises(ConfigError, match="cannot read or create the engine signing key"):
        load_or_create_engine_key(tmp_path)


# ---------------------------------------------------------------------- signed commands


def test_signed_bytes_are_domain_agency_camera_then_every_field_in_order() -> None:
    signer = CommandSigner.generate()
    command = make(signer)
    decoded = msgpack.unpackb(command_signing_bytes(AGENCY, "bwc-1", command), raw=False)
    fields = [name for name in Command.model_fields if name != "sig"]
    assert fields[0] == "v"
    assert decoded[:3] == [COMMAND_SIGNATURE_DOMAIN, AGENCY, "bwc-1"]  # the tag as msgpack bin
    assert decoded[3:] == [
        1,
        "act-1",
        "e-1",
        "cew-7",
        "taser_draw",
        NOW,
        30.0,
        "proximity",
        6.2,
        NOW + 0.01,
        NOW + 300.0,
    ]
    assert len(decoded) == 3 + len(fields)


def test_command_verifies_after_the_wire_and_binds_camera_agency_and_every_field() -> None:
    signer = CommandSigner.generate()
    verifier = signer.verifier()
    command = make(signer)
    assert len(command.sig) == 64
    received = decode(Command, encode(command))
    verifier.verify(received, agency=AGENCY, device_id="bwc-1", now=NOW + 1)
    with pytest.raises(PayloadError, match="bad_signature"):
        verifier.verify(received, agency=AGENCY, device_id="bwc-2", now=NOW + 1)
    with pytest.raises(PayloadError, match="bad_signature"):
        verifier.verify(received, agency="other", device_id="bwc-1", now=NOW + 1)
    for change in (
        {"aid": "act-2"},
        {"eid": "e-2"},
        {"src": "cew-8"},
        {"type": "collision"},
        {"ets": NOW - 1},
        {"pre": 120.0},
        {"reason": ActivationReason.PAIRED},
        {"dist": None},
        {"ts": NOW},
        {"exp": NOW + 3600},
    ):
        tampered = received.model_copy(update=change)
        with pytest.raises(PayloadError, match="bad_signature"):
            verifier.verify(tampered, agency=AGENCY, device_id="bwc-1", now=NOW + 1)
    flipped = bytes([received.sig[0] ^ 1]) + received.sig[1:]
    with pytest.raises(PayloadError, match="bad_signature"):
        verifier.verify(
            received.model_copy(update={"sig": flipped}),
            agency=AGENCY,
            device_id="bwc-1",
            now=NOW + 1,
        )
    other = CommandSigner.generate().verifier()
    with pytest.raises(PayloadError, match="bad_signature"):
        other.verify(received, agency=AGENCY, device_id="bwc-1", now=NOW + 1)


def test_expiry_allows_only_the_configured_clock_skew() -> None:
    signer = CommandSigner.generate()
    command = make(signer, exp=NOW + 300.0)
    verifier = signer.verifier(max_skew_s=5.0)
    verifier.verify(command, agency=AGENCY, device_id="bwc-1", now=NOW + 305.0)
    with pytest.raises(PayloadError, match=r"expired: command expired 5\.1 s"):
        verifier.verify(command, agency=AGENCY, device_id="bwc-1", now=NOW + 305.1)
    with pytest.raises(ValueError, match="max_skew_s"):
        signer.verifier(max_skew_s=-1)


def test_verifier_from_the_published_public_key_file(tmp_path: Path) -> None:
    signer = CommandSigner.from_data_dir(tmp_path)
    verifier = CommandVerifier.from_file(engine_key_paths(tmp_path)[1])
    verifier.verify(make(signer), agency=AGENCY, device_id="bwc-1", now=NOW)
    assert CommandVerifier.from_hex(signer.public_hex).public_key == verifier.public_key


@pytest.mark.parametrize("size", [0, 63, 65])
def test_command_model_wants_exactly_64_signature_bytes(size: int) -> None:
    command = make(CommandSigner.generate())
    fields = command.model_dump()
    fields["sig"] = b"\x01" * size
    with pytest.raises(ValidationError):
        Command(**fields)
    fields["sig"] = "a" * 64  # text is not bytes
    with pytest.raises(ValidationError):
        Command(**fields)


def test_refusal_codes_are_read_from_ack_details() -> None:
    assert refusal_code("bad_signature: forged") == "bad_signature"
    assert refusal_code("camera is off") == "camera is off"
    assert refusal_code(None) is None
    assert refusal_code("") is None
    assert "bad_signature" in signing.UNVERIFIED_REFUSALS
    assert "expired" not in signing.UNVERIFIED_REFUSALS  # a real command, really too late


def test_signing_a_cluster_of_ten_commands_is_cheap() -> None:
    """About 25 µs a command on the development machine; the bound here only catches a
    change that makes signing an order of magnitude slower (e.g. re-validating)."""
    signer = CommandSigner.generate()
    started = time.perf_counter()
    for i in range(200):
        make(signer, device_id=f"bwc-{i % 10}")
    per_command = (time.perf_counter() - started) / 200
    assert per_command < 0.001


def test_devices_trust_old_and_new_key_while_the_engine_key_rotates(tmp_path: Path) -> None:
    old, new = CommandSigner.generate(), CommandSigner.generate()
    pub = tmp_path / "engine-signing.pub"
    pub.write_text(f"{old.public_hex}\n# added for the rotation\n{new.public_hex}\n\n")
    verifier = CommandVerifier.from_file(pub)
    for signer in (old, new):
        verifier.verify(make(signer), agency=AGENCY, device_id="bwc-1", now=NOW)
    with pytest.raises(PayloadError, match="bad_signature"):
        verifier.verify(make(CommandSigner.generate()), agency=AGENCY, device_id="bwc-1", now=NOW)
    # Once the old key is dropped, what it signs is refused.
    pub.write_text(new.public_hex + "\n")
    with pytest.raises(PayloadError, match="bad_signature"):
        CommandVerifier.from_file(pub).verify(make(old), agency=AGENCY, device_id="bwc-1", now=NOW)
    pub.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no engine public key"):
        CommandVerifier.from_file(pub)
