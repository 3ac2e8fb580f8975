"""MQTT account passwords: generated here, stored only as Mosquitto 2 password-file hashes.

Mosquitto 2 reads ``username:$7$ITERATIONS$SALT$HASH`` lines: PBKDF2-HMAC-SHA512 over
the password with a 12-byte random salt, 64-byte key, both in standard base64 with
padding (what ``mosquitto_passwd`` writes). The lines are produced here with
:mod:`hashlib` rather than by running ``mosquitto_passwd -b USER PASSWORD``, which would
put every password on a command line that any local user can read in ``ps``.

**Iterations: 101**, ``mosquitto_passwd``'s own default, on purpose. A work factor only
slows down guessing of a *weak* password from a stolen hash; every password here is 144
random bits from :mod:`secrets`, which no work factor makes easier or harder to guess.
What the work factor does cost is broker CPU on Mosquitto's single thread: every
CONNECT, and every reload (``SIGHUP`` re-checks the password of *every* connected client,
which is how a removed device gets disconnected), runs PBKDF2 once per client. Measured
here, one verification is about 44 µs at 101 iterations and 0.4 ms at 1,000: a reload
with 10,000 connected devices stalls the broker for ~0.4 s at 101 iterations but ~4 s at
1,000, and a fleet reconnecting after a broker restart pays the same again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

__all__ = [
    "PASSWORD_BYTES",
    "PBKDF2_ITERATIONS",
    "generate_password",
    "hash_password",
    "password_line",
    "verify_password",
]

#: Random bytes per password: 144 bits, above the 128 the design asks for, and a
#: multiple of 3 so the URL-safe base64 text (24 characters) has no padding.
PASSWORD_BYTES = 18
#: See the module docstring for why this is low and why that is safe here.
PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12
_KEY_BYTES = 64


def generate_password() -> str:
    """A new random password: 144 bits, URL-safe base64 (no ``:``, ``$`` or spaces)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(
    password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None
) -> str:
    """The ``$7$…`` hash Mosquitto 2 verifies ``password`` against."""
    if iterations < 1:
        raise ValueError("PBKDF2 needs at least one iteration")
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _KEY_BYTES)
    return (
        f"$7${iterations}${base64.b64encode(salt).decode('ascii')}"
        f"${base64.b64encode(key).decode('ascii')}"
    )


def verify_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash (constant-time comparison)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(expected))
    return hmac.compare_digest(key, expected)


def password_line(username: str, hashed: str) -> str:
    """One line of a Mosquitto password file (without the newline)."""
    if not username or any(ch in username for ch in ":\r\n\0 "):
        raise ValueError(f"username {username!r} cannot go in a Mosquitto password file")
    if not hashed.startswith("$7$"):
        raise ValueError("only $7$ (PBKDF2-SHA512) hashes go in the password file")
    return f"{username}:{hashed}"
