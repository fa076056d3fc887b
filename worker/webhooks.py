"""Delivering webhooks: the lane that takes `ltu.webhooks.deliver` rows from the outbox and makes the HTTP calls.

Both runners start one (`webhook_lane`): the embedded runner as its third lane, the Celery worker
in its main process beside the relay (which leaves these rows alone: a delivery needs no GPU and
must never wait behind one). Each row is one attempt: claimed in one transaction, sent with no
transaction open, recorded in another (ledger.webhooks). The call has a timeout, follows no
redirect and reads no response body; the destination's addresses are resolved and checked first,
so a name that points at a private address is refused unless LTU_WEBHOOK_ALLOW_PRIVATE_ADDRESSES.

Delivery is at least once: a process that dies after the receiver answered but before the outcome
was recorded sends the attempt again once its claim expires. Receivers deduplicate by `webhook-id`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlsplit

import httpx

from ledger import webhooks
from ledger.db import Database
from ledger.tables import utcnow
from ltu_settings import Settings
from worker.dispatch import OutboxDispatcher

log = logging.getLogger("ltu.webhooks")

USER_AGENT = "ltu-webhooks/1"


def attempt_hold(settings: Settings) -> timedelta:
    """How long an attempt in flight holds its delivery: the call's phases each get the timeout, plus slack."""
    return timedelta(seconds=4 * settings.worker.webhook_timeout_seconds + 30)


def deliver(database: Database, settings: Settings, *, delivery_id: str, attempt: int) -> str | None:
    """Make one attempt of a delivery; its new status, or None when it was not this attempt's turn."""
    with database.transaction() as session:
        claimed = webhooks.begin_attempt(
            session,
            delivery_id=delivery_id,
            number=attempt,
            hold=attempt_hold(settings),
            now=utcnow(),
            server_secret=settings.ledger.secret_key,
        )
    if claimed is None:
        return None
    status_code, error = send(claimed, settings)
    with database.transaction() as session:
        status = webhooks.finish_attempt(
            session,
            claimed,
            status_code=status_code,
            error=error,
            max_attempts=settings.worker.webhook_max_attempts,
            backoff_first=settings.worker.webhook_backoff_seconds,
            backoff_cap=settings.worker.webhook_backoff_cap_seconds,
            now=utcnow(),
        )
    level = logging.INFO if status == webhooks.DELIVERED else logging.WARNING
    log.log(level, "webhook delivery %s attempt %d: %s (%s)", delivery_id, attempt, status, error or status_code)
    return status


def send(attempt: webhooks.Attempt, settings: Settings) -> tuple[int | None, str | None]:
    """POST the event, signed; (status code, None) when the receiver answered, (None, why) when not."""
    refused = refused_destination(attempt.url, allow_private=settings.ledger.webhook_allow_private_addresses)
    if refused:
        return None, refused
    sent_at = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": attempt.event_id,
        "webhook-timestamp": str(sent_at),
        "webhook-signature": webhooks.signature(
            attempt.signing_secret, msg_id=attempt.event_id, sent_at=sent_at, body=attempt.body
        ),
    }
    try:
        with (
            httpx.Client(timeout=settings.worker.webhook_timeout_seconds, follow_redirects=False) as client,
            client.stream("POST", attempt.url, content=attempt.body.encode(), headers=headers) as response,
        ):
            code = response.status_code
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    return code, None if 200 <= code < 300 else f"the receiver answered {code}"


def refused_destination(url: str, *, allow_private: bool) -> str | None:
    """Why `url` may not be called now (its name resolves to a non-public address, or not at all); None if it may."""
    if allow_private:
        return None
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError as exc:
        return f"cannot resolve {parts.hostname}: {exc}"
    for *_, sockaddr in infos:
        address = sockaddr[0].split("%")[0]  # an IPv6 address may carry its zone
        if not webhooks.address_allowed(address, allow_private=False):
            return f"{parts.hostname} resolves to {address}, not a public address"
    return None


def webhook_lane(
    settings: Settings, database: Database, *, stopping: Callable[[], bool], name: str
) -> OutboxDispatcher:
    """An outbox dispatcher that makes webhook delivery attempts in its own thread."""

    def handle(task_name: str, payload: dict) -> None:
        deliver(database, settings, delivery_id=payload["delivery_id"], attempt=payload["attempt"])

    return OutboxDispatcher(
        database,
        handle,
        task_names=(webhooks.DELIVER_TASK,),
        name=name,
        poll_interval=settings.worker.poll_interval,
        # The row stays claimed while its attempt is in flight, and longer than the attempt holds its delivery.
        claim_seconds=attempt_hold(settings).total_seconds() + 30,
        stopping=stopping,
    )
