"""The claim: take a waiting request, and the waiting requests it can share a run with, under one lease."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from ledger import requests
from ledger.errors import ModelBusy
from ledger.tables import QUEUED, RECEIVED, RUNNING, utcnow
from worker.attempt import Attempt, JobOutcome
from worker.context import JobContext

log = logging.getLogger("ltu.worker")


def claim(ctx: JobContext, request_id: str, *, stopping: Callable[[], bool] = lambda: False) -> Attempt | JobOutcome:
    """An Attempt holding the request and the waiting requests it coalesces with, else why not.

    HELD: another live execution holds it (the reconciler requeues it if that one dies). WAITING:
    another live run holds its model. BUSY: startable, but it kept changing under the claim.
    SKIPPED: finished or cancelled already.
    """
    token = str(uuid.uuid4())
    try:
        request_ids = _claim_run(ctx, request_id, token)
    except ModelBusy as busy:
        log.info("request %s: waits its turn (%s)", request_id, busy)
        return JobOutcome.WAITING
    if request_ids:
        if len(request_ids) > 1:
            log.info(
                "request %s: coalesced with %d waiting request(s) on the same model", request_id, len(request_ids) - 1
            )
        return Attempt(ctx, request_ids, token, stopping=stopping)
    return _why_not(ctx, request_id)


def _claim_run(ctx: JobContext, request_id: str, token: str) -> list[str]:
    """The ids the claim took under `token`: the request first, then its coalesced siblings (none: not taken)."""
    settings = ctx.settings.worker
    with ctx.database.transaction() as session:
        leader = requests.claim(
            session,
            request_id=request_id,
            token=token,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
        siblings = (
            []
            if leader is None
            else requests.claim_siblings(
                session,
                leader=leader,
                lease_seconds=settings.lease_seconds,
                max_attempts=settings.max_attempts,
                limit=settings.coalesce_max_batch - 1,
            )
        )
        return [] if leader is None else [leader.id, *(s.id for s in siblings)]


def _why_not(ctx: JobContext, request_id: str) -> JobOutcome:
    with ctx.database.session() as session:
        current = requests.load(session, request_id=request_id)
    if current is not None and current.status == RUNNING:
        log.info(
            "request %s: held by a live execution (batch %s); the reconciler requeues it if that dies",
            request_id,
            current.batch_id or request_id,
        )
        return JobOutcome.HELD
    if current is not None and current.status in (RECEIVED, QUEUED):
        log.info("request %s: %s but the claim kept losing races; try again shortly", request_id, current.status)
        return JobOutcome.BUSY
    log.info("request %s: nothing to do (finished or cancelled)", request_id)
    return JobOutcome.SKIPPED


def wait_for_coalescing(ctx: JobContext, request_id: str) -> None:
    """Give requests submitted together a moment to arrive: wait until `coalesce_window_seconds` after receipt.

    Only a waiting request younger than the window waits, so a backlog (or a requeued request)
    starts at once.
    """
    window = ctx.settings.worker.coalesce_window_seconds
    if window <= 0 or ctx.settings.worker.coalesce_max_batch <= 1:
        return
    with ctx.database.session() as session:
        request = requests.load(session, request_id=request_id)
        if request is None or request.status not in (RECEIVED, QUEUED):
            return
        remaining = (request.received_at - utcnow()).total_seconds() + window
    if remaining > 0:
        time.sleep(min(remaining, window))
