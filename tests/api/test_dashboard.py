"""The compliance dashboard: sign-in and its failure paths over HTTP, then the real page in headless
Chromium (Debian's `chromium`, driven by playwright) with the data of a completed request."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.support import new_key, problem


def test_sign_in_sets_an_httponly_session_cookie_and_guards_every_page(completed):
    from api.routes.dashboard import COOKIE, session_token

    service, request_id = completed.service, completed.request.id
    http = service.http
    assert http.get("/dashboard", follow_redirects=False).headers["location"] == "/dashboard/login"
    assert 'name="api_key"' in http.get("/dashboard/login").text
    for key, status, message in (
        (new_key(service, scopes=["read"]), 403, "lacks the audit scope"),
        ("ltu_not-a-key-0123456789", 401, "unknown or revoked"),
    ):
        answer = http.post("/dashboard/login", data={"api_key": key}, follow_redirects=False)
        assert answer.status_code == status and message in answer.text and COOKIE not in answer.cookies
    problem(http.post("/dashboard/login", data={"api_key": ""}), 422)

    auditor = service.client.create_api_key("compliance", ["audit"])
    answer = http.post("/dashboard/login", data={"api_key": auditor["key"]}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert auditor["key"] not in cookie  # the browser never holds the key itself
    page = http.get("/dashboard")
    assert page.status_code == 200 and request_id in page.text
    assert http.get(f"/dashboard/requests/{request_id}").status_code == 200
    problem(http.get("/dashboard/requests/no-such-request"), 404)
    problem(http.get("/dashboard", params={"deadline": "someday"}), 422)

    # A forged, expired or revoked session is no session.
    token = http.cookies[COOKIE]
    http.cookies.clear()
    key_id, expires, _ = token.split(".")
    for forged in (
        token[:-1] + ("0" if token[-1] != "0" else "1"),
        session_token("another-secret", key_id, int(expires)),
        session_token(service.settings.ledger.secret_key, key_id, int(time.time()) - 1),
        "garbage",
        token,
    ):
        answer = http.get("/dashboard", headers={"Cookie": f"{COOKIE}={forged}"}, follow_redirects=False)
        assert answer.status_code == (200 if forged == token else 303)
    http.delete(f"/v1/api-keys/{auditor['id']}", headers=service.client.headers).raise_for_status()
    answer = http.get("/dashboard", headers={"Cookie": f"{COOKIE}={token}"}, follow_redirects=False)
    assert answer.headers["location"] == "/dashboard/login"

    # Bearer keys work too, with the same scope rule and tenant isolation.
    assert http.get("/dashboard", headers=service.client.headers).status_code == 200
    problem(http.get("/dashboard", headers={"Authorization": f"Bearer {new_key(service, scopes=['submit'])}"}), 403)
    other = {"Authorization": f"Bearer {new_key(service, scopes=['audit'], tenant='acme')}"}
    assert request_id not in http.get("/dashboard", headers=other).text
    problem(http.get(f"/dashboard/requests/{request_id}", headers=other), 404)
    answer = http.post("/dashboard/logout", follow_redirects=False)
    assert answer.status_code == 303 and 'ltu_dashboard=""' in answer.headers["set-cookie"]


def raw_get(app, path: str, cookie: bytes) -> tuple[int, str | None]:
    """GET at the ASGI level with the Cookie header's bytes as sent (the test client re-encodes non-ASCII as
    UTF-8; a browser's byte 0xB2 reaches the app as "²")."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"cookie", cookie)],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]).get(b"location", b"").decode() or None


def test_a_malformed_session_cookie_is_no_session_never_a_server_error(api):
    from api.routes.dashboard import COOKIE, session_token

    secret = api.settings.ledger.secret_key
    key_id = api.client.create_api_key("compliance", ["audit"])["id"]
    later = int(time.time()) + 3600
    mac = session_token(secret, key_id, later).rsplit(".", 1)[1]

    def signed(expires: str) -> str:  # a correct HMAC over any expiry text, as if forged with the secret
        return session_token(secret, key_id, expires)  # type: ignore[arg-type]

    malformed = [
        signed("²"),  # str.isdigit() says yes, int() says no
        signed("¹²³"),
        signed("9" * 5000),  # past int()'s digit limit
        signed("-5"),
        signed("+" + str(later)),
        signed("0" + str(later)),  # a number, but not the text the server signed
        signed(""),
        f"{key_id}.{later}",
        f"{key_id}.{later}.{mac}.extra",
        f"é.{later}.{mac}",  # compare_digest refuses non-ASCII text
        f"{key_id}.{later}.{mac.upper()}",
        f"{key_id}.{later}.{'0' * 64}",
        "",
        "...",
    ]
    pages = ["/dashboard", "/dashboard/requests/some-request", "/dashboard/requests/some-request/certificate"]
    for token in malformed:
        for page in pages:
            answer = raw_get(api.app, page, f"{COOKIE}={token}".encode("latin-1"))
            assert answer == (303, "/dashboard/login"), (token[:40], page)
    assert raw_get(api.app, "/dashboard", f"{COOKIE}={session_token(secret, key_id, later)}".encode())[0] == 200


def test_the_dashboard_in_headless_chromium(chromium, completed, artifacts, submit_backdated, tmp_path):
    from ltu_cli.demo import start_server
    from ltu_client import load_public_key, verify_certificate

    service, request = completed.service, completed.request
    overdue = submit_backdated(service, completed.model.id, artifacts.subject_with_train_samples(1), days_ago=40)
    auditor = service.client.create_api_key("compliance", ["audit"])["key"]
    scores = request.details["scores"]
    assert scores["after"]["mean_rank"] == pytest.approx(request.verification["after"]["forget_mean_rank"], abs=1e-3)
    server, thread, url = start_server(service.app, 0)
    shots = []
    try:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/dashboard")
        assert page.url.endswith("/dashboard/login")
        page.fill("#api_key", auditor)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/dashboard")
        cookie = next(c for c in page.context.cookies() if c["name"] == "ltu_dashboard")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        row = page.locator(f'#requests tr[data-request-id="{request.id}"]')
        assert "completed" in row.inner_text() and "v1 → v2" in row.inner_text()
        assert page.locator("#overdue a", has_text=overdue).count() == 1
        assert page.inner_text("#overdue-count") == "1"
        shots.append(tmp_path / "dashboard-overview.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

        page.click(f'#requests a:text("{request.id}")')
        page.wait_for_url(f"{url}/dashboard/requests/{request.id}")
        assert page.locator("svg.plot-scores").count() == 2
        for phase in ("before", "after"):
            plot = page.locator(f'svg.plot-scores[data-phase="{phase}"]')
            assert plot.locator("circle.forget-point").count() == len(scores[phase]["forget"])
            assert plot.locator("rect.bar.control").count() == len(scores[phase]["control_histogram"]["counts"])
        ranks = len(scores["before"]["forget_ranks"]) + len(scores["after"]["forget_ranks"])
        assert page.locator("svg.plot-ranks circle.rank-point").count() == ranks
        assert page.locator("svg.plot-ranks .mean-mark").count() == 2
        assert page.locator("svg.plot-metrics rect.bar").count() == 8
        verdict = "passed" if request.verification["passed"] else "failed"
        statement, after = page.inner_text("#verdict"), request.verification["after"]
        assert verdict in statement and "tier at α = 0.05" in statement
        assert (
            f"{after['n_control']} D_audit controls" in statement and f"audit seed {after['audit_seed']}" in statement
        )
        assert "false-failure rate" in statement and after["calibration"]["table_sha256"][:12] in statement
        rows = page.locator("#subject-p-values tr")
        assert rows.count() == 1 + len(after["subjects"])  # header + one row per subject
        assert after["subjects"][0]["subject"] in rows.nth(1).inner_text()
        assert page.locator("#events tr").count() > 5
        shots.append(tmp_path / "dashboard-request.png")
        page.screenshot(path=str(shots[-1]), full_page=True)

        # The certificate link downloads a certificate that verifies with the published key.
        answer = page.request.get(url + page.get_attribute("#certificate", "href"))
        assert answer.status == 200
        key = load_public_key(page.request.get(f"{url}/.well-known/ltu-certificate-key").text())
        assert verify_certificate(answer.body(), key)["request"]["id"] == request.id
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert all(shot.stat().st_size > 10_000 for shot in shots)
    if os.environ.get("LTU_TEST_ARTIFACTS"):
        target = Path(os.environ["LTU_TEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, target / shot.name)
