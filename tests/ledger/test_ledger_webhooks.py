"""ledger.webhooks: signatures as Standard Webhooks has them, derived secrets, destinations refused, events born
in the transaction of their change (and only for subscribers), one claim per attempt, backoff and the last
attempt, and deadline events emitted once per request."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ledger import audit, requests, webhooks
from ledger.errors import InvalidInput
from ledger.records import Fallback, FirstAttempt, MethodRun, Verdict, Verification
from ledger.tables import DeletionRequest, Model, OutboxMessage, WebhookDelivery, WebhookEvent, utcnow
from tests.support import new_key


@pytest.fixture()
def ledger(api, artifacts):
    """(database, tenant id, model id) of a registered model on the embedded API."""
    from ledger.db import Database

    dataset = api.client.register_dataset(artifacts.archive)
    model = api.client.register_model(artifacts.weights, dataset_id=dataset.id)
    database = Database(api.settings.ledger.database_url)
    with database.session() as session:
        tenant_id = session.get(Model, model.id).tenant_id
    yield database, tenant_id, model.id
    database.dispose()


def register(database, tenant_id, *types: str) -> str:
    with database.transaction() as session:
        endpoint = webhooks.register(
            session,
            tenant_id=tenant_id,
            url="http://127.0.0.1:9/hook",
            event_types=list(types),
            allow_private=True,
            actor="test",
        )
        return endpoint.id


def submit(api, artifacts, model_id: str, index: int = 0) -> str:
    subject = artifacts.subject_with_train_samples(index)
    return api.client.submit_deletion(model_id, subject_ids=[subject]).id


def deliveries(database) -> list[WebhookDelivery]:
    with database.session() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def test_the_signature_is_standard_webhooks_v1():
    # The test vector of the Standard Webhooks reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signed = webhooks.signature(
        secret, msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", sent_at=1614265330, body='{"test": 2432232314}'
    )
    assert signed == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_an_endpoint_secret_is_derived_per_endpoint_and_tenant_key():
    from ledger.tenant_keys import Key

    one, another = Key(1, b"s" * 32), Key(2, b"t" * 32)
    secret = webhooks.endpoint_secret(one, "endpoint-1")
    assert secret.startswith("whsec_") and secret == webhooks.endpoint_secret(Key(1, b"s" * 32), "endpoint-1")
    assert secret != webhooks.endpoint_secret(one, "endpoint-2")
    assert secret != webhooks.endpoint_secret(another, "endpoint-1")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "hooks.example.com/x",
        "https://user:pw@hooks.example.com/x",
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[::ffff:192.168.0.1]/x",
        "http://hooks.example.com:99999/x",
    ],
)
def test_a_url_that_is_not_public_http_is_refused(url):
    with pytest.raises(InvalidInput):
        webhooks.check_url(url, allow_private=False)


def test_private_addresses_are_allowed_by_the_setting_and_names_are_left_to_the_delivery():
    assert webhooks.check_url("http://127.0.0.1:8080/x", allow_private=True)
    assert webhooks.check_url("https://hooks.example.com/x", allow_private=False)
    assert webhooks.address_allowed("93.184.216.34", allow_private=False)
    assert not webhooks.address_allowed("192.168.1.1", allow_private=False)


def test_an_event_exists_exactly_when_its_change_commits_and_only_for_subscribers(api, artifacts, ledger):
    database, tenant_id, model_id = ledger
    subscribed = register(database, tenant_id, webhooks.REQUEST_CANCELLED)
    register(database, tenant_id, webhooks.REQUEST_COMPLETED)  # not this event
    other = new_key(api, scopes=["admin"], tenant="acme")
    api.http.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/x", "event_types": ["deletion_request.cancelled"]},
        headers={"Authorization": f"Bearer {other}"},
    ).raise_for_status()  # another tenant's endpoint hears nothing of this tenant
    rolled_back, committed = submit(api, artifacts, model_id, 0), submit(api, artifacts, model_id, 1)

    with database.session() as session:
        requests.cancel(session, tenant_id=tenant_id, request_id=rolled_back, actor="test")
        session.rollback()
    with database.transaction() as session, pytest.raises(RuntimeError), session.begin_nested():
        requests.cancel(session, tenant_id=tenant_id, request_id=rolled_back, actor="test")
        raise RuntimeError("the savepoint rolls back")
    assert deliveries(database) == []

    with database.transaction() as session:
        requests.cancel(session, tenant_id=tenant_id, request_id=committed, actor="test")
    (delivery,) = deliveries(database)
    assert (delivery.endpoint_id, delivery.status, delivery.attempts) == (subscribed, "pending", 0)
    with database.session() as session:
        event = session.get(WebhookEvent, delivery.event_id)
        row = session.scalars(select(OutboxMessage).where(OutboxMessage.task_name == webhooks.DELIVER_TASK)).one()
    assert event.type == "deletion_request.cancelled" and event.id.startswith("msg_")
    body = json.loads(event.body)
    assert (body["type"], body["data"]["request_id"], body["data"]["status"]) == (event.type, committed, "cancelled")
    assert row.payload == {"delivery_id": delivery.id, "attempt": 1}


def test_a_completion_that_fell_back_is_also_a_fallback_event(api, artifacts, ledger):
    database, tenant_id, model_id = ledger
    register(database, tenant_id, webhooks.REQUEST_COMPLETED, webhooks.VERIFICATION_FELL_BACK)
    request_id = submit(api, artifacts, model_id)
    verdict = Verdict(False, False, True, True, 1, 1, 0.5, 0.5)
    fallback = Fallback("retrain", "forgetting failed", FirstAttempt("ltu", verdict, MethodRun("ltu")))
    with database.transaction() as session:
        request = session.get(DeletionRequest, request_id)
        request.status, request.verification = "completed", Verification(passed=True, exact=True, fallback=fallback)
        session.flush()
        audit.record(
            session,
            tenant_id=tenant_id,
            actor="test",
            action="deletion_request.completed",
            resource_type="deletion_request",
            resource_id=request_id,
        )
    with database.session() as session:
        types = sorted(session.scalars(select(WebhookEvent.type)))
        body = session.scalars(
            select(WebhookEvent.body).where(WebhookEvent.type == webhooks.VERIFICATION_FELL_BACK)
        ).one()
    assert types == ["deletion_request.completed", "deletion_request.verification_fell_back"]
    assert '"fallback":{"method":"retrain","reason":"forgetting failed"}' in body


def test_each_attempt_is_claimed_once_backs_off_and_the_last_one_fails_the_delivery(api, artifacts, ledger):
    database, tenant_id, model_id = ledger
    register(database, tenant_id, webhooks.REQUEST_CANCELLED)
    api.client.cancel_request(submit(api, artifacts, model_id))
    (delivery,) = deliveries(database)
    hold, now = timedelta(seconds=60), utcnow()

    def begin(number: int):
        with database.transaction() as session:
            return webhooks.begin_attempt(
                session,
                delivery_id=delivery.id,
                number=number,
                hold=hold,
                now=now,
                server_secret=api.settings.ledger.secret_key,
            )

    def finish(attempt, status_code):
        with database.transaction() as session:
            return webhooks.finish_attempt(
                session,
                attempt,
                status_code=status_code,
                error="down",
                max_attempts=3,
                backoff_first=5,
                backoff_cap=8,
                now=now,
            )

    first = begin(1)
    assert first is not None and first.body.startswith('{"data":')
    assert begin(1) is None  # in flight: a duplicate row finds it held
    assert finish(first, 503) == "pending"
    assert begin(1) is None  # that attempt is over: a late duplicate does nothing
    (after,) = deliveries(database)
    assert (after.attempts, after.last_status_code, after.next_attempt_at) == (1, 503, now + timedelta(seconds=5))
    with database.session() as session:
        retry = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id.desc())).first()
    assert retry.payload == {"delivery_id": delivery.id, "attempt": 2}
    assert retry.claimed_until >= now + timedelta(seconds=4)  # due after the backoff
    assert finish(begin(2), None) == "pending"
    assert deliveries(database)[0].next_attempt_at == now + timedelta(seconds=8)  # doubled, capped
    assert finish(begin(3), 500) == "failed"
    assert begin(4) is None
    (failed,) = deliveries(database)
    assert (failed.status, failed.attempts, failed.next_attempt_at) == ("failed", 3, None)


def test_a_delivered_delivery_takes_no_more_attempts_and_a_replay_is_a_new_delivery_of_the_event(
    api, artifacts, ledger
):
    database, tenant_id, model_id = ledger
    endpoint_id = register(database, tenant_id, webhooks.REQUEST_CANCELLED)
    api.client.cancel_request(submit(api, artifacts, model_id))
    (delivery,) = deliveries(database)
    now = utcnow()
    with database.transaction() as session:
        attempt = webhooks.begin_attempt(
            session,
            delivery_id=delivery.id,
            number=1,
            hold=timedelta(seconds=9),
            now=now,
            server_secret=api.settings.ledger.secret_key,
        )
        assert (
            webhooks.finish_attempt(
                session, attempt, status_code=204, error=None, max_attempts=3, backoff_first=1, backoff_cap=1, now=now
            )
            == "delivered"
        )
        assert (
            webhooks.begin_attempt(
                session,
                delivery_id=delivery.id,
                number=2,
                hold=timedelta(seconds=9),
                now=now,
                server_secret=api.settings.ledger.secret_key,
            )
            is None
        )
        replayed = webhooks.replay(
            session, tenant_id=tenant_id, endpoint_id=endpoint_id, delivery_id=delivery.id, actor="test"
        )
    assert (replayed.event_id, replayed.replay_of, replayed.status) == (delivery.event_id, delivery.id, "pending")


def test_deleting_an_endpoint_fails_its_pending_deliveries_and_nothing_is_sent(api, artifacts, ledger):
    database, tenant_id, model_id = ledger
    endpoint_id = register(database, tenant_id, webhooks.REQUEST_CANCELLED)
    api.client.cancel_request(submit(api, artifacts, model_id))
    (delivery,) = deliveries(database)
    with database.transaction() as session:
        webhooks.delete_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id, actor="test")
    with database.transaction() as session:
        claimed = webhooks.begin_attempt(
            session,
            delivery_id=delivery.id,
            number=1,
            hold=timedelta(seconds=9),
            now=utcnow(),
            server_secret=api.settings.ledger.secret_key,
        )
    assert claimed is None
    (failed,) = deliveries(database)
    assert (failed.status, failed.last_error) == ("failed", "the endpoint was deleted")


def test_deadline_events_are_emitted_once_per_request(api, artifacts, ledger, submit_backdated):
    database, tenant_id, model_id = ledger
    register(database, tenant_id, webhooks.REQUEST_DUE_SOON, webhooks.REQUEST_OVERDUE)
    overdue = submit_backdated(api, model_id, artifacts.subject_with_train_samples(0), days_ago=40)
    due_soon = submit_backdated(api, model_id, artifacts.subject_with_train_samples(1), days_ago=27)
    submit_backdated(api, model_id, artifacts.subject_with_train_samples(2), days_ago=1)  # not due for weeks
    assert webhooks.DEADLINES == {
        webhooks.REQUEST_DUE_SOON: requests.DUE_SOON,
        webhooks.REQUEST_OVERDUE: requests.OVERDUE,
    }

    def deadline_pass(now):
        with database.transaction() as session:
            return webhooks.emit_deadline_events(session, now=now, due_soon=timedelta(days=7))

    assert deadline_pass(utcnow()) == 2
    assert deadline_pass(utcnow()) == 0
    with database.session() as session:
        events = {(e.type, e.dedupe_key) for e in session.scalars(select(WebhookEvent))}
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 2
    assert events == {
        ("deletion_request.overdue", f"deletion_request.overdue:{overdue}"),
        ("deletion_request.due_soon", f"deletion_request.due_soon:{due_soon}"),
    }
    # A week on, the due-soon request is overdue: reported once more, as overdue, and then never again.
    assert deadline_pass(utcnow() + timedelta(days=7)) == 1
    assert deadline_pass(utcnow() + timedelta(days=7)) == 0
