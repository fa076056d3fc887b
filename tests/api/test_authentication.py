"""Authentication on every request: a revoked key is shut out at once by every API process, and the status
read (one Core statement on the key lookup's connection) answers exactly what the ORM path answers."""

from __future__ import annotations

import secrets

import pytest


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("ledger", ["sqlite", "postgres"])
def test_a_key_revoked_through_one_api_process_is_refused_at_once_by_another(request, make_service, ledger):
    overrides = {}
    if ledger == "postgres":
        overrides = {
            "database_url": request.getfixturevalue("fresh_postgres_url"),
            "secret_key": secrets.token_urlsafe(48),
        }
    first = make_service(**overrides)
    # Another app over the same ledger: its own engine and pool, as another uvicorn worker would have.
    second = make_service(**{**overrides, "database_url": first.settings.ledger.database_url})
    assert second.app.state.database is not first.app.state.database
    key = first.client.create_api_key("poller", ["read", "submit"])
    for service in (second, first, second):  # warmed on both: any state either kept of the key is in place
        assert service.http.get("/v1/deletion-requests", headers=_bearer(key["key"])).status_code == 200

    first.http.delete(f"/v1/api-keys/{key['id']}", headers=first.client.headers).raise_for_status()

    for service in (second, first):
        answer = service.http.get("/v1/deletion-requests/anything", headers=_bearer(key["key"]))
        assert answer.status_code == 401, answer.text
        assert answer.json()["code"] == "invalid_api_key"
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="ltu"'


def test_the_status_read_answers_what_the_listing_answers(completed_on_each_ledger):
    service, done = completed_on_each_ledger.service, completed_on_each_ledger.request
    headers = service.client.headers
    read = service.http.get(f"/v1/deletion-requests/{done.id}", headers=headers)
    assert read.status_code == 200, read.text
    (listed,) = service.http.get("/v1/deletion-requests", headers=headers).json()["items"]
    body = read.json()
    assert body == listed
    assert (body["status"], body["result_version"], body["result_sha256"]) == ("completed", 2, done.result_sha256)
    assert "Retry-After" not in read.headers  # a finished request has nothing left to poll for
