"""Cursor pagination: opaque cursors that encode the last row's sort key."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_
from sqlalchemy.orm import InstrumentedAttribute, Session

from ledger.errors import InvalidInput

T = TypeVar("T")

MAX_LIMIT = 200


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows and the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None


def encode_cursor(*key: Any) -> str:
    """Opaque cursor for a sort key (JSON-ready values)."""
    return base64.urlsafe_b64encode(json.dumps(list(key), default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """Inverse of encode_cursor, checking each value's type; InvalidInput for anything it did not make."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: JSON nested past the stack
        raise InvalidInput("invalid cursor; pass back the next_cursor of a previous page") from exc
    if (
        not isinstance(key, list)
        or len(key) != len(types)
        or not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(key, types))
    ):
        raise InvalidInput("invalid cursor; pass back the next_cursor of a previous page")
    return key


def clamp_limit(limit: int) -> int:
    """Page size within [1, MAX_LIMIT]."""
    return max(1, min(int(limit), MAX_LIMIT))


def newest_first(
    session: Session,
    query: Select,
    *,
    time_column: InstrumentedAttribute,
    id_column: InstrumentedAttribute,
    cursor: str | None,
    limit: int,
) -> Page:
    """One page of `query` ordered by (time, id) descending; the cursor is the last row's key."""
    limit = clamp_limit(limit)
    if cursor:
        moment, last_id = decode_cursor(cursor, (str, str))
        try:
            at = datetime.fromisoformat(moment)
        except ValueError:
            raise InvalidInput("invalid cursor; pass back the next_cursor of a previous page") from None
        query = query.where((time_column < at) | and_(time_column == at, id_column < last_id))
    rows = list(session.scalars(query.order_by(time_column.desc(), id_column.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    last = rows[-1]
    return Page(rows, encode_cursor(getattr(last, time_column.key).isoformat(), getattr(last, id_column.key)))
