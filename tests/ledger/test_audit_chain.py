"""The tamper-evident audit log: canonical JSON, sealing at commit, append-only triggers, and
`/v1/audit/verify` finding exactly the row that was edited behind the triggers' back."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

# --- canonical JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        ({"b": 1, "a": [True, None, "x"]}, '{"a":[true,null,"x"],"b":1}'),
        ({"\U0001f600": 1, "\uffff": 2, "é": 3}, '{"é":3,"😀":1,"\uffff":2}'),  # UTF-16 code-unit order
        ('line\nbreak "quoted" \u2028', '"line\\nbreak \\"quoted\\" \u2028"'),
        (
            [1.0, 0.1, -2.5, 1e21, 1e20, 1e-7, 0.000001, 123456789.125, -0.0],
            "[1,0.1,-2.5,1e+21,100000000000000000000,1e-7,0.000001,123456789.125,0]",
        ),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))), '"2026-01-02T01:04:05.000000Z"'),
        ((1, 2), "[1,2]"),
    ],
)
def test_canonical_json_follows_rfc8785(value, text):
    from ledger.canonical import canonical_json

    assert canonical_json(value) == text


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), 2**53 + 1, {1: "int key"}, {"s": {1, 2}}, datetime(2026, 1, 1), b"bytes"]
)
def test_values_without_a_canonical_form_are_refused(value):
    from ledger.canonical import canonical_json

    with pytest.raises((TypeError, ValueError)):
        canonical_json(value)


# --- sealing at commit ----------------------------------------------------------------------------


def _record(session, action: str, **data) -> None:
    from ledger import audit

    audit.record(session, tenant_id=None, actor="test", action=action, resource_type="test", resource_id="r", data=data)


def _chain(database) -> list[tuple[int, str]]:
    from sqlalchemy import select

    from ledger.tables import AuditEvent

    with database.session() as session:
        return [
            tuple(row) for row in session.execute(select(AuditEvent.seq, AuditEvent.action).order_by(AuditEvent.seq))
        ]


def test_events_are_sealed_at_commit_and_rolled_back_savepoints_leave_no_trace(tmp_path):
    from sqlalchemy.orm import Session

    from ledger import audit, migrate
    from ledger.db import Database

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    database = Database(url)
    with database.transaction() as session:
        _record(session, "a")
        with pytest.raises(LookupError), session.begin_nested():
            _record(session, "dropped.with.savepoint")
            raise LookupError("rolls the savepoint back")
        with session.begin_nested():
            _record(session, "b")  # a released savepoint's events are sealed by the outer commit
        _record(session, "c")
        assert _chain(database) == []  # nothing is inserted before the commit
    with database.session() as session:  # rolled back: no event, and no gap in the sequence
        _record(session, "dropped.with.transaction")
        session.rollback()
        _record(session, "d")
        session.commit()
    with database.session() as session:  # closed without commit
        _record(session, "dropped.unclosed")
    assert _chain(database) == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    with database.session() as session:
        assert audit.verify_chain(session).valid
    with Session(database.engine) as plain, pytest.raises(RuntimeError, match="does not seal"):
        _record(plain, "nowhere")
    with database.session() as session, pytest.raises(ValueError, match=r"'bad\.data' has data without a canonical"):
        _record(session, "bad.data", rate=float("nan"))
        session.commit()
    assert len(_chain(database)) == 4
    database.dispose()


def test_every_event_hashes_its_canonical_body_and_links_to_its_predecessor(completed, tmp_path):
    from ledger.audit import GENESIS
    from ledger.canonical import canonical_json, timestamp

    events = completed.client.audit_events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    export = completed.client.export_audit(tmp_path / "events.ndjson", format="ndjson")
    bodies = [json.loads(line) for line in export.read_text().splitlines()]
    previous, tenant_heads = GENESIS, {}
    for event, body in zip(events, bodies, strict=True):
        digest = body.pop("hash")
        assert body == {
            "seq": event.seq,
            "prev_hash": event.prev_hash,
            "tenant_seq": body["tenant_seq"],
            "tenant_prev_hash": body["tenant_prev_hash"],
            "occurred_at": timestamp(event.occurred_at),
            "tenant_id": event.tenant_id,
            "actor": event.actor,
            "action": event.action,
            "resource_type": event.resource_type,
            "resource_id": event.resource_id,
            "model_id": event.model_id,
            "request_id": event.request_id,
            "data": event.data,
        }
        assert event.prev_hash == previous
        assert hashlib.sha256(canonical_json(body).encode()).hexdigest() == digest == event.hash
        previous = event.hash
        # The tenant's own chain: its events numbered from 1, each naming the tenant's previous one.
        tenant_seq, tenant_prev = tenant_heads.get(event.tenant_id, (0, GENESIS))
        assert (body["tenant_seq"], body["tenant_prev_hash"]) == (tenant_seq + 1, tenant_prev)
        tenant_heads[event.tenant_id] = (tenant_seq + 1, event.hash)
    assert None not in tenant_heads  # every event of this service belongs to a tenant
    # No raw subject id anywhere in the chain: subjects appear as keyed hashes only.
    received = next(e for e in events if e.action == "deletion_request.received")
    assert received.data["subject_hashes"] == completed.request.subject_hashes
    report = completed.client.verify_audit()
    assert report == {
        "chain": "deployment",
        "tenant_id": None,
        "valid": True,
        "checked": len(events),
        "first_seq": 1,
        "last_seq": len(events),
        "last_hash": events[-1].hash,
        "broken": None,
        "next_from_seq": None,
    }


def test_concurrent_writers_never_fork_the_chain_or_deadlock(fresh_postgres_url):
    """Transactions that lock a row before and after recording events, side by side: with the chain
    sealed at commit, none waits on the chain lock while holding a row another needs."""
    from sqlalchemy import text

    from ledger import audit, tenants
    from ledger.db import Database

    database = Database(fresh_postgres_url)
    with database.transaction() as session:
        shared = tenants.ensure_tenant(session, name="shared").id
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(index: int) -> None:
        try:
            barrier.wait()
            for i in range(15):
                with database.transaction() as session:
                    lock = text("UPDATE tenants SET name = name WHERE id = :id")
                    if index % 2:  # row lock first, then events
                        session.execute(lock, {"id": shared})
                        _record(session, f"w{index}.{i}.a")
                    else:  # events first, then the row lock
                        _record(session, f"w{index}.{i}.a")
                        session.execute(lock, {"id": shared})
                    _record(session, f"w{index}.{i}.b")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    chain = _chain(database)
    assert [seq for seq, _ in chain] == list(range(1, 4 * 15 * 2 + 2))  # + tenant.created
    with database.session() as session:
        report = audit.verify_chain(session, chunk=7)
    assert report.valid and report.checked == len(chain)
    database.dispose()


# --- tampering ------------------------------------------------------------------------------------


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture()
def postgres_service(fresh_postgres_url, tmp_path):
    """The API (no runner) on a Postgres database of its own, with 10 events (a tenant and its keys)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from ltu_client import Client
    from ltu_settings import Settings

    admin_key = "ltu_" + secrets.token_urlsafe(32)
    settings = Settings.build(
        home=tmp_path, database_url=fresh_postgres_url, secret_key=secrets.token_urlsafe(48), admin_api_key=admin_key
    )
    with TestClient(create_app(settings)) as http:
        client = Client(http=http, api_key=admin_key)
        for i in range(8):
            client.create_api_key(f"key-{i}", ["read"])
        yield client, fresh_postgres_url


def _rewrite(body: str) -> tuple[str, str]:
    """A body with a changed value and its recomputed hash (a careful forger)."""
    from ledger.canonical import canonical_json

    event = json.loads(body)
    event["actor"] = "key:forged"
    forged = canonical_json(event)
    return forged, hashlib.sha256(forged.encode()).hexdigest()


def test_editing_any_row_behind_the_trigger_is_reported_at_its_sequence_number(postgres_service):
    import psycopg

    client, url = postgres_service
    events = client.audit_events()
    head = len(events)
    assert head >= 10 and client.verify_audit()["valid"]
    with psycopg.connect(_psycopg_url(url), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # superuser: triggers off
        original = {
            seq: row
            for seq, *row in conn.execute(
                "SELECT seq, tenant_id, occurred_at, actor, action, resource_type, resource_id, model_id, request_id, "
                "body, prev_hash, hash, tenant_seq, tenant_prev_hash FROM audit_events ORDER BY seq"
            )
        }

        def restore(seq: int) -> None:
            conn.execute("DELETE FROM audit_events WHERE seq = %s", (seq,))
            conn.execute(
                "INSERT INTO audit_events (seq, tenant_id, occurred_at, actor, action, resource_type, "
                "resource_id, model_id, request_id, body, prev_hash, hash, tenant_seq, tenant_prev_hash) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (seq, *original[seq]),
            )

        cases = [
            (seq, sql, params)
            for seq in (1, 5, head)
            for sql, params in [
                ('UPDATE audit_events SET body = replace(body, \'"actor":"\', \'"actor":"x\') WHERE seq = %s', (seq,)),
                ("UPDATE audit_events SET action = 'api_key.forged' WHERE seq = %s", (seq,)),
                ("UPDATE audit_events SET occurred_at = occurred_at - interval '1 day' WHERE seq = %s", (seq,)),
                ("UPDATE audit_events SET hash = md5(hash) || md5(body) WHERE seq = %s", (seq,)),
            ]
        ]
        # A forger who recomputes the hash, and a deletion: found at the next link (not possible at the head).
        cases.append((5, "UPDATE audit_events SET body = %s, hash = %s WHERE seq = 5", _rewrite(original[5][8])))
        cases.append((5, "DELETE FROM audit_events WHERE seq = 5", ()))
        for seq, sql, params in cases:
            conn.execute(sql, params)
            report = client.verify_audit()
            assert report["valid"] is False and report["broken"]["seq"] == seq, (sql, report)
            assert report["checked"] == seq - 1 and report["last_seq"] == (seq - 1 or None)
            restore(seq)
            assert client.verify_audit()["valid"], sql
        conn.execute("UPDATE audit_events SET action = 'api_key.forged' WHERE seq = 6")
    # A range that stops before the edit holds; one that includes it does not.
    ranged = client.verify_audit(from_seq=2, to_seq=5)
    assert (ranged["valid"], ranged["checked"], ranged["first_seq"], ranged["last_seq"]) == (True, 4, 2, 5)
    assert client.verify_audit(from_seq=4, to_seq=8)["broken"]["seq"] == 6


def test_postgres_answers_the_compliance_queries_and_the_edge_refuses_nul(postgres_service):
    client, _ = postgres_service
    assert client.audit_summary()["overall"]["total"] == 0  # JSON verdict extraction and deadline filters in SQL
    assert client.list_requests(deadline="overdue").items == client.list_requests(deadline="due_soon").items == []
    answer = client.http.get("/v1/deletion-requests", params={"model_id": "nul\x00byte"}, headers=client.headers)
    assert answer.status_code == 422 and answer.json()["code"] == "nul_character"  # before Postgres sees it


def test_the_application_role_can_neither_update_nor_delete_nor_switch_the_trigger_off(postgres_service):
    import psycopg

    _, url = postgres_service
    role = f"ltu_app_{secrets.token_hex(4)}"
    admin = _psycopg_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        # Not the table's owner; every privilege on the table all the same: the trigger is what stops it.
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT ALL ON audit_events TO "{role}"')
    try:
        as_app = admin.replace("postgres@", f"{role}@")
        for statement in (
            "UPDATE audit_events SET actor = 'x' WHERE seq = 1",
            "DELETE FROM audit_events WHERE seq = 1",
            "TRUNCATE audit_events",
        ):
            with psycopg.connect(as_app) as conn, pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(statement)
        for statement, message in (
            ("SET session_replication_role = replica", "permission denied"),
            ("ALTER TABLE audit_events DISABLE TRIGGER ALL", "must be owner"),
        ):
            with psycopg.connect(as_app) as conn, pytest.raises(psycopg.Error, match=message):
                conn.execute(statement)
        with psycopg.connect(as_app) as conn:
            assert conn.execute("SELECT count(*) FROM audit_events").fetchone()[0] >= 10
        # The service's own connection (here a superuser) is refused too while the trigger is on.
        with psycopg.connect(admin) as conn, pytest.raises(psycopg.Error, match="append-only"):
            conn.execute("DELETE FROM audit_events")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def test_sqlite_rejects_updates_and_verify_finds_edits_made_around_it(completed):
    service = completed.service
    db_file = str(service.settings.ledger.home / "ledger.db")
    with sqlite3.connect(db_file) as conn:
        for statement in (
            "UPDATE audit_events SET actor = 'x' WHERE seq = 3",
            "DELETE FROM audit_events WHERE seq = 3",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
    conn = sqlite3.connect(db_file)
    conn.execute("DROP TRIGGER audit_events_no_update")  # whoever can write the file can do this
    conn.execute('UPDATE audit_events SET body = replace(body, \'"actor":"\', \'"actor":"x\') WHERE seq = 4')
    conn.commit()
    conn.close()
    report = completed.client.verify_audit()
    assert report["broken"] == {"seq": 4, "reason": "the body does not hash to the stored hash: the event was edited"}


# --- the verify endpoint's input ------------------------------------------------------------------


def test_verify_ranges_and_bad_input(completed):
    from tests.support import new_key, problem

    service = completed.service
    head = len(completed.client.audit_events())
    assert completed.client.verify_audit(from_seq=3, to_seq=5)["checked"] == 3
    beyond = completed.client.verify_audit(from_seq=head + 10)
    assert beyond["valid"] and beyond["checked"] == 0
    auth = completed.client.headers
    for params in ({"from_seq": 0}, {"from_seq": "x"}, {"from_seq": 5, "to_seq": 4}, {"to_seq": -1}):
        problem(service.http.get("/v1/audit/verify", params=params, headers=auth), 422)
    reader = new_key(service, scopes=["read"])
    problem(service.http.get("/v1/audit/verify", headers={"Authorization": f"Bearer {reader}"}), 403)
    problem(service.http.get("/v1/audit/verify"), 401)


# --- the migration --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_migration_chains_existing_events_and_downgrades(backend, tmp_path, request):
    import sqlalchemy as sa
    from alembic import command

    from ledger import audit, migrate
    from ledger.db import Database, make_engine

    url = (
        f"sqlite:///{tmp_path / 'ledger.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    )
    config = migrate.alembic_config(url)
    if backend == "postgres":
        command.downgrade(config, "base")
    command.upgrade(config, "0001")
    engine = make_engine(url)
    with engine.begin() as conn:
        for i in range(3):
            conn.execute(
                sa.text(
                    "INSERT INTO audit_events (occurred_at, actor, action, resource_type, resource_id, data) "
                    "VALUES (:at, 'system', 'old.event', 'test', 'r', :data)"
                ),
                {"at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i), "data": json.dumps({"i": i, "x": 0.5})},
            )
    engine.dispose()
    command.upgrade(config, "head")
    database = Database(url)
    with database.session() as session:
        assert audit.verify_chain(session).checked == 3
    with database.transaction() as session:
        _record(session, "new.event")
    assert [action for _, action in _chain(database)] == ["old.event"] * 3 + ["new.event"]
    database.dispose()
    command.downgrade(config, "0001")
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, action FROM audit_events ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "old.event"), (2, "old.event"), (3, "old.event"), (4, "new.event")]


# --- tenant chains, paging, read sessions ---------------------------------------------------------


def _insert_as_0006_sealed(url: str, owners: list[str | None]) -> None:
    """Tenants acme and globex, and one event per owner chained as revision 0006 sealed them (no tenant link)."""
    import sqlalchemy as sa

    from ledger.audit import GENESIS, link
    from ledger.db import make_engine

    at = datetime(2026, 1, 1, tzinfo=UTC)
    engine = make_engine(url)
    with engine.begin() as conn:
        for name in ("acme", "globex"):
            conn.execute(
                sa.text("INSERT INTO tenants (id, name, created_at) VALUES (:n, :n, :at)"), {"n": name, "at": at}
            )
        prev = GENESIS
        for seq, owner in enumerate(owners, start=1):
            fields = {
                "occurred_at": at + timedelta(seconds=seq),
                "tenant_id": owner,
                "actor": "system",
                "action": "old.event",
                "resource_type": "test",
                "resource_id": str(seq),
                "model_id": None,
                "request_id": None,
                "data": {"seq": seq},
            }
            body, digest = link(fields, seq=seq, prev_hash=prev)
            conn.execute(
                sa.text(
                    "INSERT INTO audit_events (seq, tenant_id, occurred_at, actor, action, resource_type, resource_id, "
                    "body, prev_hash, hash) VALUES (:seq, :tenant_id, :occurred_at, 'system', 'old.event', 'test', "
                    ":resource_id, :body, :prev, :hash)"
                ),
                {**fields, "seq": seq, "body": body, "prev": prev, "hash": digest},
            )
            prev = digest
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_tenant_chain_migration_links_existing_events_as_sealing_does(backend, tmp_path, request):
    import sqlalchemy as sa
    from alembic import command

    from ledger import audit, migrate
    from ledger.audit import GENESIS
    from ledger.db import Database, make_engine
    from ledger.tables import AuditEvent

    url = (
        f"sqlite:///{tmp_path / 'ledger.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    )
    config = migrate.alembic_config(url)
    if backend == "postgres":
        command.downgrade(config, "base")
    command.upgrade(config, "0006")
    owners = ["acme", "acme", None, "globex", "acme", "globex", None, "acme"]
    _insert_as_0006_sealed(url, owners)
    command.upgrade(config, "head")
    database = Database(url)
    with database.transaction() as session:  # sealed by today's code: each continues its tenant's backfilled chain
        for owner in ("globex", None, "acme"):
            audit.record(
                session, tenant_id=owner, actor="test", action="new.event", resource_type="test", resource_id="r"
            )
    with database.read() as session:
        rows = session.execute(
            sa.select(
                AuditEvent.tenant_id, AuditEvent.hash, AuditEvent.tenant_seq, AuditEvent.tenant_prev_hash
            ).order_by(AuditEvent.seq)
        ).all()
        heads: dict[str, tuple[int, str]] = {}
        for owner, digest, tenant_seq, tenant_prev in rows:
            expected = (
                (None, None)
                if owner is None
                else (heads.get(owner, (0, GENESIS))[0] + 1, heads.get(owner, (0, GENESIS))[1])
            )
            assert (tenant_seq, tenant_prev) == expected
            if owner is not None:
                heads[owner] = (tenant_seq, digest)
        assert {o: n for o, (n, _) in heads.items()} == {"acme": 5, "globex": 3}
        deployment = audit.verify_chain(session)
        assert deployment.valid and deployment.checked == len(owners) + 3  # old bodies and hashes kept as they were
        for owner, (count, digest) in heads.items():
            walk = audit.verify_chain(session, chain=audit.Chain(tenant_id=owner))
            assert (walk.valid, walk.checked, walk.last_seq, walk.last_hash) == (True, count, count, digest)
    database.dispose()
    engine = make_engine(url)
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="append-only"):
        conn.execute(sa.text("UPDATE audit_events SET tenant_seq = 9 WHERE seq = 1"))  # the backfill's trigger is back
    engine.dispose()
    command.downgrade(config, "0006")
    engine = make_engine(url)
    with engine.connect() as conn:
        assert "tenant_seq" not in {c["name"] for c in sa.inspect(conn).get_columns("audit_events")}
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            conn.execute(sa.text("UPDATE audit_events SET actor = 'x' WHERE seq = 1"))
    engine.dispose()


def test_a_paged_walk_covers_every_event_once_and_a_page_end_hides_no_rewrite(tmp_path):
    from sqlalchemy import text

    from ledger import audit, migrate
    from ledger.db import Database

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    database = Database(url)
    for i in range(10):
        with database.transaction() as session:
            _record(session, f"e{i}")
    with database.read() as session:
        pages, start = [], 1
        while start is not None:
            page = audit.verify_chain(session, from_seq=start, limit=3, chunk=2)
            assert page.valid and page.checked <= 3
            pages.append((page.first_seq, page.last_seq))
            start = page.next_from_seq
        assert pages == [(1, 3), (4, 6), (7, 9), (10, 10)]
        assert audit.verify_chain(session, limit=10).next_from_seq is None  # exactly at the head: nothing more
        assert audit.verify_chain(session, to_seq=6, limit=3, from_seq=4).next_from_seq is None
    # Seq 3 rewritten with a recomputed hash: the page that ends there already sees seq 4 disown it.
    conn = sqlite3.connect(tmp_path / "ledger.db")
    conn.execute("DROP TRIGGER audit_events_no_update")
    body = conn.execute("SELECT body FROM audit_events WHERE seq = 3").fetchone()[0]
    conn.execute("UPDATE audit_events SET body = ?, hash = ? WHERE seq = 3", _rewrite(body))
    conn.commit()
    conn.close()
    with database.read() as session:
        page = audit.verify_chain(session, limit=3)
        assert (page.valid, page.broken_seq, page.checked, page.last_seq, page.next_from_seq) == (False, 3, 2, 2, None)
        assert session.scalar(text("SELECT count(*) FROM audit_events")) == 10
    database.dispose()


def test_a_walk_in_a_read_session_never_blocks_a_writer_on_sqlite(tmp_path):
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from ledger import audit, migrate
    from ledger.db import Database

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    database = Database(url)
    with database.transaction() as session:
        _record(session, "before")
    committed = threading.Event()

    def write() -> None:
        with database.transaction() as session:
            _record(session, "during")
        committed.set()

    with database.read() as session:
        assert audit.verify_chain(session).checked == 1  # the read transaction is open from here on
        writer = threading.Thread(target=write)
        writer.start()
        assert committed.wait(timeout=5), "the write waited for the read session (the busy timeout is 30 s)"
        assert audit.verify_chain(session).checked == 1  # the walk keeps its snapshot
        with pytest.raises(RuntimeError, match="does not seal"):  # and a read session cannot write
            _record(session, "nowhere")
        with pytest.raises(OperationalError, match="readonly database"):
            session.execute(text("DELETE FROM tenants"))
    writer.join()
    assert [action for _, action in _chain(database)] == ["before", "during"]
    database.dispose()
