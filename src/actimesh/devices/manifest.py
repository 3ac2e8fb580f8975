"""A recording's manifest: what it holds, signed by the camera that filmed it.

The manifest (``manifest.json`` in the recording's folder) lists every segment with its
SHA-256 (and, when the recording is one MPEG-TS file, its byte range in that file and
the file's own SHA-256), the activations that asked for the recording with the pre-roll
each requested and got, the first frame's wall-clock time, whether the recording light
was off (stealth) and whether there is audio, and how the recording ended (including a
cancelled false activation).

The camera signs it with its Ed25519 device key. The signed bytes are::

    b"actimesh-manifest-v1\\n" + canonical JSON of the manifest without "signature"

where canonical JSON means sorted keys, no whitespace, ASCII only, no NaN, numbers as
Python's shortest round-tripping repr (the way the file itself is written). The
``signature`` member holds the algorithm, the signer's public key (to say which device
signed, not to be trusted) and the signature, all hex. :func:`verify_manifest` checks the
signature with the public key the verifier already trusts (from the device registry),
then every hash.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "MANIFEST_FORMAT_VERSION",
    "MANIFEST_NAME",
    "SIGNATURE_DOMAIN",
    "ManifestCheck",
    "canonical_json",
    "public_key_hex",
    "sign_manifest",
    "verify_manifest",
]

MANIFEST_FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
#: Prefix of the signed bytes, so a manifest signature can never pass for another one.
SIGNATURE_DOMAIN = b"actimesh-manifest-v1\n"
_ALG = "ed25519"
_CHUNK = 1 << 20


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, ASCII, no NaN: the one way a manifest is written."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _signed_bytes(manifest: Mapping[str, Any]) -> bytes:
    return SIGNATURE_DOMAIN + canonical_json(
        {k: v for k, v in manifest.items() if k != "signature"}
    )


def public_key_hex(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key as lowercase hex."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def sign_manifest(manifest: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of ``manifest`` with its ``signature`` member (any old one replaced)."""
    signature = key.sign(_signed_bytes(manifest))
    out = {k: v for k, v in manifest.items() if k != "signature"}
    out["signature"] = {
        "alg": _ALG,
        "public_key": public_key_hex(key.public_key()),
        "value": signature.hex(),
    }
    return out


@dataclass(frozen=True, slots=True)
class ManifestCheck:
    """What :func:`verify_manifest` found. ``ok`` means no problem; ``notes`` are facts
    worth knowing that do not break the evidence (a recording still live, say)."""

    path: Path
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    manifest: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the signature and every hash check out."""
        return not self.problems


def verify_manifest(path: Path, public_key: Ed25519PublicKey) -> ManifestCheck:
    """Check a recording against its manifest and the manifest against ``public_key``.

    ``path`` is the recording's folder or its ``manifest.json``. Checks the signature,
    then every segment's SHA-256 and size, the order of the segments, and for a
    one-file recording the byte ranges and the file's SHA-256. A failed check is
    reported, never raised: the result lists every problem found.
    """
    manifest_path = path / MANIFEST_NAME if path.is_dir() else path
    folder = manifest_path.parent
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError) as exc:
        return ManifestCheck(manifest_path, (f"manifest unreadable: {exc}",))
    if not isinstance(manifest, dict):
        return ManifestCheck(manifest_path, ("manifest is not a JSON object",))
    problems: list[str] = []
    notes: list[str] = []
    problems += _check_signature(manifest, public_key)
    try:
        _check_media(manifest, folder, problems, notes)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problems.append(f"manifest is malformed: {exc!r}")
    return ManifestCheck(manifest_path, tuple(problems), tuple(notes), manifest)


def _check_signature(manifest: Mapping[str, Any], trusted: Ed25519PublicKey) -> list[str]:
    sig = manifest.get("signature")
    if not isinstance(sig, dict):
        return ["manifest is not signed"]
    if sig.get("alg") != _ALG:
        return [f"unknown signature algorithm {sig.get('alg')!r}"]
    problems = []
    if sig.get("public_key") != public_key_hex(trusted):
        problems.append("manifest names a different signing key than the one trusted")
    try:
        trusted.verify(bytes.fromhex(str(sig.get("value"))), _signed_bytes(manifest))
    except (InvalidSignature, ValueError):
        problems.append(
            "signature does not verify: the manifest was changed or signed by another key"
        )
    return problems


def _check_media(
    manifest: Mapping[str, Any], folder: Path, problems: list[str], notes: list[str]
) -> None:
    segments: list[dict[str, Any]] = list(manifest["segments"])
    for a, b in itertools.pairwise(segments):
        if b["seq"] <= a["seq"] or b["start"] < a["end"]:
            problems.append(f"segment {b['seq']} does not follow segment {a['seq']}")
        elif b["start"] > a["end"]:
            notes.append(f"{b['start'] - a['end']:.3f} s missing before segment {b['seq']}")
    media = manifest.get("media") or {}
    if media.get("file") is None:
        for seg in segments:
            _check_bytes(folder / seg["file"], 0, seg, problems, whole=True)
    else:
        _check_one_file(manifest, folder, problems, notes)


def _check_one_file(
    manifest: Mapping[str, Any], folder: Path, problems: list[str], notes: list[str]
) -> None:
    media, segments = manifest["media"], manifest["segments"]
    name = media["file"]
    file = folder / name
    offset = 0
    for seg in segments:
        if seg["file"] != name or seg["offset"] != offset:
            problems.append(f"segment {seg['seq']} is not where the manifest's order puts it")
        _check_bytes(file, seg["offset"], seg, problems, whole=False)
        offset = seg["offset"] + seg["bytes"]
    if media["bytes"] != offset:
        problems.append(f"{name}: manifest says {media['bytes']} bytes, its segments {offset}")
    try:
        size = file.stat().st_size
        digest = _sha256(file, 0, media["bytes"])
    except OSError as exc:
        problems.append(f"{name}: unreadable ({exc.strerror})")
        return
    if digest != media["sha256"]:
        problems.append(f"{name}: SHA-256 does not match the manifest")
    if size > media["bytes"]:
        extra = f"{name}: {size - media['bytes']} bytes after the last listed segment"
        if manifest.get("stopped_at") is None:
            notes.append(f"{extra} (recording live or interrupted)")
        else:
            problems.append(extra)


def _check_bytes(
    file: Path, offset: int, seg: Mapping[str, Any], problems: list[str], *, whole: bool
) -> None:
    """Hash one segment's bytes; ``whole``: the file is that segment and nothing else."""
    try:
        digest = _sha256(file, offset, seg["bytes"])
        size = file.stat().st_size
    except OSError as exc:
        problems.append(f"segment {seg['seq']}: {file.name} unreadable ({exc.strerror})")
        return
    if digest != seg["sha256"]:
        problems.append(f"segment {seg['seq']}: SHA-256 does not match the manifest")
    elif whole and size != seg["bytes"]:
        problems.append(f"segment {seg['seq']}: {file.name} is {size} bytes, not {seg['bytes']}")


def _sha256(file: Path, offset: int, length: int) -> str:
    """SHA-256 of ``length`` bytes at ``offset``; a short file hashes what is there."""
    digest = hashlib.sha256()
    with file.open("rb") as f:
        f.seek(offset)
        for chunk in _chunks(f.read, length):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(read: Callable[[int], bytes], length: int) -> Iterator[bytes]:
    left = length
    while left > 0:
        chunk = read(min(_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk
