"""Per-API-key token buckets in the ledger, so every API process draws from the same bucket.

A bucket holds up to `burst` tokens and refills at `per_minute` tokens a minute; a submission
takes one. The row is read with SELECT ... FOR UPDATE (Postgres) inside the caller's transaction;
SQLite's BEGIN IMMEDIATE (ledger.db) already serialises writers. The caller's transaction
decides whether the token is spent: the API takes it in the same transaction that stores the
request, so a submission that is refused for another reason (404, 422) rolls it back. Holding the
row lock until then serialises one key's submissions, which the limit caps anyway; other keys'
buckets are other rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ledger.tables import RateLimitBucket, utcnow


@dataclass(frozen=True)
class Decision:
    """Whether a token was taken; if not, the whole seconds until one is available."""

    allowed: bool
    remaining: float  # tokens left in the bucket after this decision
    retry_after: int = 0


def take(session: Session, *, api_key_id: str, per_minute: int, burst: int, now: datetime | None = None) -> Decision:
    """Take one token from the key's bucket (created full on first use); flushed, not committed."""
    if per_minute < 1 or burst < 1:
        raise ValueError("per_minute and burst must be at least 1")
    now = now or utcnow()
    bucket = _locked(session, api_key_id)
    if bucket is None:
        try:
            with session.begin_nested():
                session.add(RateLimitBucket(api_key_id=api_key_id, tokens=float(burst), refilled_at=now))
        except IntegrityError:  # another process created it first; its row is locked below
            pass
        bucket = _locked(session, api_key_id)
        assert bucket is not None
    # A clock behind the last refill (another API host's) adds nothing rather than going negative.
    elapsed = max(0.0, (now - bucket.refilled_at).total_seconds())
    tokens = min(float(burst), bucket.tokens + elapsed * per_minute / 60.0)
    bucket.refilled_at = max(now, bucket.refilled_at)
    if tokens >= 1.0:
        bucket.tokens = tokens - 1.0
        session.flush()
        return Decision(allowed=True, remaining=bucket.tokens)
    bucket.tokens = tokens
    session.flush()
    return Decision(allowed=False, remaining=tokens, retry_after=max(1, math.ceil((1.0 - tokens) * 60.0 / per_minute)))


def _locked(session: Session, api_key_id: str) -> RateLimitBucket | None:
    return session.scalar(
        select(RateLimitBucket)
        .where(RateLimitBucket.api_key_id == api_key_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
