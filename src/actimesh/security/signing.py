"""Signed activation commands: the engine signs, every camera verifies.

The broker's ACL keeps strangers off a camera's command topic, but a camera must not
depend on it: a wrong ACL, a leaked service password or a compromised broker would
otherwise let anyone start every camera in a city (public tools already do this to
Bluetooth-triggered cameras). So the engine signs every :class:`Command` with an
Ed25519 key, and a camera records only what verifies with the engine's public key.

**What is signed.** The canonical msgpack array::

    [b"actimesh-cmd-v1", agency, target device id, v, aid, eid, src, type, ets, pre,
     reason, dist, ts, exp]

that is, a domain tag, the agency and the camera the command is for (neither is in the
payload: both are in the topic), then every other :class:`Command` field in declared
order. The tag keeps these signatures from ever being valid for anything else the key
might sign; binding the agency and the camera means a command captured for one camera is
worthless on another camera's topic or in another agency. Both sides build the array
from the validated model's values (``dist`` absent is nil, every number but ``v`` a
float 64), so the bytes do not depend on how the map on the wire happened to be encoded.
docs/DISPATCH.md ("Command signatures, byte for byte") specifies every byte for device
makers, with a test vector that tests/security/test_signing_spec.py checks against this
module.

**What a camera refuses** (an ``Ack`` with status ``refused`` and ``detail`` starting
with the reason code): ``unsigned`` (no ``sig``), ``malformed``/``invalid``/
``bad_version``/``oversized`` (not a valid command), ``bad_signature`` (forged, signed by
another key, or addressed to another camera or agency), ``expired`` (``exp`` passed,
beyond a small clock-skew allowance) and ``no_engine_key`` (the camera was never given
the engine's public key: it fails closed). A valid command seen again (same activation id)
is a duplicate: answered as before, never a second recording.

**Cost** (measured on the 2-core development machine, cryptography 50, idle): one
Ed25519 signature takes about 21 µs and one verification about 67 µs. Building, signing
and encoding a command takes about 27 µs, against about 6 µs unsigned, so a trigger near
a cluster of ten cameras spends about 0.25 ms more before its commands leave, next to a
trigger-to-command latency of about 3 ms (under load, with the two cores busy, about
twice that). The command is validated once and encoded once: the signer builds the model,
signs the array made from its values (packing it takes about 1 µs) and adds the
signature with a copy, without validating again. Signing the payload bytes themselves
would save only that 1 µs and would make the signature depend on one encoder's map
layout; the signature is what costs, and each camera needs its own because each command
is bound to its camera.

**Keys.** The engine's key is ``{data_dir}/keys/engine-signing.pem`` (PKCS8 PEM, mode
0600, created on first start) and its public half ``engine-signing.pub`` (64 hex
characters) is what devices are provisioned with. Replicas sharing a data directory
share the key. A device trusts every key listed in its copy of that file, one a line, so
the engine's key can be rotated without a gap (docs/OPERATIONS.md). Drills and tests
with throwaway data directories use :meth:`CommandSigner.generate`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Final

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from actimesh.broker.messages import ActivationReason, Command, SlowDown
from actimesh.errors import ConfigError, PayloadError

__all__ = [
    "COMMAND_SIGNATURE_DOMAIN",
    "ENGINE_PRIVATE_KEY",
    "ENGINE_PUBLIC_KEY",
    "KEYS_DIR",
    "SLOWDOWN_SIGNATURE_DOMAIN",
    "UNVERIFIED_REFUSALS",
    "CommandSigner",
    "CommandVerifier",
    "command_signing_bytes",
    "engine_key_paths",
    "load_engine_public_key",
    "load_engine_public_keys",
    "load_or_create_engine_key",
    "public_key_hex",
    "refusal_code",
    "slowdown_signing_bytes",
]

#: The domain tag at the start of every signed command.
COMMAND_SIGNATURE_DOMAIN: Final = b"actimesh-cmd-v1"
#: The domain tag at the start of every signed slow-down (messages.SlowDown): a
#: signature over a command can never pass for one over a slow-down, nor the reverse.
SLOWDOWN_SIGNATURE_DOMAIN: Final = b"actimesh-slow-v1"
#: Where the engine's keys live under the data directory.
KEYS_DIR: Final = "keys"
ENGINE_PRIVATE_KEY: Final = "engine-signing.pem"
ENGINE_PUBLIC_KEY: Final = "engine-signing.pub"

#: Refusal codes that mean "this camera could not tell that the command came from the
#: engine". The engine does not treat them as the camera's final answer to a command it
#: really sent: anyone who can publish on a camera's command topic can provoke them,
#: and the genuine command (re-sent until answered) still verifies.
UNVERIFIED_REFUSALS: Final = frozenset(
    {
        "unsigned",
        "bad_signature",
        "malformed",
        "invalid",
        "bad_version",
        "oversized",
        "no_engine_key",
    }
)

#: Every field but ``sig``, in declared order: what the signature covers.
_SIGNED_FIELDS: Final = tuple(name for name in Command.model_fields if name != "sig")
#: Stands in for the signature while the signed bytes are computed.
_PLACEHOLDER: Final = bytes(64)


def command_signing_bytes(agency: str, device_id: str, command: Command) -> bytes:
    """The bytes an engine signs for ``command`` to camera ``device_id`` of ``agency``."""
    values: list[Any] = [COMMAND_SIGNATURE_DOMAIN, agency, device_id]
    for name in _SIGNED_FIELDS:
        value = getattr(command, name)
        values.append(value.value if isinstance(value, Enum) else value)
    packed: bytes = msgpack.packb(values, use_bin_type=True)
    return packed


def slowdown_signing_bytes(agency: str, message: SlowDown) -> bytes:
    """The bytes an engine signs for a slow-down to the devices of ``agency``: bound to
    the agency (not in the payload: in the topic), as a command is to its camera."""
    hb = None if message.hb is None else float(message.hb)
    values = [
        SLOWDOWN_SIGNATURE_DOMAIN,
        agency,
        message.v,
        message.seq,
        float(message.ts),
        float(message.exp),
        hb,
    ]
    packed: bytes = msgpack.packb(values, use_bin_type=True)
    return packed


def refusal_code(detail: str | None) -> str | None:
    """The reason code at the start of a camera's refusal detail (``code: text``)."""
    if not detail:
        return None
    return detail.split(":", 1)[0].strip() or None


def public_key_hex(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key as 64 lowercase hex characters (the ``.pub`` file)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


class CommandSigner:
    """The engine side: builds signed commands with one Ed25519 private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()

    @classmethod
    def generate(cls) -> CommandSigner:
        """A signer with a fresh key that lives only in memory (drills and tests)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> CommandSigner:
        """The engine key of ``data_dir``, created on first use."""
        return cls(load_or_create_engine_key(data_dir))

    @property
    def public_hex(self) -> str:
        return public_key_hex(self.public_key)

    def verifier(self, *, max_skew_s: float = 5.0) -> CommandVerifier:
        """A verifier for this signer's commands (what its devices are given)."""
        return CommandVerifier(self.public_key, max_skew_s=max_skew_s)

    def command(
        self,
        *,
        agency: str,
        device_id: str,
        aid: str,
        eid: str,
        src: str,
        type: str,  # the wire field's name
        ets: float,
        pre: float,
        reason: ActivationReason,
        dist: float | None,
        ts: float,
        exp: float,
    ) -> Command:
        """A command to camera ``device_id``, validated and signed."""
        unsigned = Command(
            aid=aid,
            eid=eid,
            src=src,
            type=type,
            ets=ets,
            pre=pre,
            reason=reason,
            dist=dist,
            ts=ts,
            exp=exp,
            sig=_PLACEHOLDER,
        )
        signature = self._key.sign(command_signing_bytes(agency, device_id, unsigned))
        return unsigned.model_copy(update={"sig": signature})

    def slowdown(
        self, *, agency: str, seq: int, ts: float, exp: float, hb: float | None
    ) -> SlowDown:
        """A slow-down to every device of ``agency`` (``hb`` None: cleared), signed."""
        unsigned = SlowDown(seq=seq, ts=ts, exp=exp, hb=hb, sig=_PLACEHOLDER)
        signature = self._key.sign(slowdown_signing_bytes(agency, unsigned))
        return unsigned.model_copy(update={"sig": signature})


class CommandVerifier:
    """The device side: checks commands against the engine's public key.

    ``also_trusted`` are further engine keys accepted while a key is being rotated (see
    docs/OPERATIONS.md): the new key is added to the devices first, the engine switches,
    then the old key is dropped. ``max_skew_s`` is how far past its ``exp`` a command is
    still accepted: the engine's and the camera's clocks are never exactly equal.
    """

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        *,
        also_trusted: Sequence[Ed25519PublicKey] = (),
        max_skew_s: float = 5.0,
    ) -> None:
        if not max_skew_s >= 0:
            raise ValueError(f"max_skew_s must be >= 0, got {max_skew_s!r}")
        self.public_key = public_key
        self.keys = (public_key, *also_trusted)
        self.max_skew_s = max_skew_s

    @classmethod
    def from_hex(cls, text: str, *, max_skew_s: float = 5.0) -> CommandVerifier:
        """A verifier for the public key given as 64 hex characters."""
        return cls(_parse_public_hex(text, "engine public key"), max_skew_s=max_skew_s)

    @classmethod
    def from_file(cls, path: Path, *, max_skew_s: float = 5.0) -> CommandVerifier:
        """A verifier for the public keys in ``path``: an ``engine-signing.pub`` file,
        one key per line (two while a key is being rotated)."""
        first, *others = load_engine_public_keys(path)
        return cls(first, also_trusted=others, max_skew_s=max_skew_s)

    def verify(self, command: Command, *, agency: str, device_id: str, now: float) -> None:
        """Raise :class:`PayloadError` unless ``command`` is the engine's, for this camera
        of this agency, and not expired at ``now``."""
        if not self._signed(command, command_signing_bytes(agency, device_id, command)):
            raise PayloadError(
                "bad_signature",
                "not signed by this agency's engine for this camera (forged, another key, "
                "or meant for another camera or agency)",
            )
        late = now - command.exp
        if late > self.max_skew_s:
            raise PayloadError("expired", f"command expired {late:.1f} s before it arrived")

    def verify_slowdown(self, message: SlowDown, *, agency: str, now: float) -> None:
        """Raise :class:`PayloadError` unless ``message`` is this agency's engine's and
        still holds at ``now`` (ordering against earlier ones is the device's to check:
        :mod:`actimesh.devices.slowdown`)."""
        if not self._signed(message, slowdown_signing_bytes(agency, message)):
            raise PayloadError(
                "bad_signature",
                "slow-down not signed by this agency's engine (forged, another key, or "
                "meant for another agency)",
            )
        late = now - message.exp
        if late > self.max_skew_s:
            raise PayloadError("expired", f"slow-down expired {late:.1f} s ago")

    def _signed(self, command: Command | SlowDown, message: bytes) -> bool:
        for key in self.keys:
            try:
                key.verify(command.sig, message)
            except InvalidSignature:
                continue
            return True
        return False


# ---------------------------------------------------------------------- key files
def engine_key_paths(data_dir: Path) -> tuple[Path, Path]:
    """``(private, public)`` key file paths of the engine of ``data_dir``."""
    keys = data_dir / KEYS_DIR
    return keys / ENGINE_PRIVATE_KEY, keys / ENGINE_PUBLIC_KEY


def load_or_create_engine_key(data_dir: Path) -> Ed25519PrivateKey:
    """The engine's signing key, created (0600, folder 0700) if there is none yet.

    Replicas starting together on one data directory end up with the same key: the key
    file is created atomically and whoever loses the race loads the winner's. The
    ``.pub`` file is (re)written from the private key whenever it is missing or differs,
    so after a rotation it always names the key in use.
    """
    private, public = engine_key_paths(data_dir)
    try:
        private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not private.exists():
            _create_private_key(private)
        key = _read_private_key(private)
        text = public_key_hex(key.public_key()) + "\n"
        current = public.read_text(encoding="ascii") if public.exists() else None
        if current != text:
            _write_atomic(public, text.encode("ascii"), mode=0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the engine signing key in {private.parent}: "
            f"{exc.strerror or exc}; check the data directory's permissions"
        ) from exc
    return key


def load_engine_public_key(path: Path) -> Ed25519PublicKey:
    """The (first) engine public key in ``path``, an ``engine-signing.pub`` file."""
    return load_engine_public_keys(path)[0]


def load_engine_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """Every engine public key in ``path``: 64 hex characters a line, blank lines and
    ``#`` comments ignored."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(
            f"no engine public key at {path}: copy keys/engine-signing.pub from the "
            "engine's data directory there, or give its path (sim: --engine-key FILE)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the engine public key {path}: {exc}") from exc
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    keys = [_parse_public_hex(line, f"engine public key {path}") for line in lines if line]
    if not keys:
        raise ConfigError(f"{path} holds no engine public key; copy engine-signing.pub again")
    return keys


def _parse_public_hex(text: str, what: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(
            f"{what} is not 64 hex characters of an Ed25519 public key; copy it again "
            "from the engine's keys/engine-signing.pub"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"engine signing key {path} is readable by others (mode {mode:04o}): "
            f"run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"engine signing key {path} is not an unencrypted PKCS8 PEM key ({exc}); "
            "restore it from a backup, or move it away to create a new one"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"engine signing key {path} is not an Ed25519 key; move it away to create one"
        )
    return key


def _create_private_key(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = _write_temp(path, pem, mode=0o600)
    try:
        # link() fails if the name exists: of two replicas starting at once, one key wins.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    tmp = _write_temp(path, data, mode=mode)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_temp(path: Path, data: bytes, *, mode: int) -> Path:
    """``data`` in a new synced file beside ``path``, with ``mode`` from the start."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)
