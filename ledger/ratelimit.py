"""Per-API-key token buckets in the ledger, so every API process draws from the same bucket.

A bucket holds up to `burst` tokens and refills at `per_minute` tokens a minute; a submission
takes one. Taking it is one statement inside the caller's transaction: an INSERT ... ON CONFLICT
DO UPDATE that creates the bucket on first use and otherwise refills it and takes a token only
WHERE the refilled bucket holds one, returning what is left. The database evaluates the refill
on the row's newest version under its row lock (Postgres; SQLite's BEGIN IMMEDIATE, ledger.db,
serialises writers already), so concurrent processes never both spend the last token. A refusal
writes nothing: the refill is continuous, so leaving it to the next take changes no decision.
The caller's transaction decides whether the token is spent: the API takes it in the same
transaction that stores the request, so a submission that is refused for another reason (404,
422) rolls it back. Holding the row lock until then serialises one key's submissions, which the
limit caps anyway; other keys' buckets are other rows.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BindParameter, ColumnElement, Float, Insert, Integer, bindparam, cast, extract, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ledger.errors import RateLimited
from ledger.tables import RateLimitBucket, UTCDateTime, utcnow

BUCKETS = RateLimitBucket.__table__


@dataclass(frozen=True)
class Decision:
    """Whether a token was taken; if not, the whole seconds until one is available."""

    allowed: bool
    remaining: float  # tokens left in the bucket after this decision
    retry_after: int = 0


def take(session: Session, *, api_key_id: str, per_minute: int, burst: int, now: datetime | None = None) -> Decision:
    """Take one token from the key's bucket (created full on first use); written, not committed."""
    if per_minute < 1 or burst < 1:
        raise ValueError("per_minute and burst must be at least 1")
    now = now or utcnow()
    parameters = {"api_key_id": api_key_id, "now": now, "burst": float(burst), "per_second": per_minute / 60.0}
    remaining = session.execute(_take_statement(session.get_bind().dialect.name), parameters).scalar()
    if remaining is not None:
        return Decision(allowed=True, remaining=remaining)
    # Refused: the bucket exists and holds less than a token. Its state only says when the next one comes.
    tokens, refilled_at = session.execute(
        select(BUCKETS.c.tokens, BUCKETS.c.refilled_at).where(BUCKETS.c.api_key_id == api_key_id)
    ).one()
    # A clock behind the last refill (another API host's) adds nothing rather than going negative.
    tokens = min(float(burst), tokens + max(0.0, (now - refilled_at).total_seconds()) * per_minute / 60.0)
    return Decision(allowed=False, remaining=tokens, retry_after=max(1, math.ceil((1.0 - tokens) * 60.0 / per_minute)))


def charge(session: Session, *, api_key_id: str, per_minute: int, burst: int) -> None:
    """`take` for a submission: RateLimited (with Retry-After) when the key's bucket is empty.

    The submission is already added then, so the caller rolls back, which also gives back the bucket's row.
    """
    decision = take(session, api_key_id=api_key_id, per_minute=per_minute, burst=burst)
    if not decision.allowed:
        raise RateLimited(
            f"this API key may submit {per_minute} requests a minute (bursts of {burst}); "
            f"retry in {decision.retry_after} s",
            retry_after=decision.retry_after,
        )


@functools.cache
def _take_statement(dialect: str) -> Insert:
    """The one statement of a take, built once per dialect (its values are bound parameters)."""
    now, burst = bindparam("now", type_=UTCDateTime()), bindparam("burst", type_=Float())
    refilled = _refilled(dialect, now=now, burst=burst, per_second=bindparam("per_second", type_=Float()))
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(BUCKETS)
    return (
        insert.values(api_key_id=bindparam("api_key_id"), tokens=burst - 1.0, refilled_at=now)
        .on_conflict_do_update(
            index_elements=[BUCKETS.c.api_key_id],
            set_={
                "tokens": refilled - 1.0,
                # A clock behind the bucket's (another host's) never moves its refill time back.
                "refilled_at": (func.greatest if dialect == "postgresql" else func.max)(
                    now, BUCKETS.c.refilled_at, type_=UTCDateTime()
                ),
            },
            where=refilled >= 1.0,
        )
        .returning(BUCKETS.c.tokens)
    )


def _refilled(
    dialect: str, *, now: BindParameter[datetime], burst: BindParameter[float], per_second: BindParameter[float]
) -> ColumnElement[float]:
    """SQL: the stored bucket's tokens refilled up to `now`, at most `burst` (a clock behind adds nothing)."""
    elapsed = _seconds_since(dialect, BUCKETS.c.refilled_at, now)
    least, greatest = (func.least, func.greatest) if dialect == "postgresql" else (func.min, func.max)
    return least(burst, BUCKETS.c.tokens + greatest(0.0, elapsed) * per_second)


def _seconds_since(
    dialect: str, earlier: ColumnElement[datetime], later: BindParameter[datetime]
) -> ColumnElement[float]:
    """SQL: the seconds from `earlier` to `later`, to the microsecond as Python's timedelta counts them."""
    if dialect == "postgresql":
        return cast(extract("epoch", later - earlier), Float)
    # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds from strftime, the fraction from the text,
    # so no floating-point Julian day loses the microseconds.
    whole = cast(func.strftime("%s", later), Integer) - cast(func.strftime("%s", earlier), Integer)
    return whole + (func.substr(later, 20) - func.substr(earlier, 20))
