"""Behind a TLS-terminating proxy the dashboard's session cookie is `Secure` exactly when `ltu serve` trusts
the proxy's address (LTU_FORWARDED_ALLOW_IPS): the real uvicorn, started by the real command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.support import ADMIN_KEY, REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_cookie(home, allowed: str) -> str:
    """The Set-Cookie of a dashboard sign-in sent from 127.0.0.1 with `X-Forwarded-Proto: https`."""
    port = _free_port()
    env = {
        **os.environ,
        "LTU_HOME": str(home),
        "LTU_ADMIN_API_KEY": ADMIN_KEY,
        "LTU_FORWARDED_ALLOW_IPS": allowed,
        "LTU_AUDIT_REFERENCE_MODELS": "0",
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "ltu_cli.main", "serve", "--port", str(port)]
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ltu serve did not start:\n{server.communicate()[0][-3000:]}")
                time.sleep(0.2)
        answer = httpx.post(
            f"{url}/dashboard/login",
            data={"api_key": ADMIN_KEY},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
        )
        assert answer.status_code == 303, answer.text
        return answer.headers["set-cookie"]
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_the_session_cookie_is_secure_only_through_a_trusted_proxy(tmp_path):
    trusted = _session_cookie(tmp_path / "trusted", "127.0.0.1")
    assert "; secure" in trusted.lower() and "httponly" in trusted.lower()
    untrusted = _session_cookie(tmp_path / "untrusted", "10.0.0.2")  # the client is not that proxy
    assert "secure" not in untrusted.lower()
