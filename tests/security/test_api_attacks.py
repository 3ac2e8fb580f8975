"""Attacks on the dispatch web app, against the real server (uvicorn on a loopback port
beside a real engine, ledger and Mosquitto).

Every route is probed without credentials, enumerated from the app itself so that a route
added later is covered without anyone remembering to add it here; the few public ones
are an explicit list, so widening it is a visible change to this file.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from starlette.routing import Mount

from actimesh.dispatch.accounts import Role
from actimesh.dispatch.auth import CSRF_HEADER, PUBLIC_PREFIXES, PUBLIC_ROUTES
from tests.dispatch.conftest import (
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
EVIL = "https://evil.example"
#: The routes anyone may call. Adding one here is a security decision: say why in review.
EXPECTED_PUBLIC = {
    ("GET", "/"),  # the page (static; it asks for a login)
    ("GET", "/api/v1/health"),  # load balancers; details only for the authenticated
    ("GET", "/openapi.json"),  # the API's description, no data
    ("POST", "/api/v1/session"),  # the login itself
    ("GET", "/api/v1/session"),  # "am I logged in?": the page asks before showing a form
}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x-probe", path)


def _refused(exc: websockets.InvalidStatus) -> int:
    return exc.response.status_code


async def _ws_status(url: str, **kwargs: Any) -> int:
    """The HTTP status a WebSocket handshake got (101 if it was accepted)."""
    try:
        async with websockets.connect(url, open_timeout=5, **kwargs):
            return 101
    except websockets.InvalidStatus as exc:
        return _refused(exc)


def _records(root: Path, event_type: str) -> list[tuple[str, str]]:
    return [(subject, outcome) for _, subject, outcome, _ in trail(root, event_type)]


async def test_every_route_refuses_callers_without_credentials(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    assert set(PUBLIC_ROUTES) == EXPECTED_PUBLIC
    assert PUBLIC_PREFIXES == (
        "/static/",
        "/vendor/leaflet/",
        "/vendor/markercluster/",
        "/vendor/protomaps-leaflet/",
        "/vendor/pmtiles/",
    )
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as anonymous,
    ):
        probed = 0
        for context in iter_route_contexts(svc.app.routes):
            route = context.original_route
            if isinstance(route, Mount):
                assert f"{route.path}/" in PUBLIC_PREFIXES
                continue
            template: str = getattr(route, "path", "")
            path = _concrete(template)
            if isinstance(route, APIWebSocketRoute):
                status = await _ws_status(svc.url.replace("http", "ws", 1) + path)
                assert status == 401, template
                probed += 1
                continue
            methods: set[str] = getattr(route, "methods", None) or {"GET"}
            for method in methods - {"HEAD"}:
                r = await anonymous.request(method, path, json={})
                if (method, template) in EXPECTED_PUBLIC:
                    assert r.status_code != 401, (method, template)
                    continue
                assert r.status_code == 401, (method, template, r.text)
                assert r.headers["www-authenticate"] == 'Bearer realm="actimesh"'
                probed += 1
        assert probed >= 20
        # A path that matches no route: 401 too, so probing does not map the API.
        assert (await anonymous.get("/api/v1/secret-admin")).status_code == 401
        # A bad Authorization header is not taken for none: 401, not a public fallback.
        basic = await anonymous.get("/api/v1/activations", headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 401
        assert "Bearer" in basic.json()["error"]


async def test_wrong_passwords_are_refused_audited_then_rate_limited(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as attacker,
    ):
        password = await add_user(svc, "kim")
        limit = svc.settings.login_max_failures
        for n in range(limit):
            r = await attacker.post(
                "/api/v1/session", json={"username": "kim", "password": f"guess-{n}"}
            )
            assert r.status_code == 401
        # Locked: even the right password is not checked now, and the answer says when.
        for pw in ("guess-x", password):
            r = await attacker.post("/api/v1/session", json={"username": "kim", "password": pw})
            assert r.status_code == 429
            assert 0 < int(r.headers["retry-after"]) <= svc.settings.login_window_s
            assert "set-cookie" not in r.headers
    logins = _records(tmp_path, "login")
    # Every guess recorded; the lock-out once, not once per refused attempt.
    assert logins == [("kim", "denied")] * limit + [("kim", "locked_out")]


async def test_a_stranger_failing_on_purpose_cannot_lock_a_dispatcher_out(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """The lock-out holds the name at the stranger's address (127.0.0.2), not at the
    dispatcher's (127.0.0.1)."""
    stranger = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"), trust_env=False
    )
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        stranger,
        api(svc, None) as desk,
    ):
        password = await add_user(svc, "kim")
        login = f"{svc.url}/api/v1/session"
        statuses = []
        for n in range(svc.settings.login_max_failures + 1):
            r = await stranger.post(login, json={"username": "kim", "password": f"guess-{n}"})
            statuses.append(r.status_code)
        assert statuses[-2:] == [401, 429]
        r = await desk.post("/api/v1/session", json={"username": "kim", "password": password})
        assert r.status_code == 200, r.text
    assert ("kim", "locked_out") in _records(tmp_path, "login")


async def test_guessing_many_names_from_one_address_is_limited_too(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, login_max_failures_per_client=4) as svc,
        api(svc, None) as attacker,
    ):
        statuses = []
        for n in range(6):
            attempt = {"username": f"user{n}", "password": "password123"}
            r = await attacker.post("/api/v1/session", json=attempt)
            statuses.append(r.status_code)
        assert statuses == [401, 401, 401, 401, 429, 429]


async def test_a_burst_of_parallel_guesses_gets_no_more_checks_than_the_limit(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as attacker,
    ):
        await add_user(svc, "kim")

        async def guess(n: int) -> int:
            r = await attacker.post(
                "/api/v1/session", json={"username": "kim", "password": f"guess-{n}"}
            )
            return r.status_code

        statuses = await asyncio.gather(*(guess(n) for n in range(12)))
        assert statuses.count(401) == svc.settings.login_max_failures
        assert statuses.count(429) == 12 - svc.settings.login_max_failures


async def test_an_integrator_token_can_neither_activate_cameras_nor_see_positions(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, "integrator") as integrator,
    ):
        assert (await integrator.get("/api/v1/activations")).status_code == 200
        assert (await integrator.post("/api/v1/zones", json=ZONE)).status_code == 403
        assert (await integrator.get("/api/v1/devices")).status_code == 403
        assert (await integrator.get("/api/v1/devices/x")).status_code == 403
        status = await _ws_status(svc.ws_url, additional_headers=bearer(svc, "integrator"))
        assert status == 403
        # Nor can it make itself more: accounts are the admin's.
        r = await integrator.post("/api/v1/tokens", json={"name": "mine", "role": "admin"})
        assert r.status_code == 403
        hook = {"url": "https://x.example/h"}
        assert (await integrator.post("/api/v1/webhooks", json=hook)).status_code == 403
    assert ("token:test-integrator-plain", "forbidden") in _records(tmp_path, "api_change")


async def test_a_cookie_session_cannot_change_anything_without_the_csrf_token(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as browser,
    ):
        password = await add_user(svc, "boss", Role.ADMIN)
        csrf = await login(browser, "boss", password)
        del browser.headers[CSRF_HEADER]
        # What a forged cross-site form or fetch would send: the cookie, no token.
        for method, path, body in (
            ("POST", "/api/v1/zones", ZONE),
            ("POST", "/api/v1/webhooks", {"url": "https://evil.example/h"}),
            ("POST", "/api/v1/tokens", {"name": "evil", "role": "admin"}),
            ("DELETE", "/api/v1/session", None),
        ):
            r = await browser.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
        # The session is unharmed, and the same change with the token goes through.
        ok = await browser.post(
            "/api/v1/tokens", json={"name": "ok", "role": "integrator"}, headers={CSRF_HEADER: csrf}
        )
        assert ok.status_code == 201
        # A real page on another site also sends its Origin: refused even with the token.
        evil = await browser.post(
            "/api/v1/zones", json=ZONE, headers={CSRF_HEADER: csrf, "Origin": EVIL}
        )
        assert evil.status_code == 403
        assert "not allowed" in evil.json()["error"]
    outcomes = [o for _, o in _records(tmp_path, "api_change")]
    assert outcomes.count("csrf_rejected") == 4


async def test_live_websocket_needs_credentials_and_our_own_origin(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as browser,
    ):
        assert await _ws_status(svc.ws_url) == 401
        password = await add_user(svc, "kim")
        await login(browser, "kim", password)
        cookie = {"Cookie": f"actimesh_session={browser.cookies['actimesh_session']}"}
        own = svc.url
        assert await _ws_status(svc.ws_url, additional_headers=cookie, origin=own) == 101
        # Cross-site WebSocket hijacking: the victim's browser sends the cookie along.
        assert await _ws_status(svc.ws_url, additional_headers=cookie, origin=EVIL) == 403
        assert await _ws_status(svc.ws_url, additional_headers=cookie, origin="null") == 403
        # A token in the URL is never taken: not in the handshake, not in a request.
        token = svc.tokens["admin"]
        assert await _ws_status(f"{svc.ws_url}?token={token}") == 401
        assert await _ws_status(f"{svc.ws_url}?access_token={token}") == 401
        r = await browser.get("/api/v1/activations", params={"access_token": token})
        assert r.status_code == 200  # the cookie, not the URL, let it in
        async with api(svc, None) as anonymous:
            for name in ("access_token", "token", "api_key"):
                r = await anonymous.get("/api/v1/activations", params={name: token})
                assert r.status_code == 401
                assert "credentials in URLs are refused" in r.json()["error"]


async def test_revoked_and_expired_tokens_and_forged_sessions_are_refused(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with mesh(agency, broker_port, tmp_path) as m, running_dispatch(m, tmp_path) as svc:
        short = await svc.accounts.create_token(
            "short", Role.ADMIN, created_by="tests", expires_s=1.0
        )
        long = await svc.accounts.create_token("long", Role.ADMIN, created_by="tests")
        async with api(svc, None) as client:
            for issued in (short, long):
                auth = {"Authorization": f"Bearer {issued.secret}"}
                r = await client.get("/api/v1/activations", headers=auth)
                assert r.status_code == 200
            await svc.accounts.revoke_token("long")

            async def refused(secret: str) -> bool:
                r = await client.get(
                    "/api/v1/activations", headers={"Authorization": f"Bearer {secret}"}
                )
                return r.status_code == 401

            assert await refused(long.secret)
            assert await eventually(lambda: refused(short.secret), timeout=5, every=0.2)
            assert await refused("amt_" + "A" * 43)
            assert await refused("not-even-a-token")
            client.cookies.set("actimesh_session", "A" * 43)
            forged = await client.get("/api/v1/activations")
            assert forged.status_code == 401
            assert "Max-Age=0" in forged.headers["set-cookie"]  # the browser forgets it


async def test_a_session_id_planted_before_login_is_not_adopted(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Session fixation: the id a browser had before logging in never becomes a session."""
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as client,
    ):
        password = await add_user(svc, "kim")
        planted = {"Cookie": "actimesh_session=planted-by-the-attacker"}
        r = await client.post(
            "/api/v1/session", json={"username": "kim", "password": password}, headers=planted
        )
        assert r.status_code == 200
        issued = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        assert issued != "planted-by-the-attacker"
        assert len(issued) >= 43
        client.cookies.clear()
        assert (await client.get("/api/v1/activations", headers=planted)).status_code == 401


async def test_security_headers_are_on_every_kind_of_response(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc) as client,
    ):
        responses = {
            "page": await client.get("/"),
            "script": await client.get("/static/app.js"),
            "api": await client.get("/api/v1/activations"),
            "error": await client.get("/api/v1/activations/act-nope"),
            "refused": await client.get("/api/v1/activations", headers={"Authorization": ""}),
            "metrics": await client.get("/metrics"),
            "health": await client.get("/api/v1/health"),
        }
        for what, r in responses.items():
            h = r.headers
            assert h["x-content-type-options"] == "nosniff", what
            assert h["referrer-policy"] == "no-referrer", what
            assert h["x-frame-options"] == "DENY", what
            assert "frame-ancestors 'none'" in h["content-security-policy"], what
            assert "strict-transport-security" not in h, what  # plain http here
            assert "server" not in h, what
        for what in ("api", "error", "refused", "metrics", "health"):
            assert responses[what].headers["cache-control"] == "no-store", what
        page_csp = responses["page"].headers["content-security-policy"]
        assert "default-src 'self'" in page_csp
        assert "script-src 'self'" in page_csp
        assert "unsafe-inline" not in page_csp
        assert responses["api"].headers["content-security-policy"].startswith("default-src 'none'")
        assert responses["refused"].status_code == 401


async def test_cors_is_off_by_default_and_an_allow_list_when_configured(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async with mesh(agency, broker_port, tmp_path) as m:
        async with running_dispatch(m, tmp_path) as svc, api(svc) as client:
            r = await client.options("/api/v1/zones", headers=preflight | {"Origin": EVIL})
            assert "access-control-allow-origin" not in r.headers
            r = await client.get("/api/v1/activations", headers={"Origin": EVIL})
            assert "access-control-allow-origin" not in r.headers
        cad = "https://cad.agency.example"
        async with (
            running_dispatch(m, tmp_path, data_dir=tmp_path / "cors", cors_origins=(cad,)) as svc,
            api(svc) as client,
        ):
            r = await client.options("/api/v1/zones", headers=preflight | {"Origin": cad})
            assert r.headers["access-control-allow-origin"] == cad
            assert "access-control-allow-credentials" not in r.headers  # tokens, never cookies
            r = await client.options("/api/v1/zones", headers=preflight | {"Origin": EVIL})
            assert "access-control-allow-origin" not in r.headers
            r = await client.get("/api/v1/activations", headers={"Origin": cad})
            assert r.headers["access-control-allow-origin"] == cad
            r = await client.post("/api/v1/zones", json=ZONE, headers={"Origin": cad})
            assert r.status_code == 202  # an allowed site's page, with its own token
            r = await client.post("/api/v1/zones", json=ZONE, headers={"Origin": EVIL})
            assert r.status_code == 403


async def test_a_login_from_another_site_is_refused(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Login CSRF: a foreign page must not log the victim's browser in as the attacker."""
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path) as svc,
        api(svc, None) as browser,
    ):
        password = await add_user(svc, "kim")
        r = await browser.post(
            "/api/v1/session",
            json={"username": "kim", "password": password},
            headers={"Origin": EVIL},
        )
        assert r.status_code == 403
        assert "set-cookie" not in r.headers
        form = await browser.post("/api/v1/session", data={"username": "kim", "password": password})
        assert form.status_code == 415


async def test_a_foreign_host_name_is_refused_even_with_a_matching_origin(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to the dispatch
    sends Host and Origin both evil.example, which would pass for the server's own."""
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, allowed_hosts=("dispatch.agency.example",)) as svc,
        api(svc, None) as browser,
    ):
        password = await add_user(svc, "kim")
        port = svc.url.rsplit(":", 1)[1]
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        r = await browser.post(
            "/api/v1/session", json={"username": "kim", "password": password}, headers=rebound
        )
        assert r.status_code == 400
        assert "does not answer to the name 'evil.example:" in r.json()["error"]
        assert "allowed_hosts" in r.json()["error"]
        assert (await browser.get("/", headers={"Host": "evil.example"})).status_code == 400
        # The live map too: the URL's name goes in Host, the socket goes to the server.
        evil_ws = svc.ws_url.replace("127.0.0.1", "evil.example")
        origin = f"http://evil.example:{port}"
        status = await _ws_status(evil_ws, origin=origin, host="127.0.0.1", port=int(port))
        assert status == 400
        # This server's own names: its address, localhost, an allowed name, any IP.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "dispatch.agency.example", "[::1]"):
            r = await browser.get("/api/v1/health", headers={"Host": host})
            assert r.status_code == 200, host
        assert svc.auth.stats.refused["host"] == 3


async def test_oversized_bodies_are_refused_before_they_are_read(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """The login reads its body without credentials: a body over max_body_bytes gets
    413 whether it declares its length or streams it in chunks."""
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, max_body_bytes=64 * 1024) as svc,
        api(svc, None) as stranger,
    ):
        password = await add_user(svc, "kim")
        big = b'{"username": "kim", "password": "' + b"x" * (128 * 1024) + b'"}'
        r = await stranger.post(
            "/api/v1/session", content=big, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        assert "over 65536 bytes" in r.json()["error"]

        async def chunks() -> AsyncIterator[bytes]:
            yield big[: len(big) // 2]
            yield big[len(big) // 2 :]

        r = await stranger.post(
            "/api/v1/session", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        assert "content-length" not in r.request.headers  # streamed: no length declared
        r = await stranger.post("/api/v1/session", json={"username": "kim", "password": password})
        assert r.status_code == 200


async def test_half_open_requests_are_cut_off_and_do_not_lock_others_out(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Slowloris: more half-sent request heads than the server has slots. Each is
    closed after client_timeout_s, everyone else is served again, and a body that
    stalls gets 408."""
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, client_timeout_s=1.0, max_clients=5) as svc,
        api(svc, None) as client,
    ):
        host, port = svc.url.removeprefix("http://").rsplit(":", 1)
        streams = [await asyncio.open_connection(host, int(port)) for _ in range(30)]
        for _, writer in streams:
            writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            await writer.drain()
        # Every half-open connection is closed by the server: read() sees the end.
        async with asyncio.timeout(10):
            for reader, _ in streams:
                assert await reader.read() == b""
        for _, writer in streams:
            writer.close()
        assert (await client.get("/api/v1/health")).status_code == 200

        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"user'
        )
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readline()
        writer.close()
        assert head.startswith(b"HTTP/1.1 408"), head


async def test_the_last_connections_are_kept_for_people_who_are_logged_in(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    """Half-open requests up to the reserve: callers without credentials are turned
    away (503, Retry-After), a logged-in dispatcher is still served, and a newcomer
    that sends no request head is cut off at once, not after client_timeout_s."""
    async with (
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, client_timeout_s=30.0, max_clients=8) as svc,
        api(svc, None) as anonymous,
        api(svc, "admin") as dispatcher,
    ):
        assert (svc.gauge.limit, svc.gauge.reserve) == (16, 4)
        host, port = svc.url.removeprefix("http://").rsplit(":", 1)
        held = []
        for _ in range(12):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            await writer.drain()
            held.append((reader, writer))
        await eventually(lambda: svc.gauge.crowded, 5)
        busy = await anonymous.get("/api/v1/health")
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert (await dispatcher.get("/api/v1/devices")).status_code == 200
        late_reader, late_writer = await asyncio.open_connection(host, int(port))
        late_writer.write(b"GET / HTTP/1.1\r\n")
        async with asyncio.timeout(5):  # the crowded head timeout, 1 s, not 30 s
            assert await late_reader.read() == b""
        late_writer.close()
        for _, writer in held:
            writer.close()
        await eventually(lambda: not svc.gauge.crowded, 5)
        assert (await anonymous.get("/api/v1/health")).status_code == 200
