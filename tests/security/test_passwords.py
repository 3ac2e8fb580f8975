"""Passwords: Mosquitto 2's own $7$ format, accepted by the real broker."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker.dynsec import Access, AccessClient
from actimesh.broker.mosquitto import ManagedMosquitto, free_port
from actimesh.broker.mosquitto_conf import MosquittoConfig
from actimesh.security import (
    PBKDF2_ITERATIONS,
    generate_password,
    hash_password,
    password_line,
    verify_password,
)


def test_generated_passwords_are_random_url_safe_and_long() -> None:
    passwords = {generate_password() for _ in range(200)}
    assert len(passwords) == 200
    for password in passwords:
        raw = base64.urlsafe_b64decode(password)
        assert len(raw) * 8 >= 128
        assert all(ch.isalnum() or ch in "-_" for ch in password)


def test_hash_is_mosquitto_pbkdf2_sha512_format() -> None:
    salt = bytes(range(12))
    hashed = hash_password("secret", salt=salt)
    _, scheme, iterations, salt_b64, key_b64 = hashed.split("$")
    assert scheme == "7"
    assert int(iterations) == PBKDF2_ITERATIONS == 101
    assert base64.b64decode(salt_b64) == salt
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101, 64)
    assert base64.b64decode(key_b64) == expected


def test_each_hash_has_its_own_salt() -> None:
    assert hash_password("same") != hash_password("same")


@given(st.text(min_size=1, max_size=40))
def test_verify_accepts_the_password_and_nothing_else(password: str) -> None:
    hashed = hash_password(password, iterations=2)
    assert verify_password(password, hashed)
    assert not verify_password(password + "x", hashed)


@pytest.mark.parametrize("bad", ["", "$6$abc$def", "$7$x$AAAA$AAAA", "$7$2$!!$AAAA", "plain"])
def test_verify_refuses_malformed_hashes(bad: str) -> None:
    assert not verify_password("pw", bad)


@pytest.mark.parametrize("name", ["", "a:b", "a b", "a\nb"])
def test_password_line_refuses_names_that_break_the_file(name: str) -> None:
    with pytest.raises(ValueError, match="password file"):
        password_line(name, hash_password("x"))


def _broker_with(tmp_path: Path, lines: list[str]) -> ManagedMosquitto:
    (tmp_path / "passwd").write_text("".join(line + "\n" for line in lines))
    names = [line.split(":", 1)[0] for line in lines]
    access = Access(tuple(AccessClient(n, None, ()) for n in names), ())
    (tmp_path / "access.json").write_text(access.to_json())
    (tmp_path / "admin").write_text("svc-admin\nx\n")
    return ManagedMosquitto(MosquittoConfig(data_dir=tmp_path, port=free_port()))


async def _connects(broker: ManagedMosquitto, username: str, password: str) -> bool:
    try:
        async with aiomqtt.Client(
            broker.host, broker.port, username=username, password=password, timeout=5
        ):
            return True
    except aiomqtt.MqttCodeError as exc:
        refused = exc
    assert "Not authorized" in str(refused)
    return False


async def test_real_mosquitto_accepts_a_generated_line_and_refuses_a_wrong_password(
    tmp_path: Path,
) -> None:
    password = generate_password()
    async with _broker_with(tmp_path, [password_line("cam-1", hash_password(password))]) as broker:
        assert await _connects(broker, "cam-1", password)
        assert not await _connects(broker, "cam-1", generate_password())
        assert not await _connects(broker, "cam-2", password)
