"""The command-signature encoding in docs/DISPATCH.md is exact: a verifier written from
that section alone (``struct`` and ``cryptography``, no msgpack library and no actimesh
code) reproduces its test vector, and the engine's own signer and the cameras' verifier
agree with it byte for byte."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOC = Path(__file__).resolve().parents[2] / "docs" / "DISPATCH.md"
SECTION = "## Command signatures, byte for byte"
FLOATS = ("ets", "pre", "dist", "ts", "exp")


def _section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def _text_blocks() -> list[str]:
    return re.findall(r"^```text\n(.*?)^```", _section(), re.MULTILINE | re.DOTALL)


def _vector() -> dict[str, str]:
    block = _text_blocks()[0]
    vector: dict[str, str] = {}
    for line in block.splitlines():
        key, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        vector[key] = value
    return vector


def _breakdown() -> bytes:
    lines = _text_blocks()[1].splitlines()
    return bytes.fromhex("".join(line.split("#", 1)[0].replace(" ", "") for line in lines))


# ---------------------------------------------------------------- from the doc's text only
def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    assert len(raw) <= 255, "no field may be longer than 255 bytes"
    return (bytes([0xA0 | len(raw)]) if len(raw) <= 31 else bytes([0xD9, len(raw)])) + raw


def _float(value: float | None) -> bytes:
    return b"\xc0" if value is None else b"\xcb" + struct.pack(">d", value)


def canonical(agency: str, camera: str, fields: dict[str, str]) -> bytes:
    """The 14-element array of the section's table, each element as its rules say."""
    tag = b"actimesh-cmd-v1"
    out = b"\x9e" + b"\xc4" + bytes([len(tag)]) + tag + _str(agency) + _str(camera)
    assert fields["v"] == "1"
    out += b"\x01"
    out += b"".join(_str(fields[name]) for name in ("aid", "eid", "src", "type"))
    out += _float(float(fields["ets"])) + _float(float(fields["pre"]))
    out += _str(fields["reason"])
    dist = fields.get("dist")
    out += _float(None if dist is None else float(dist))
    return out + _float(float(fields["ts"])) + _float(float(fields["exp"]))


def _topic_parts(topic: str) -> tuple[str, str]:
    levels = topic.split("/")
    assert (levels[0], levels[1], levels[3], levels[5]) == ("am", "v1", "dev", "cmd"), topic
    return levels[2], levels[4]


def test_an_outside_verifier_built_from_the_doc_reproduces_the_vector() -> None:
    vector = _vector()
    agency, camera = _topic_parts(vector["topic"])
    message = canonical(agency, camera, vector)
    assert message == _breakdown()
    assert len(message) == 136
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["private key (seed)"]))
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(vector["public key"]))
    assert key.public_key() == public
    signature = bytes.fromhex(vector["signature"])
    assert key.sign(message) == signature  # Ed25519 is deterministic
    public.verify(signature, message)
    # Bound to the camera and the agency: the same signature on another topic fails.
    for other in (canonical(agency, "bwc-8", vector), canonical("edmonton", camera, vector)):
        with pytest.raises(InvalidSignature):
            public.verify(signature, other)


def test_the_paired_example_signs_nil_for_the_missing_distance() -> None:
    vector = _vector()
    paired = {k: v for k, v in vector.items() if k != "dist"} | {"reason": "paired"}
    message = canonical("calgary", "unit12-dash", paired)
    assert message[-19:-18] == b"\xc0"  # element 12, before ts and exp (9 bytes each)
    found = re.search(r"is signed\s+`([0-9a-f]{128})`", _section())
    assert found is not None
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["private key (seed)"]))
    assert key.sign(message).hex() == found.group(1)


# ------------------------------------------------------------- against security/signing.py
def test_the_engine_and_the_cameras_agree_with_the_doc() -> None:
    import msgpack  # noqa: PLC0415 - only to build a payload as another encoder would

    from actimesh.broker.codec import decode, encode  # noqa: PLC0415 - kept apart from above
    from actimesh.broker.messages import ActivationReason, Command  # noqa: PLC0415
    from actimesh.security.signing import (  # noqa: PLC0415
        CommandSigner,
        CommandVerifier,
        command_signing_bytes,
    )

    vector = _vector()
    agency, camera = _topic_parts(vector["topic"])
    signer = CommandSigner(
        Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["private key (seed)"]))
    )
    assert signer.public_hex == vector["public key"]
    command = signer.command(
        agency=agency,
        device_id=camera,
        aid=vector["aid"],
        eid=vector["eid"],
        src=vector["src"],
        type=vector["type"],
        ets=float(vector["ets"]),
        pre=float(vector["pre"]),
        reason=ActivationReason(vector["reason"]),
        dist=float(vector["dist"]),
        ts=float(vector["ts"]),
        exp=float(vector["exp"]),
    )
    assert command_signing_bytes(agency, camera, command) == _breakdown()
    assert command.sig.hex() == vector["signature"]
    # What a camera receives, decoded from the wire, verifies with the doc's public key.
    received = decode(Command, encode(command))
    verifier = CommandVerifier.from_hex(vector["public key"])
    verifier.verify(received, agency=agency, device_id=camera, now=float(vector["ts"]))
    # A payload carrying a whole number as an integer is signed as the same float 64.
    fields = msgpack.unpackb(encode(command)) | {"pre": 30}
    whole = decode(Command, msgpack.packb(fields, use_bin_type=True))
    assert command_signing_bytes(agency, camera, whole) == _breakdown()
    verifier.verify(whole, agency=agency, device_id=camera, now=float(vector["ts"]))


# ---------------------------------------------------------------- slow-down signatures
SLOWDOWN_SECTION = "## Slow-down signatures"


def _slowdown_vector() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SLOWDOWN_SECTION)
    end = text.index("\n## ", start + len(SLOWDOWN_SECTION))
    (block,) = re.findall(r"^```text\n(.*?)^```", text[start:end], re.MULTILINE | re.DOTALL)
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in block.splitlines())


def test_the_slow_down_vector_is_the_documented_array_and_the_engine_signs_it() -> None:
    from actimesh.security.signing import CommandSigner, slowdown_signing_bytes  # noqa: PLC0415

    vector = _slowdown_vector()
    tag = b"actimesh-slow-v1"
    by_hand = (
        b"\x97\xc4"
        + bytes([len(tag)])
        + tag
        + _str("calgary")
        + b"\x01\xcf"
        + struct.pack(">Q", 1746100800500)
        + _float(1746100800.5)
        + _float(1746100920.5)
        + _float(30.0)
    )
    assert by_hand.hex() == vector["signed bytes"]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(_vector()["private key (seed)"]))
    signature = bytes.fromhex(vector["signature"])
    key.public_key().verify(signature, by_hand)
    message = CommandSigner(key).slowdown(
        agency="calgary", seq=1746100800500, ts=1746100800.5, exp=1746100920.5, hb=30.0
    )
    assert slowdown_signing_bytes("calgary", message) == by_hand
    assert message.sig == signature
