"""GET/PATCH /v1/tenant: the raw-data purge policy is set through the API (audited, admin only, per tenant),
and the tenant's key shows by id, never by its material."""

from __future__ import annotations

from sqlalchemy import select

from tests.support import new_key, problem


def test_an_admin_sets_the_purge_policy_of_its_own_tenant_only(api, artifacts):
    from ledger.db import Database
    from ledger.tables import AuditEvent

    headers = api.client.headers
    before = api.http.get("/v1/tenant", headers=headers).json()
    assert (before["name"], before["purge_raw_data_at_once"], before["tenant_key"]) == ("default", False, None)
    api.client.register_dataset(artifacts.archive)  # the tenant's first keyed operation makes its key
    key = api.http.get("/v1/tenant", headers=headers).json()["tenant_key"]
    assert key["origin"] == "random" and set(key) == {"id", "origin", "created_at"}

    changed = api.http.patch("/v1/tenant", json={"purge_raw_data_at_once": True}, headers=headers)
    assert changed.status_code == 200 and changed.json()["purge_raw_data_at_once"] is True
    assert api.http.get("/v1/tenant", headers=headers).json()["purge_raw_data_at_once"] is True
    database = Database(api.settings.ledger.database_url)
    try:
        with database.session() as session:
            events = session.scalars(select(AuditEvent).where(AuditEvent.action == "tenant.purge_policy_set")).all()
    finally:
        database.dispose()
    assert [e.data for e in events] == [{"purge_raw_data_at_once": True}]

    other = {"Authorization": f"Bearer {new_key(api, scopes=['admin'], tenant='other')}"}
    assert api.http.get("/v1/tenant", headers=other).json()["purge_raw_data_at_once"] is False
    submitter = {"Authorization": f"Bearer {new_key(api, scopes=['submit', 'read', 'audit'])}"}
    problem(api.http.patch("/v1/tenant", json={"purge_raw_data_at_once": False}, headers=submitter), 403)
    problem(api.http.get("/v1/tenant", headers=submitter), 403)
    for wrong in ({}, {"purge_raw_data_at_once": "yes"}, {"purge_raw_data_at_once": True, "name": "x"}):
        problem(api.http.patch("/v1/tenant", json=wrong, headers=headers), 422)
    assert api.http.get("/v1/tenant", headers=headers).json()["purge_raw_data_at_once"] is True
