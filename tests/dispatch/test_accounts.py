"""Dispatch users, tokens and sessions on a real SQLite file; passwords with real scrypt."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from actimesh.dispatch.accounts import (
    ACCOUNTS_FILE,
    TOKEN_PREFIX,
    AccountStore,
    Role,
    hash_password,
    verify_password,
)
from actimesh.errors import AccountError
from actimesh.security.limiter import LoginLimiter

PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store(tmp_path: Path, clock: Clock | None = None, **kw: float) -> AccountStore:
    return AccountStore(tmp_path / ACCOUNTS_FILE, clock=clock or Clock(), **kw)


def test_password_hash_is_salted_scrypt_with_its_parameters_and_checks_in_constant_time() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second  # salted
    scheme, n, r, p, _salt, _key = first.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**15), "8", "3")
    assert verify_password(PASSWORD, first)
    assert not verify_password(PASSWORD + " ", first)
    assert not verify_password("", first)
    # The same password typed composed or decomposed (NFKC) is the same password.
    accented = hash_password("caf\u00e9 au lait, s'il vous pla\u00eet")
    assert verify_password("cafe\u0301 au lait, s'il vous plai\u0302t", accented)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "bcrypt$1$2$3$AAAA$AAAA",
        f"scrypt${2**30}$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",  # absurd cost: refused, not run
        "scrypt$16384$8$1$not-base64!$AAAA",
    ],
)
def test_malformed_or_tampered_hashes_never_match(encoded: str) -> None:
    assert not verify_password(PASSWORD, encoded)


async def test_users_are_added_listed_disabled_and_removed(tmp_path: Path) -> None:
    async with store(tmp_path) as s:
        admin, generated = await s.add_user("admin", Role.ADMIN)
        assert generated is not None
        assert len(generated) >= 20
        _, given = await s.add_user("kim", Role.DISPATCHER, PASSWORD)
        assert given is None
        assert [u.name for u in await s.users()] == ["admin", "kim"]
        found = await s.password_hash("kim")
        assert found is not None
        assert verify_password(PASSWORD, found[1])
        assert (await s.set_disabled("kim", True)).disabled
        assert not (await s.set_disabled("kim", False)).disabled
        assert (await s.remove_user("kim")).name == "kim"
        assert await s.user("kim") is None
        assert admin.role is Role.ADMIN


@pytest.mark.parametrize(
    ("name", "role", "password", "says"),
    [
        ("Kim", Role.DISPATCHER, None, "must be 1 to 64 lowercase letters"),
        ("kim smith", Role.DISPATCHER, None, "must be 1 to 64 lowercase letters"),
        ("-kim", Role.DISPATCHER, None, "starting with a letter or digit"),
        ("k" * 65, Role.DISPATCHER, None, "must be 1 to 64"),
        ("kim", Role.INTEGRATOR, None, "integrators use API tokens"),
        ("kim", Role.DISPATCHER, "short", "at least 12 characters"),
        ("kim", Role.DISPATCHER, "twelve chars\x00!", "printable"),
    ],
)
async def test_bad_users_are_refused_with_one_line(
    tmp_path: Path, name: str, role: Role, password: str | None, says: str
) -> None:
    async with store(tmp_path) as s:
        with pytest.raises(AccountError) as info:
            await s.add_user(name, role, password)
    assert says in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.reason == "invalid"


async def test_duplicates_unknown_names_and_the_last_admin(tmp_path: Path) -> None:
    async with store(tmp_path) as s:
        await s.add_user("admin", Role.ADMIN)
        with pytest.raises(AccountError, match="already exists") as dup:
            await s.add_user("admin", Role.DISPATCHER)
        assert dup.value.reason == "exists"
        with pytest.raises(AccountError, match="no user 'ghost'") as unknown:
            await s.set_disabled("ghost", True)
        assert unknown.value.reason == "unknown"
        # Nobody could administer the accounts any more: refused.
        with pytest.raises(AccountError, match="only enabled admin") as last:
            await s.set_disabled("admin", True)
        assert last.value.reason == "last_admin"
        with pytest.raises(AccountError, match="only enabled admin"):
            await s.remove_user("admin")
        await s.add_user("second", Role.ADMIN)
        await s.remove_user("admin")


async def test_the_file_is_private_and_holds_no_secret_in_clear(tmp_path: Path) -> None:
    async with store(tmp_path) as s:
        _, password = await s.add_user("admin", Role.ADMIN)
        issued = await s.create_token("cad", Role.INTEGRATOR, created_by="tests")
        session_id, _ = await s.create_session((await s.users())[0], client="127.0.0.1")
    path = tmp_path / ACCOUNTS_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    raw = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.is_file())  # noqa: ASYNC240
    assert password is not None
    for secret in (password, issued.secret, session_id, issued.secret[len(TOKEN_PREFIX) + 8 :]):
        assert secret.encode() not in raw


async def test_tokens_resolve_until_revoked_or_expired(tmp_path: Path) -> None:
    clock = Clock()
    async with store(tmp_path, clock) as s:
        cad = await s.create_token("cad", Role.INTEGRATOR, created_by="os:root", telemetry=True)
        short = await s.create_token("temp", Role.DISPATCHER, created_by="x", expires_s=3600)
        assert cad.secret.startswith(TOKEN_PREFIX)
        assert len(cad.secret) >= len(TOKEN_PREFIX) + 43  # 256 bits, base64
        assert cad.token.id == cad.secret[: len(TOKEN_PREFIX) + 8]
        found = await s.resolve_token(cad.secret)
        assert found is not None
        assert (found.name, found.role, found.telemetry) == ("cad", Role.INTEGRATOR, True)
        assert await s.resolve_token(cad.secret + "x") is None
        assert await s.resolve_token(short.secret) is not None
        with pytest.raises(AccountError, match="already named 'cad'"):
            await s.create_token("cad", Role.INTEGRATOR, created_by="x")
        clock.now += 3601
        assert await s.resolve_token(short.secret) is None  # expired
        revoked = await s.revoke_token("cad")  # by name
        assert revoked.state(clock.now) == "revoked"
        assert await s.resolve_token(cad.secret) is None
        # The name is free again; the old token stays revoked and listed.
        again = await s.create_token("cad", Role.INTEGRATOR, created_by="x")
        assert await s.resolve_token(again.secret) is not None
        await s.revoke_token(again.token.id)  # by id
        states = sorted(t.state(clock.now) for t in await s.tokens())
        assert states == ["expired", "revoked", "revoked"]
        with pytest.raises(AccountError, match="no token 'nope'"):
            await s.revoke_token("nope")


async def test_sessions_end_when_idle_too_long_past_the_maximum_or_the_user_changes(
    tmp_path: Path,
) -> None:
    clock = Clock()
    async with store(tmp_path, clock, session_idle_s=600, session_max_s=3600) as s:
        kim, _ = await s.add_user("kim", Role.DISPATCHER, PASSWORD)
        await s.add_user("admin", Role.ADMIN, PASSWORD)
        idle, _ = await s.create_session(kim, client="10.0.0.1")
        clock.now += 601
        assert await s.resolve_session(idle) is None

        busy, _ = await s.create_session(kim, client="10.0.0.1")
        for _ in range(6):  # used every 9 minutes: alive until the absolute limit
            clock.now += 540
            assert await s.resolve_session(busy) is not None
        clock.now += 540
        assert await s.resolve_session(busy) is None  # 63 min > 1 h

        first, _ = await s.create_session(kim, client="10.0.0.1")
        # A new login from the same browser replaces its old session (no fixation).
        second, _ = await s.create_session(kim, client="10.0.0.1", replaces=first)
        assert await s.resolve_session(first) is None
        assert await s.resolve_session(second) is not None
        await s.set_password("kim", PASSWORD + "!")
        assert await s.resolve_session(second) is None  # a new password logs out

        third, _ = await s.create_session(kim, client="10.0.0.1")
        await s.set_disabled("kim", True)
        assert await s.resolve_session(third) is None
        await s.set_disabled("kim", False)
        fourth, _ = await s.create_session(kim, client="10.0.0.1")
        assert await s.end_session(fourth)
        assert not await s.end_session(fourth)
        assert await s.resolve_session(fourth) is None


async def test_two_stores_on_one_file_see_each_others_changes(tmp_path: Path) -> None:
    """The CLI and the running service share the file: a revoke applies at once."""
    async with store(tmp_path) as service, store(tmp_path) as cli:
        issued = await cli.create_token("cad", Role.INTEGRATOR, created_by="os:root")
        assert await service.resolve_token(issued.secret) is not None
        await cli.revoke_token("cad")
        assert await service.resolve_token(issued.secret) is None


def test_login_limiter_locks_a_name_from_one_address_only() -> None:
    """A stranger failing on purpose locks a dispatcher's name out of the stranger's own
    address, never out of the dispatcher's."""
    clock = Clock(0.0)
    limiter = LoginLimiter(per_user=3, per_client=5, window_s=60.0, clock=clock)
    for _ in range(3):
        assert limiter.blocked_for("kim", "10.0.0.66") == 0
        limiter.begin("kim", "10.0.0.66")
        clock.now += 1
    assert limiter.blocked_for("kim", "10.0.0.66") == pytest.approx(59.0)  # from the 3rd
    assert limiter.blocked_for("kim", "10.0.0.1") == 0  # kim's own desk
    assert limiter.blocked_for("lee", "10.0.0.66") == 0  # another name (not yet)
    assert limiter.first_refusal("kim", "10.0.0.66", 59.0)
    assert not limiter.first_refusal("kim", "10.0.0.66", 59.0)  # one audit record per lock
    for name in ("lee", "ann"):
        limiter.begin(name, "10.0.0.66")
    assert limiter.blocked_for("bob", "10.0.0.66") > 0  # the address is spent
    assert limiter.blocked_for("bob", "10.0.0.1") == 0


def test_login_lockouts_in_a_row_grow_and_a_success_ends_the_streak() -> None:
    clock = Clock(0.0)
    limiter = LoginLimiter(per_user=2, per_client=1000, window_s=60.0, clock=clock)
    holds = []
    for _ in range(4):
        limiter.begin("kim", "10.0.0.66")
        limiter.begin("kim", "10.0.0.66")
        holds.append(limiter.blocked_for("kim", "10.0.0.66"))
        clock.now += holds[-1]
        assert limiter.blocked_for("kim", "10.0.0.66") == 0
    assert holds == [60.0, 120.0, 240.0, 480.0]
    started = limiter.begin("kim", "10.0.0.66")
    limiter.succeeded("kim", "10.0.0.66", started)
    limiter.begin("kim", "10.0.0.66")
    limiter.begin("kim", "10.0.0.66")
    assert limiter.blocked_for("kim", "10.0.0.66") == 60.0  # back to the first step


def test_a_parallel_burst_of_guesses_is_limited_too() -> None:
    limiter = LoginLimiter(per_user=3, per_client=100, window_s=60.0, clock=Clock(0.0))
    for _ in range(3):  # three attempts still in flight count as failures
        assert limiter.blocked_for("kim", "10.0.0.66") == 0
        limiter.begin("kim", "10.0.0.66")
    assert limiter.blocked_for("kim", "10.0.0.66") > 0


def test_login_limiter_memory_is_bounded() -> None:
    limiter = LoginLimiter(per_user=1, per_client=1, window_s=60.0, clock=Clock(0.0), max_keys=10)
    for n in range(1000):
        limiter.begin(f"user{n}", f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._pairs) == 10
    assert len(limiter._locks) == 10
    assert len(limiter._clients) == 10
