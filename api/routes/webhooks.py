"""Webhook endpoints of the caller's tenant, their delivery log and replays (admin scope)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from api.deps import AdminKey, SessionDep, SettingsDep, actor
from api.routes.common import problems
from api.schemas import (
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryPage,
    WebhookDeliveryRead,
    WebhookPage,
    WebhookRead,
)
from ledger import tenant_keys, webhooks
from ledger.tables import WebhookDelivery

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=201, response_model=WebhookCreated, responses=problems(400, 413))
def create_webhook(
    body: WebhookCreate, response: Response, session: SessionDep, settings: SettingsDep, key: AdminKey
) -> WebhookCreated:
    """Register an endpoint; its signing secret is returned once."""
    endpoint = webhooks.register(
        session,
        tenant_id=key.tenant_id,
        url=body.url,
        event_types=list(body.event_types),
        allow_private=settings.ledger.webhook_allow_private_addresses,
        actor=actor(key),
    )
    response.headers["Location"] = f"/v1/webhooks/{endpoint.id}"
    tenant_key = tenant_keys.current(session, tenant_id=key.tenant_id, secret=settings.ledger.secret_key)
    secret = webhooks.endpoint_secret(tenant_key, endpoint.id)
    return WebhookCreated(**WebhookRead.model_validate(endpoint).model_dump(), secret=secret)


@router.get("", response_model=WebhookPage, responses=problems())
def list_webhooks(session: SessionDep, key: AdminKey) -> WebhookPage:
    """The tenant's live endpoints (secrets are never shown again)."""
    endpoints = webhooks.list_endpoints(session, tenant_id=key.tenant_id)
    return WebhookPage(items=[WebhookRead.model_validate(e) for e in endpoints])


@router.get("/{webhook_id}", response_model=WebhookRead, responses=problems(404))
def get_webhook(webhook_id: str, session: SessionDep, key: AdminKey) -> WebhookRead:
    """One endpoint, deleted or not."""
    return WebhookRead.model_validate(webhooks.get_endpoint(session, tenant_id=key.tenant_id, endpoint_id=webhook_id))


@router.delete("/{webhook_id}", response_model=WebhookRead, responses=problems(404))
def delete_webhook(webhook_id: str, session: SessionDep, key: AdminKey) -> WebhookRead:
    """Stop sending to an endpoint: its pending deliveries fail; its delivery log stays readable."""
    endpoint = webhooks.delete_endpoint(session, tenant_id=key.tenant_id, endpoint_id=webhook_id, actor=actor(key))
    return WebhookRead.model_validate(endpoint)


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryPage, responses=problems(404))
def list_deliveries(
    webhook_id: str,
    session: SessionDep,
    key: AdminKey,
    status: DeliveryStatus | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> WebhookDeliveryPage:
    """The endpoint's deliveries, newest first: status, attempts, the receiver's last answer and the body sent."""
    page = webhooks.list_deliveries(
        session, tenant_id=key.tenant_id, endpoint_id=webhook_id, status=status, cursor=cursor, limit=limit
    )
    return WebhookDeliveryPage(items=delivery_reads(session, page.items), next_cursor=page.next_cursor)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=WebhookDeliveryRead,
    responses=problems(404, 409),
)
def replay_delivery(webhook_id: str, delivery_id: str, session: SessionDep, key: AdminKey) -> WebhookDeliveryRead:
    """Send a delivery's event again, as a new delivery with the same `webhook-id` (receivers deduplicate by it)."""
    delivery = webhooks.replay(
        session, tenant_id=key.tenant_id, endpoint_id=webhook_id, delivery_id=delivery_id, actor=actor(key)
    )
    return delivery_reads(session, [delivery])[0]


def delivery_reads(session: Session, deliveries: list[WebhookDelivery]) -> list[WebhookDeliveryRead]:
    """Response bodies for deliveries, with their events' types and bodies."""
    events = webhooks.events_of(session, deliveries)
    return [
        WebhookDeliveryRead(
            id=d.id,
            event_id=d.event_id,
            event_type=events[d.event_id].type,  # type: ignore[arg-type]
            replay_of=d.replay_of,
            status=d.status,  # type: ignore[arg-type]
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            updated_at=d.updated_at,
            delivered_at=d.delivered_at,
            payload=json.loads(events[d.event_id].body),
        )
        for d in deliveries
    ]
