"""Webhooks: tenants register endpoints; the ledger's state changes become signed events delivered to them.

Events are born in the transaction of the change they report, from its audit events: `install`
makes a session, as it commits, turn the audit events about to be sealed (those of its savepoints
that rolled back are gone already) into webhook events, written by the same commit. So an event
exists exactly when its change commits, once. The periodic deadline pass
(`emit_deadline_events`) reports requests coming due and overdue once each, made unique by a
dedupe key. Each event gets one delivery per subscribed endpoint and each delivery an outbox row
(`DELIVER_TASK`); a worker lane (worker.webhooks) makes the HTTP call outside any transaction.

An attempt is a compare-and-set on the delivery's attempt count, held by `claimed_until` while in
flight, so a duplicate or late outbox row finds nothing to do. A failed attempt schedules the next
one through the outbox with exponential backoff; after the last one the delivery is failed. A
replay is a new delivery of the same event: the same `webhook-id`, by which receivers deduplicate.

Signing follows Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
under the endpoint's secret `whsec_<base64>`. The secret is derived from the tenant key and the
endpoint id (HMAC), so nothing secret is stored; it is shown once, at registration.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import literal, select, update
from sqlalchemy.event import listen
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ledger import audit, leases, outbox, requests, tenant_keys
from ledger.canonical import timestamp
from ledger.errors import Conflict, InvalidInput, NotFound
from ledger.pagination import Page, newest_first
from ledger.tables import DeletionRequest, WebhookDelivery, WebhookEndpoint, WebhookEvent, utcnow

DELIVER_TASK = "ltu.webhooks.deliver"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED)

REQUEST_COMPLETED = "deletion_request.completed"
REQUEST_FAILED = "deletion_request.failed"
REQUEST_CANCELLED = "deletion_request.cancelled"
VERIFICATION_FELL_BACK = "deletion_request.verification_fell_back"
REQUEST_DUE_SOON = "deletion_request.due_soon"
REQUEST_OVERDUE = "deletion_request.overdue"
ERASURE_COMPLETED = "erasure.completed"
EVENT_TYPES = (
    REQUEST_COMPLETED,
    REQUEST_FAILED,
    REQUEST_CANCELLED,
    VERIFICATION_FELL_BACK,
    REQUEST_DUE_SOON,
    REQUEST_OVERDUE,
    ERASURE_COMPLETED,
)
# Audit actions that are webhook events of the same name.
AUDITED = (REQUEST_COMPLETED, REQUEST_FAILED, REQUEST_CANCELLED, ERASURE_COMPLETED)
DEADLINES = {REQUEST_DUE_SOON: requests.DUE_SOON, REQUEST_OVERDUE: requests.OVERDUE}
DEADLINE_BATCH = 500  # requests one deadline pass reports at most per event type; the next pass goes on

ENDPOINT_DELETED = "the endpoint was deleted"
MAX_URL_LENGTH = 2000
SECRET_LABEL = b"ltu-webhook-endpoint-secret:v1:"


# --- secrets and signatures -----------------------------------------------------------------------


def endpoint_secret(tenant_key: tenant_keys.Key, endpoint_id: str) -> str:
    """The endpoint's signing secret, `whsec_<base64 of 32 bytes>`, derived from the tenant's key (never stored).

    Derived from the tenant key, not the server secret, so a rotation of the server secret leaves it as
    it is; destroying the tenant key (crypto-shredding) changes it.
    """
    key = hmac.new(tenant_key.material, SECRET_LABEL + endpoint_id.encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(key).decode()


def signature(secret: str, *, msg_id: str, sent_at: int, body: str) -> str:
    """The `webhook-signature` header value: `v1,<base64 HMAC-SHA256 of "msg_id.sent_at.body">`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{sent_at}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- destinations ---------------------------------------------------------------------------------


def address_allowed(address: str, *, allow_private: bool) -> bool:
    """Whether an IP address may be a webhook's destination: public unicast only, unless `allow_private`."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return allow_private or (ip.is_global and not ip.is_multicast)


def check_url(url: str, *, allow_private: bool) -> str:
    """`url` if it may receive webhooks; InvalidInput saying why not.

    http(s) only, no credentials in it, and (unless `allow_private`) no address literal or
    `localhost` that is not public; names are resolved and checked again at every delivery.
    """
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # the port property refuses a malformed port
    except ValueError as exc:
        raise InvalidInput(f"the webhook URL is malformed ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("a webhook URL must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("a webhook URL must not hold credentials (the signature authenticates the sender)")
    if host == "localhost" or host.endswith(".localhost"):
        host = "127.0.0.1"
    try:
        literal_address = ipaddress.ip_address(host)
    except ValueError:
        return url
    if not address_allowed(str(literal_address), allow_private=allow_private):
        raise InvalidInput(
            f"a webhook URL must reach a public address, not {host} (LTU_WEBHOOK_ALLOW_PRIVATE_ADDRESSES allows it)"
        )
    return url


# --- endpoints ------------------------------------------------------------------------------------


def register(
    session: Session, *, tenant_id: str, url: str, event_types: list[str], allow_private: bool, actor: str
) -> WebhookEndpoint:
    """A new endpoint of the tenant for `event_types` (InvalidInput for a URL it may not reach)."""
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown or not event_types:
        raise InvalidInput(f"unknown or no event types {unknown}; known: {list(EVENT_TYPES)}")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"a webhook URL has at most {MAX_URL_LENGTH} characters")
    endpoint = WebhookEndpoint(
        tenant_id=tenant_id,
        url=check_url(url, allow_private=allow_private),
        event_types=sorted(set(event_types)),
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.flush()
    # The URL stays out of the chain: it may carry a receiver's token, and the chain is immutable.
    _audit(session, endpoint, actor=actor, action="webhook.registered", data={"event_types": endpoint.event_types})
    return endpoint


def list_endpoints(session: Session, *, tenant_id: str) -> list[WebhookEndpoint]:
    """The tenant's live endpoints, oldest first."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None))
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def get_endpoint(session: Session, *, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """One endpoint of the tenant, deleted or not (NotFound otherwise)."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.tenant_id != tenant_id:
        raise NotFound(f"webhook {endpoint_id} not found")
    return endpoint


def delete_endpoint(session: Session, *, tenant_id: str, endpoint_id: str, actor: str) -> WebhookEndpoint:
    """Stop sending to an endpoint (idempotent); its pending deliveries fail, its log stays readable."""
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    if endpoint.deleted_at is None:
        endpoint.deleted_at = now = utcnow()
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == PENDING)
            .values(status=FAILED, last_error=ENDPOINT_DELETED, next_attempt_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        session.flush()
        _audit(session, endpoint, actor=actor, action="webhook.deleted", data={})
    return endpoint


def _audit(session: Session, endpoint: WebhookEndpoint, *, actor: str, action: str, data: dict[str, Any]) -> None:
    audit.record(
        session,
        tenant_id=endpoint.tenant_id,
        actor=actor,
        action=action,
        resource_type="webhook",
        resource_id=endpoint.id,
        data=data,
    )


# --- events ---------------------------------------------------------------------------------------


def install(sessions: sessionmaker) -> None:
    """Make the factory's sessions emit the webhook events of their audit events when they commit."""
    # First among the commit hooks: the audit seal empties the list of events this reads.
    listen(sessions, "before_commit", _emit_audited, insert=True)


def _emit_audited(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint's release: the outer commit emits
        return
    for fields in list(session.info.get(audit.PENDING, ())):
        on_audit_event(
            session,
            tenant_id=fields["tenant_id"],
            action=fields["action"],
            resource_id=fields["resource_id"],
            now=fields["occurred_at"],
        )


def on_audit_event(session: Session, *, tenant_id: str | None, action: str, resource_id: str, now: datetime) -> None:
    """The webhook events an audit event is, in the transaction that records it."""
    if tenant_id is None or action not in AUDITED:
        return
    if action == ERASURE_COMPLETED:
        emit(
            session, tenant_id=tenant_id, type=action, data={"erasure_id": resource_id, "status": "completed"}, now=now
        )
        return
    request = session.get(DeletionRequest, resource_id)
    data = request_data(request)
    emit(session, tenant_id=tenant_id, type=action, data=data, now=now)
    if action == REQUEST_COMPLETED and request.verification is not None and request.verification.fallback:
        emit(session, tenant_id=tenant_id, type=VERIFICATION_FELL_BACK, data=data, now=now)


def request_data(request: DeletionRequest) -> dict[str, Any]:
    """An event's `data` about a deletion request: ids and outcome, no subject (fetch the request for more)."""
    verification = request.verification
    fallback = verification.fallback if verification else None
    return {
        "request_id": request.id,
        "model_id": request.model_id,
        "erasure_id": request.erasure_id,
        "status": request.status,
        "due_at": timestamp(request.due_at),
        "result_version": request.result_version,
        "verification_passed": verification.passed if verification else None,
        "fallback": {"method": fallback.method, "reason": fallback.reason} if fallback else None,
        "error_code": request.error_code,
    }


def emit(
    session: Session,
    *,
    tenant_id: str,
    type: str,
    data: dict[str, Any],
    now: datetime,
    dedupe_key: str | None = None,
) -> WebhookEvent | None:
    """An event and a delivery to each live endpoint of the tenant subscribed to `type` (flushed, not
    committed); None when no endpoint subscribes. IntegrityError if `dedupe_key` was used before."""
    endpoints = [e for e in list_endpoints(session, tenant_id=tenant_id) if type in e.event_types]
    if not endpoints:
        return None
    event_id = "msg_" + uuid.uuid4().hex
    body = {"type": type, "timestamp": timestamp(now), "data": data}
    event = WebhookEvent(
        id=event_id,
        tenant_id=tenant_id,
        type=type,
        body=json.dumps(body, sort_keys=True, separators=(",", ":")),
        dedupe_key=dedupe_key,
        created_at=now,
    )
    session.add(event)
    session.flush()
    for endpoint in endpoints:
        _new_delivery(session, event_id=event_id, endpoint_id=endpoint.id, now=now)
    return event


def _new_delivery(
    session: Session, *, event_id: str, endpoint_id: str, now: datetime, replay_of: str | None = None
) -> WebhookDelivery:
    delivery = WebhookDelivery(
        event_id=event_id,
        endpoint_id=endpoint_id,
        replay_of=replay_of,
        status=PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(delivery)
    session.flush()
    outbox.enqueue(session, task_name=DELIVER_TASK, payload={"delivery_id": delivery.id, "attempt": 1})
    return delivery


def emit_deadline_events(session: Session, *, now: datetime, due_soon: timedelta) -> int:
    """Report each open request once when it comes due soon and once when it is overdue; how many events.

    Only tenants with an endpoint subscribed are looked at; a request reported before (its dedupe
    key exists) is not reported again, also when two passes run at once (the key is unique).
    """
    emitted = 0
    live = list(session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.deleted_at.is_(None))))
    for type, deadline in DEADLINES.items():
        tenants = {e.tenant_id for e in live if type in e.event_types}
        if not tenants:
            continue
        reported = select(WebhookEvent.id).where(
            WebhookEvent.tenant_id == DeletionRequest.tenant_id,
            WebhookEvent.dedupe_key == literal(f"{type}:") + DeletionRequest.id,
        )
        due = (
            select(DeletionRequest)
            .where(
                DeletionRequest.tenant_id.in_(tenants),
                requests.deadline_condition(deadline, now=now, due_soon=due_soon),
                ~reported.exists(),
            )
            .order_by(DeletionRequest.due_at)
            .limit(DEADLINE_BATCH)
        )
        for request in session.scalars(due).all():
            emitted += _emit_once(session, request, type=type, now=now)
    return emitted


def _emit_once(session: Session, request: DeletionRequest, *, type: str, now: datetime) -> int:
    try:
        with session.begin_nested():
            emit(
                session,
                tenant_id=request.tenant_id,
                type=type,
                data=request_data(request),
                now=now,
                dedupe_key=f"{type}:{request.id}",
            )
    except IntegrityError:  # another pass reported it first
        return 0
    return 1


# --- the delivery log and replays ----------------------------------------------------------------


def list_deliveries(
    session: Session,
    *,
    tenant_id: str,
    endpoint_id: str,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[WebhookDelivery]:
    """An endpoint's deliveries, newest first (NotFound for another tenant's endpoint)."""
    get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    return newest_first(
        session,
        query,
        time_column=WebhookDelivery.created_at,
        id_column=WebhookDelivery.id,
        cursor=cursor,
        limit=limit,
    )


def events_of(session: Session, deliveries: list[WebhookDelivery]) -> dict[str, WebhookEvent]:
    """The events of `deliveries` by id, in one query."""
    ids = {d.event_id for d in deliveries}
    return {e.id: e for e in session.scalars(select(WebhookEvent).where(WebhookEvent.id.in_(ids)))} if ids else {}


def replay(session: Session, *, tenant_id: str, endpoint_id: str, delivery_id: str, actor: str) -> WebhookDelivery:
    """A new delivery of a delivery's event to its endpoint (same webhook-id); Conflict if the endpoint is deleted."""
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    original = session.get(WebhookDelivery, delivery_id)
    if original is None or original.endpoint_id != endpoint.id:
        raise NotFound(f"delivery {delivery_id} of webhook {endpoint_id} not found")
    if endpoint.deleted_at is not None:
        raise Conflict(f"webhook {endpoint_id} was deleted; register an endpoint again to receive events")
    delivery = _new_delivery(
        session, event_id=original.event_id, endpoint_id=endpoint.id, now=utcnow(), replay_of=original.id
    )
    _audit(
        session,
        endpoint,
        actor=actor,
        action="webhook.delivery_replayed",
        data={"event_id": original.event_id, "delivery_id": delivery.id, "replay_of": original.id},
    )
    return delivery


# --- attempts (the worker lane) -------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One claimed attempt: what to send where."""

    delivery_id: str
    number: int  # 1 for the first attempt
    url: str
    endpoint_id: str
    event_id: str
    body: str
    signing_secret: str = field(repr=False)


def begin_attempt(
    session: Session, *, delivery_id: str, number: int, hold: timedelta, now: datetime, server_secret: str
) -> Attempt | None:
    """Claim attempt `number` of a delivery for `hold`; None when it is not that attempt's turn (done,
    failed, another attempt, or one in flight)."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.status != PENDING or delivery.attempts != number - 1:
        return None
    claimed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == PENDING,
            WebhookDelivery.attempts == number - 1,
            (WebhookDelivery.claimed_until.is_(None)) | (WebhookDelivery.claimed_until < now),
        )
        .values(claimed_until=now + hold)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        return None
    endpoint, event = session.get(WebhookEndpoint, delivery.endpoint_id), session.get(WebhookEvent, delivery.event_id)
    tenant_key = tenant_keys.current(session, tenant_id=endpoint.tenant_id, secret=server_secret)
    return Attempt(
        delivery_id, number, endpoint.url, endpoint.id, event.id, event.body, endpoint_secret(tenant_key, endpoint.id)
    )


def finish_attempt(
    session: Session,
    attempt: Attempt,
    *,
    status_code: int | None,
    error: str | None,
    max_attempts: int,
    backoff_first: float,
    backoff_cap: float,
    now: datetime,
) -> str | None:
    """Record an attempt's outcome: delivered on a 2xx, else the next attempt through the outbox after the
    backoff, or failed after `max_attempts`. The delivery's new status; None if the claim was lost."""
    values: dict[str, Any] = {"attempts": attempt.number, "last_status_code": status_code, "last_error": error}
    delay = leases.backoff(attempt.number - 1, first=backoff_first, cap=backoff_cap)
    if status_code is not None and 200 <= status_code < 300:
        status, values["delivered_at"] = DELIVERED, now
    elif attempt.number >= max_attempts:
        status = FAILED
    else:
        status, values["next_attempt_at"] = PENDING, now + timedelta(seconds=delay)
    if not _settle(session, attempt.delivery_id, attempt.number - 1, status=status, now=now, **values):
        return None
    if status == PENDING:
        payload = {"delivery_id": attempt.delivery_id, "attempt": attempt.number + 1}
        outbox.enqueue(session, task_name=DELIVER_TASK, payload=payload, delay=delay)
    return status


def _settle(
    session: Session, delivery_id: str, attempts_before: int, *, status: str, now: datetime, **values: Any
) -> bool:
    """Compare-and-set a pending delivery still at `attempts_before` finished attempts."""
    return (
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == PENDING,
                WebhookDelivery.attempts == attempts_before,
            )
            .values(**{"claimed_until": None, "next_attempt_at": None, **values}, status=status, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
