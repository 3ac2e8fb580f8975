"""NATS keys and JWTs, as much of them as an auth callout needs.

An nkey is an Ed25519 key written as base32 (no padding) of a one-byte role prefix
(``A`` account, ``N`` server, ``U`` user), the 32-byte key and a CRC-16/XMODEM of
both, little-endian. A seed is the same with two prefix bytes (``S`` and the role).
A NATS JWT is ``base64url(header).base64url(claims).base64url(signature)``, unpadded,
with the header ``{"typ":"JWT","alg":"ed25519-nkey"}`` and an Ed25519 signature over
the first two parts by the key in ``iss`` (nats-io/nkeys ``strkey.go``, nats-io/jwt
``v2/claims.go``, ``header.go``).

Written on :mod:`cryptography` (already a dependency) rather than adding ``nkeys``:
the encoding is 60 lines, and the tests check it against nats-server itself (a
response it cannot decode refuses the login).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = ["KeyPair", "Role", "decode_jwt", "encode_jwt", "public_key_bytes"]

_SEED = 18 << 3
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class Role(IntEnum):
    """The prefix byte of a public nkey."""

    ACCOUNT = 0
    SERVER = 13 << 3
    USER = 20 << 3


def _crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0)  # CRC-16/XMODEM: polynomial 0x1021, initial 0


def _encode(raw: bytes) -> str:
    body = raw + _crc16(raw).to_bytes(2, "little")
    return base64.b32encode(body).decode().rstrip("=")


def _decode(text: str) -> bytes:
    try:
        body = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{text[:8]}…: not an nkey") from exc
    raw, crc = body[:-2], body[-2:]
    if len(raw) < 33 or _crc16(raw).to_bytes(2, "little") != crc:
        raise ValueError(f"{text[:8]}…: not an nkey (checksum)")
    return raw


def public_key_bytes(public: str, role: Role) -> bytes:
    """The 32 key bytes of public nkey ``public``; ValueError unless it is one of ``role``."""
    raw = _decode(public)
    if len(raw) != 33 or raw[0] != role:
        raise ValueError(f"{public[:8]}…: not a {role.name.lower()} nkey")
    return raw[1:]


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An Ed25519 key of one role, from its seed (``S…``)."""

    role: Role
    _key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def create(cls, role: Role) -> KeyPair:
        return cls(role, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        raw = _decode(seed)
        if len(raw) != 34 or raw[0] & 0xF8 != _SEED:
            raise ValueError("not an nkey seed")
        role = Role(((raw[0] & 0x07) << 5) | (raw[1] >> 3))
        return cls(role, Ed25519PrivateKey.from_private_bytes(raw[2:]))

    @property
    def seed(self) -> str:
        key = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return _encode(bytes((_SEED | self.role >> 5, (self.role & 31) << 3)) + key)

    @property
    def public(self) -> str:
        key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return _encode(bytes((self.role,)) + key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(claims: dict[str, Any], issuer: KeyPair) -> str:
    """``claims`` (with ``iss``, ``iat`` and ``jti`` added) signed by ``issuer``."""
    body = {**claims, "iss": issuer.public, "iat": int(time.time())}
    body.pop("jti", None)
    digest = hashlib.sha512(json.dumps(body, separators=(",", ":")).encode()).digest()[:32]
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signed = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def decode_jwt(token: str, issuer_role: Role) -> dict[str, Any]:
    """The claims of ``token`` once its signature verifies with its ``iss``, a key of
    ``issuer_role``; ValueError otherwise (or if it has expired)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (three parts)")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a JWT ({exc})") from exc
    if not isinstance(header, dict) or header.get("alg") != _HEADER["alg"]:
        raise ValueError("not an nkey-signed JWT")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise ValueError("a JWT without an issuer")  # noqa: TRY004 - bad input, not a bug
    key = Ed25519PublicKey.from_public_bytes(public_key_bytes(claims["iss"], issuer_role))
    try:
        key.verify(signature, f"{parts[0]}.{parts[1]}".encode())
    except InvalidSignature:
        raise ValueError("the JWT's signature does not verify") from None
    expires = claims.get("exp")
    if isinstance(expires, int) and expires and expires < time.time():
        raise ValueError("the JWT has expired")
    return claims
