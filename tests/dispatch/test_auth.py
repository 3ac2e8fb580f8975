"""Logins, roles, tokens and the audit trail of the dispatch, against the real service
(uvicorn on a loopback port, the engine's ledger, Mosquitto)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import sqlite3
import ssl
from pathlib import Path

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from actimesh.audit import verify_ledger
from actimesh.broker.transport import MqttTransport
from actimesh.dispatch.accounts import Role
from actimesh.dispatch.auth import CSRF_HEADER
from actimesh.errors import LedgerError
from tests.dispatch.conftest import (
    FAST,
    add_user,
    api,
    bearer,
    login,
    running_dispatch,
    trail,
)
from tests.integration.harness import CENTER, mesh
from tests.waiting import eventually

pytestmark = pytest.mark.integration

ZONE = {"lat": CENTER[0], "lon": CENTER[1], "radius_m": 20}


async def _read_until_closed(ws: websockets.ClientConnection) -> None:
    async with asyncio.timeout(5):
        while True:
            await ws.recv()


async def test_login_sets_a_strict_httponly_cookie_and_changes_need_the_csrf_token(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as client,
    ):
        password = await add_user(svc, "kim")
        assert (await client.get("/api/v1/session")).json() == {
            "authenticated": False,
            "user": None,
            "role": None,
            "via": None,
            "telemetry": False,
            "csrf_token": None,
            "idle_timeout_s": None,
        }
        r = await client.post("/api/v1/session", json={"username": "KIM ", "password": password})
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        name, _, rest = cookie.partition("=")
        assert name == "actimesh_session"  # plain http: no __Host- prefix, no Secure
        attributes = {a.strip().split("=")[0] for a in rest.split(";")[1:]}
        assert attributes == {"Path", "HttpOnly", "SameSite", "Max-Age"}
        assert "SameSite=Strict" in cookie
        assert r.headers["cache-control"] == "no-store"
        doc = r.json()
        assert (doc["user"], doc["role"], doc["via"], doc["telemetry"]) == (
            "kim",
            "dispatcher",
            "session",
            True,
        )
        csrf = doc["csrf_token"]
        assert (await client.get("/api/v1/session")).json()["csrf_token"] == csrf
        # Reads need only the cookie; a change without the header is refused and audited.
        assert (await client.get("/api/v1/activations")).status_code == 200
        refused = await client.post("/api/v1/zones", json=ZONE)
        assert refused.status_code == 403
        assert CSRF_HEADER in refused.json()["error"]
        wrong = await client.post("/api/v1/zones", json=ZONE, headers={CSRF_HEADER: "0" * 64})
        assert wrong.status_code == 403
        ok = await client.post("/api/v1/zones", json=ZONE, headers={CSRF_HEADER: csrf})
        assert ok.status_code == 202, ok.text
        # Logging out ends the session on the server, not just in this browser.
        cookie_value = client.cookies["actimesh_session"]
        out = await client.delete("/api/v1/session", headers={CSRF_HEADER: csrf})
        assert out.status_code == 204
        assert "Max-Age=0" in out.headers["set-cookie"]
        async with api(svc, None) as thief:
            thief.cookies.set("actimesh_session", cookie_value)
            replay = await thief.get("/api/v1/activations")
        assert replay.status_code == 401
        assert "session has ended" in replay.json()["error"]
    events = [(t, s, o) for t, s, o, _ in trail(tmp_path, "login", "api_change", "logout")]
    assert events == [
        ("login", "kim", "success"),
        ("api_change", "kim", "csrf_rejected"),
        ("api_change", "kim", "csrf_rejected"),
        ("api_change", "kim", "ok"),
        ("logout", "kim", "success"),
    ]
    # The dispatch's records are links of the same chain: it still verifies.
    report = await asyncio.to_thread(verify_ledger, tmp_path / "ledger.sqlite3")
    assert report.ok, report.findings


async def test_wrong_password_unknown_and_disabled_users_get_the_same_answer(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as client,
    ):
        password = await add_user(svc, "kim")
        lee = await add_user(svc, "lee")
        await svc.accounts.set_disabled("lee", True)
        answers = []
        for name, pw in (("kim", "wrong password!"), ("nobody", password), ("lee", lee)):
            r = await client.post("/api/v1/session", json={"username": name, "password": pw})
            answers.append((r.status_code, r.json()["error"], "set-cookie" in r.headers))
        assert set(answers) == {(401, "wrong user name or password", False)}
        text = await client.post(
            "/api/v1/session",
            content=b'{"username":"kim","password":"x"}',
            headers={"content-type": "text/plain"},
        )
        assert text.status_code == 415
    logins = [(s, o, b["reason"]) for _, s, o, b in trail(tmp_path, "login")]
    # What was typed as an unknown name is not kept: people type passwords there.
    assert logins == [
        ("kim", "denied", "wrong password"),
        ("unknown-user", "denied", "unknown user"),
        ("lee", "denied", "disabled"),
    ]


async def test_roles_decide_what_each_token_may_do(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    checks = [
        # (role, method, path, body, expected status)
        ("integrator", "GET", "/api/v1/activations", None, 200),
        ("integrator", "GET", "/metrics", None, 200),
        ("integrator", "GET", "/api/v1/devices", None, 403),  # positions: no grant
        ("integrator", "POST", "/api/v1/zones", ZONE, 403),
        ("integrator", "GET", "/api/v1/webhooks", None, 403),
        ("integrator+telemetry", "GET", "/api/v1/devices", None, 200),
        ("integrator+telemetry", "POST", "/api/v1/zones", ZONE, 403),
        ("dispatcher", "GET", "/api/v1/devices", None, 200),
        ("dispatcher", "POST", "/api/v1/zones", ZONE, 202),
        ("dispatcher", "GET", "/api/v1/webhooks", None, 403),
        ("dispatcher", "GET", "/api/v1/users", None, 403),
        ("admin", "GET", "/api/v1/webhooks", None, 200),
        ("admin", "GET", "/api/v1/users", None, 200),
        ("admin", "GET", "/api/v1/tokens", None, 200),
    ]
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        for role, method, path, body, status in checks:
            async with api(svc, role) as client:
                r = await client.request(method, path, json=body)
            assert r.status_code == status, (role, method, path, r.text)
            if status == 403:
                assert f"({role.partition('+')[0]}) may not do this" in r.json()["error"]
    forbidden = [b for _, s, o, b in trail(tmp_path, "api_change") if o == "forbidden"]
    # Only refused *changes* are audited (reads are not actions).
    assert [(b["method"], b["path"]) for b in forbidden] == [
        ("POST", "/api/v1/zones"),
        ("POST", "/api/v1/zones"),
    ]


async def test_a_token_acting_for_a_dispatcher_is_named_beside_them(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, "dispatcher") as client,
    ):
        r = await client.post(
            "/api/v1/zones", params={"wait": 5}, json=ZONE | {"dispatcher": "Dispatcher Kim"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["activation"]["by"] == "Dispatcher Kim via token:test-dispatcher-plain"
    (zone,) = trail(tmp_path, "api_change")
    assert zone[1:3] == ("token:test-dispatcher-plain", "ok")
    assert zone[3]["via"].startswith("amt_")
    assert zone[3]["aid"] == r.json()["aid"]


async def test_live_views_are_audited_and_end_when_the_credential_does(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, live_recheck_s=0.2) as svc,
    ):
        issued = await svc.accounts.create_token(
            "wall", Role.INTEGRATOR, created_by="tests", telemetry=True
        )
        headers = {"Authorization": f"Bearer {issued.secret}"}
        async with websockets.connect(svc.ws_url, additional_headers=headers) as ws:
            async with asyncio.timeout(5):
                first = json.loads(await ws.recv())
            assert first["type"] == "snapshot"
            await svc.accounts.revoke_token("wall")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await _read_until_closed(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008
        # The stream of a user who is disabled meanwhile ends too.
        password = await add_user(svc, "kim")
        await add_user(svc, "boss", Role.ADMIN)
        async with api(svc, None) as client:
            await login(client, "kim", password)
            async with client.stream("GET", "/api/v1/stream") as r:
                lines = r.aiter_lines()
                assert await anext(lines) == "retry: 2000"
                await svc.accounts.set_disabled("kim", True)
                async with asyncio.timeout(5):
                    rest = [line async for line in lines]
                assert rest == [""]
    views = [(s, b["channel"]) for _, s, _, b in trail(tmp_path, "live_view")]
    assert views == [("token:wall", "live"), ("kim", "stream")]


async def test_admins_manage_users_and_tokens_over_the_api_and_it_is_audited(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, "admin") as admin,
    ):
        r = await admin.post("/api/v1/users", json={"name": "kim", "role": "dispatcher"})
        assert r.status_code == 201, r.text
        password = r.json()["password"]
        assert (
            await admin.post("/api/v1/users", json={"name": "kim", "role": "admin"})
        ).status_code == 409
        assert (
            await admin.post("/api/v1/users", json={"name": "x", "role": "integrator"})
        ).status_code == 422
        async with api(svc, None) as browser:
            await login(browser, "kim", password)
            disabled = await admin.patch("/api/v1/users/kim", json={"disabled": True})
            assert disabled.json()["disabled"] is True
            assert (await browser.get("/api/v1/activations")).status_code == 401
        reset = await admin.patch(
            "/api/v1/users/kim", json={"disabled": False, "reset_password": True}
        )
        new_password = reset.json()["password"]
        assert new_password
        assert new_password != password
        r = await admin.post(
            "/api/v1/tokens", json={"name": "cad", "role": "integrator", "expires_days": 30}
        )
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        assert r.json()["id"] == token[:12]
        async with api(svc, None) as cad:
            cad.headers["Authorization"] = f"Bearer {token}"
            assert (await cad.get("/api/v1/activations")).status_code == 200
            listed = {t["name"]: t for t in (await admin.get("/api/v1/tokens")).json()}
            assert "token" not in listed["cad"]
            assert listed["cad"]["last_used_ts"] is not None
            revoked = await admin.delete(f"/api/v1/tokens/{r.json()['id']}")
            assert revoked.json()["state"] == "revoked"
            assert (await cad.get("/api/v1/activations")).status_code == 401
        assert (await admin.delete("/api/v1/users/kim")).status_code == 204
        assert (await admin.delete("/api/v1/users/kim")).status_code == 404
    changes = [(s, o, b["action"]) for _, s, o, b in trail(tmp_path, "account_change")]
    actor = "token:test-admin-plain"
    assert changes == [
        (actor, "ok", "user.add"),
        (actor, "rejected", "user.add"),
        (actor, "ok", "user.update"),
        (actor, "ok", "user.update"),
        (actor, "ok", "token.create"),
        (actor, "ok", "token.revoke"),
        (actor, "ok", "user.remove"),
        (actor, "rejected", "user.remove"),
    ]
    body = trail(tmp_path, "account_change")[4][3]
    assert body["token"] == token[:12]
    assert token not in json.dumps(trail(tmp_path, "account_change"))


@pytest.mark.logs_exception(LedgerError, reason="the audit ledger is made unwritable on purpose")
async def test_a_login_that_cannot_be_audited_is_refused(
    agency: str, broker_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as client,
    ):
        password = await add_user(svc, "kim")

        async def broken(*args: object, **kwargs: object) -> int:
            raise LedgerError("cannot write: disk I/O error")

        monkeypatch.setattr(svc.audit._ledger, "record_event", broken)
        r = await client.post("/api/v1/session", json={"username": "kim", "password": password})
        assert r.status_code == 503
        assert "audit ledger" in r.json()["error"]
        assert "set-cookie" not in r.headers
        assert await svc.accounts.count_users() == 1
    # The session made before the audit failed was ended again: none is left.
    with sqlite3.connect(tmp_path / "dispatch-accounts.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)


@pytest.mark.logs_exception(LedgerError, reason="the audit ledger is made unwritable on purpose")
async def test_a_live_view_that_cannot_be_audited_is_refused_and_health_says_why(
    agency: str, broker_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc) as client,
    ):

        async def broken(*args: object, **kwargs: object) -> int:
            raise LedgerError("cannot write: disk I/O error")

        monkeypatch.setattr(svc.audit._ledger, "record_event", broken)
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(svc.ws_url, additional_headers=bearer(svc), open_timeout=5)
        assert refused.value.response.status_code == 503
        # A change already made stays made; the failure is counted and reported.
        r = await client.post("/api/v1/webhooks", json={"url": "https://example.org/hook"})
        assert r.status_code == 201
        health = await client.get("/api/v1/health")
        assert health.status_code == 503
        assert any("audit ledger" in reason for reason in health.json()["reasons"])
        metrics = (await client.get("/metrics")).text
        assert "actimesh_dispatch_audit_failures_total 2.0" in metrics


def _self_signed(root: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = root / "server.pem", root / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_over_https_the_cookie_is_secure_host_only_and_hsts_is_sent(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, tls_certfile=cert, tls_keyfile=key) as svc,
    ):
        assert svc.url.startswith("https://127.0.0.1:")
        password = await add_user(svc, "kim")
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=svc.url, verify=context, trust_env=False) as client:
            r = await client.post("/api/v1/session", json={"username": "kim", "password": password})
            assert r.status_code == 200, r.text
            cookie = r.headers["set-cookie"]
            assert cookie.startswith("__Host-actimesh_session=")
            assert "; Secure" in cookie
            assert r.headers["strict-transport-security"] == "max-age=31536000"
            page = await client.get("/")
            assert page.headers["strict-transport-security"] == "max-age=31536000"
            who = await client.get("/api/v1/session")
            assert who.json()["user"] == "kim"


async def test_dispatch_records_survive_a_verify_after_many_kinds_of_action(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        password = await add_user(svc, "kim")
        async with api(svc, None) as client:
            for _ in range(3):
                await client.post("/api/v1/session", json={"username": "kim", "password": "x"})
            await login(client, "kim", password)
            await client.post("/api/v1/zones", json=ZONE)
        async with api(svc) as admin:
            await admin.post("/api/v1/webhooks", json={"url": "https://example.org/h?key=s3cret"})
        await eventually(lambda: svc.audit.stats.written >= 6)
    report = await asyncio.to_thread(verify_ledger, tmp_path / "ledger.sqlite3")
    assert report.ok, report.findings
    # A receiver URL's query (which may hold its own secret) is not copied into the chain.
    add = next(b for _, _, _, b in trail(tmp_path, "api_change") if b["action"] == "webhook.add")
    assert add["url"] == "https://example.org/h"


async def test_missing_tls_files_are_a_one_line_config_error(tmp_path: Path) -> None:
    from actimesh.broker.topics import Topics  # noqa: PLC0415
    from actimesh.dispatch.service import DispatchService  # noqa: PLC0415
    from actimesh.errors import ConfigError  # noqa: PLC0415

    svc = DispatchService(
        topics=Topics("tls"),
        transport=MqttTransport("127.0.0.1", 1),
        data_dir=tmp_path,
        settings=FAST.__class__(
            port=0, tls_certfile=tmp_path / "no.pem", tls_keyfile=tmp_path / "no.key"
        ),
        ledger_location=tmp_path / "ledger.sqlite3",
        max_fix_age_s=10.0,
    )
    with pytest.raises(ConfigError) as info:
        await svc.run()
    assert "dispatch.tls_certfile" in str(info.value)
    assert "does not exist" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.logs_exception(LedgerError, reason="the accounts database is corrupted on purpose")
async def test_unreadable_accounts_fail_closed_with_a_one_line_503(
    agency: str, broker_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc) as client,
    ):

        async def broken(*args: object, **kwargs: object) -> None:
            raise LedgerError("dispatch accounts: database disk image is malformed")

        monkeypatch.setattr(svc.accounts, "resolve_token", broken)
        r = await client.get("/api/v1/activations")
        assert r.status_code == 503
        assert r.json()["error"].startswith("cannot check credentials now: dispatch accounts")
        assert r.headers["x-content-type-options"] == "nosniff"
