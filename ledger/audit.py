"""The audit log: a hash chain with one event per state change, sealed when the change commits.

`record` is the only writer. It inserts nothing: it adds the event to its session's pending list,
and the commit seals that list into the chain (`install` hooks the session factory): it takes
the chain lock, reads the chain's head and its tenants' heads (one statement), gives each event the next sequence number, its canonical body
(ledger.canonical) and the SHA-256 of that body, whose `prev_hash` is the head's hash, and
inserts them just before COMMIT. Sealing last makes the chain lock the transaction's last lock,
held for an instant: it can never close a deadlock with the row locks the change itself takes.
Events recorded inside a savepoint that rolls back are dropped with it.

Each tenant's events form a chain of their own inside it: `tenant_seq` counts them from 1 and
`tenant_prev_hash` is the hash of the tenant's previous event, both in the chained body (events of
no tenant, such as the sweeper's, have neither). A tenant walks its own chain without reading, or
learning the number of, anyone else's events; the operator walks the deployment's. Events sealed
before migration 0007 keep their bodies (certificates anchor their hashes) and have the tenant
link as columns only, set by that migration's backfill with the same `TenantHeads` rule.

Serialisation, so the chain never forks and `seq` has no gaps: on Postgres a transaction-level
advisory lock, released by COMMIT after the new rows are visible (READ COMMITTED, the default,
reads the newest head once the lock is held); on SQLite every transaction begins IMMEDIATE
(ledger.db), so writers are serialised already.

The chained body holds no personal data: subject ids appear only as keyed hashes, and free text
that could hold some (a deadline extension's reason) only as its keyed hash, so erasing personal
data later never breaks the chain. UPDATE, DELETE and TRUNCATE are rejected by triggers (migration
0002); `verify_chain` finds any row changed behind their back, one bounded page at a time.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, String, bindparam, event, func, insert, null, select, union_all
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from ledger.canonical import canonical_json, timestamp
from ledger.errors import InvalidInput
from ledger.pagination import Page, clamp_limit, decode_cursor, encode_cursor
from ledger.tables import AuditEvent, utcnow

GENESIS = "0" * 64  # prev_hash of seq 1
MAX_SEQ = 2**53  # sequence numbers stay exact in JSON (and far inside BIGINT)
CHAIN_LOCK = 0x6C74_752E_6175_6469  # pg_advisory_xact_lock key ("ltu.audi")
PENDING = "ltu.audit.pending"  # Session.info: events recorded, not yet sealed
MARKS = "ltu.audit.marks"  # Session.info: {savepoint: len(pending) when it began}
CHAIN_COLUMNS = (
    "seq",
    "prev_hash",
    "occurred_at",
    "tenant_id",
    "actor",
    "action",
    "resource_type",
    "resource_id",
    "model_id",
    "request_id",
)
TENANT_LINK = ("tenant_seq", "tenant_prev_hash")  # in the chained body of events sealed since migration 0007
AUDIT_EVENTS = AuditEvent.__table__
LOCK_CHAIN = select(func.pg_advisory_xact_lock(CHAIN_LOCK))
VERIFY_LIMIT = 10_000  # events one verify call checks at most: every call's work is bounded


def record(
    session: Session,
    *,
    tenant_id: str | None,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: str,
    model_id: str | None = None,
    request_id: str | None = None,
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Add one event to the chain when the session commits (dropped if it rolls back).

    `data` must have a canonical JSON form (ledger.canonical); the commit raises ValueError if not.
    """
    if not session.in_transaction():
        session.begin()  # the event belongs to this transaction: it must exist before the event is added
    if PENDING not in session.info:
        raise RuntimeError("this session does not seal audit events; make it with ledger.db.Database")
    session.info[PENDING].append(
        {
            "occurred_at": now or utcnow(),
            "tenant_id": tenant_id,
            "actor": actor,
            "action": action,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "model_id": model_id,
            "request_id": request_id,
            "data": data or {},
        }
    )


def link(fields: dict[str, Any], *, seq: int, prev_hash: str) -> tuple[str, str]:
    """(canonical body, its SHA-256) of an event at `seq` after `prev_hash`."""
    body = canonical_json({**fields, "seq": seq, "prev_hash": prev_hash})
    return body, hashlib.sha256(body.encode()).hexdigest()


# --- sealing at commit ----------------------------------------------------------------------------


def install(sessions: sessionmaker) -> None:
    """Make the factory's sessions seal their recorded events into the chain when they commit."""
    event.listen(sessions, "after_transaction_create", _begun)
    event.listen(sessions, "after_soft_rollback", _rolled_back)
    event.listen(sessions, "after_transaction_end", _ended)
    event.listen(sessions, "before_commit", _seal)


def _begun(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info[PENDING], session.info[MARKS] = [], {}
    elif transaction.nested:
        session.info[MARKS][transaction] = len(session.info[PENDING])


def _rolled_back(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        del session.info[PENDING][session.info[MARKS].pop(transaction) :]


def _ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (sealed), rolled back or closed: nothing stays pending
        session.info[PENDING], session.info[MARKS] = [], {}


class TenantHeads:
    """The newest link (tenant_seq, hash) of each tenant's chain, extended event by event: the one rule
    by which sealing and migration 0007's backfill give events their tenant link."""

    def __init__(self, lookup: Callable[[str], tuple[int, str] | None]) -> None:
        self._lookup = lookup  # a tenant's stored head, asked once per tenant
        self._heads: dict[str, tuple[int, str]] = {}

    def next_link(self, tenant_id: str | None) -> dict[str, Any]:
        """The tenant_seq and tenant_prev_hash of the tenant's next event (None for no tenant)."""
        if tenant_id is None:
            return {"tenant_seq": None, "tenant_prev_hash": None}
        if tenant_id not in self._heads:
            self._heads[tenant_id] = self._lookup(tenant_id) or (0, GENESIS)
        tenant_seq, tenant_hash = self._heads[tenant_id]
        return {"tenant_seq": tenant_seq + 1, "tenant_prev_hash": tenant_hash}

    def advance(self, tenant_id: str | None, tenant_seq: int | None, digest: str) -> None:
        """The tenant's event at `tenant_seq` hashed to `digest`: it is the tenant's head now."""
        if tenant_id is not None:
            self._heads[tenant_id] = (tenant_seq, digest)


def _heads(session: Session, tenant_ids: list[str]) -> tuple[tuple[int, str], dict[str, tuple[int, str]]]:
    """The chain's head (seq, hash) and the stored head (tenant_seq, hash) of each of `tenant_ids` that has one,
    read in one statement."""
    rows = session.execute(_heads_statement(len(tenant_ids)), {f"tenant_{i}": t for i, t in enumerate(tenant_ids)})
    head, tenants = (0, GENESIS), {}
    for row in rows:
        if row.tenant_id is None:
            head = (row.position, row.hash)
        else:
            tenants[row.tenant_id] = (row.position, row.hash)
    return head, tenants


@functools.cache
def _heads_statement(tenants: int):
    """The newest event of the chain, and of each of `tenants` tenants' chains (bound as tenant_0, tenant_1, ...)."""
    deployment = (
        select(AuditEvent.seq.label("position"), AuditEvent.hash, null().label("tenant_id"))
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    )
    branches = [deployment]
    for i in range(tenants):
        tenant_id = bindparam(f"tenant_{i}", type_=String())
        branches.append(
            select(AuditEvent.tenant_seq.label("position"), AuditEvent.hash, tenant_id.label("tenant_id"))
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.tenant_seq.is_not(None))
            .order_by(AuditEvent.tenant_seq.desc())
            .limit(1)
        )
    return union_all(*(select(branch.subquery()) for branch in branches))


def _seal(session: Session) -> None:
    pending = session.info.get(PENDING)
    if not pending or session.in_nested_transaction():  # a savepoint's release: the outer commit seals
        return
    session.flush()  # the change's own row locks come first, the chain lock last
    tenant_ids = sorted({fields["tenant_id"] for fields in pending if fields["tenant_id"] is not None})
    if session.get_bind().dialect.name == "postgresql":
        # Its own statement: READ COMMITTED takes each statement's snapshot as it starts, so only a
        # statement begun after the lock is granted sees the head the previous holder committed.
        session.execute(LOCK_CHAIN)
    (seq, prev), stored = _heads(session, tenant_ids)
    tenant_heads = TenantHeads(stored.get)
    rows = []
    for fields in pending:
        seq += 1
        fields = {**fields, **tenant_heads.next_link(fields["tenant_id"])}
        try:
            body, digest = link(fields, seq=seq, prev_hash=prev)
        except (TypeError, ValueError) as exc:  # a programming error: name the event it came from
            raise ValueError(f"audit event {fields['action']!r} has data without a canonical JSON form: {exc}") from exc
        rows.append(
            {
                **{k: v for k, v in fields.items() if k != "data"},
                "seq": seq,
                "body": body,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        tenant_heads.advance(fields["tenant_id"], fields["tenant_seq"], digest)
        prev = digest
    session.execute(insert(AUDIT_EVENTS), rows)
    pending.clear()


# --- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """Which events: always one tenant's; optionally one model, request, action, time range."""

    tenant_id: str
    model_id: str | None = None
    request_id: str | None = None
    action: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def _where(query, where: EventFilter):
    query = query.where(AuditEvent.tenant_id == where.tenant_id)
    if where.model_id:
        query = query.where(AuditEvent.model_id == where.model_id)
    if where.request_id:
        query = query.where(AuditEvent.request_id == where.request_id)
    if where.action:
        query = query.where(AuditEvent.action == where.action)
    if where.since:
        query = query.where(AuditEvent.occurred_at >= where.since)
    if where.until:
        query = query.where(AuditEvent.occurred_at < where.until)
    return query


def list_events(
    session: Session, *, where: EventFilter, cursor: str | None = None, limit: int = 50
) -> Page[AuditEvent]:
    """Matching events in chain order, one page at a time."""
    limit = clamp_limit(limit)
    query = _where(select(AuditEvent), where)
    if cursor:
        query = query.where(AuditEvent.seq > after_cursor(cursor))
    rows = list(session.scalars(query.order_by(AuditEvent.seq).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].seq) if more else None)


def after_cursor(cursor: str) -> int:
    """The sequence number a list cursor points after (InvalidInput for a cursor we did not make)."""
    (after_seq,) = decode_cursor(cursor, (int,))
    if not 0 <= after_seq <= MAX_SEQ:
        raise InvalidInput("invalid cursor; pass back the next_cursor of a previous page")
    return after_seq


def head_seq(session: Session) -> int:
    """The newest sequence number (0 for an empty chain)."""
    return _head(session, DEPLOYMENT)


def export_chunk(session: Session, *, where: EventFilter, after_seq: int, upto_seq: int, limit: int) -> list[Row]:
    """Up to `limit` matching events with after_seq < seq <= upto_seq, as plain rows (nothing is kept in the session)."""
    query = _where(select(AuditEvent.seq, AuditEvent.body, AuditEvent.hash), where)
    query = query.where(AuditEvent.seq > after_seq, AuditEvent.seq <= upto_seq)
    return list(session.execute(query.order_by(AuditEvent.seq).limit(limit)))


# --- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A chain to walk: the deployment's (every event, by `seq`) or one tenant's (its events, by `tenant_seq`)."""

    tenant_id: str | None = None  # None: the deployment's chain

    @property
    def position(self):
        """The column that numbers the chain's events from 1."""
        return AuditEvent.seq if self.tenant_id is None else AuditEvent.tenant_seq

    @property
    def name(self) -> str:
        """The position's name, as the reasons spell it."""
        return "seq" if self.tenant_id is None else "tenant_seq"

    def previous(self, row: Row) -> str:
        """The hash `row` records for its predecessor in this chain."""
        return row.prev_hash if self.tenant_id is None else row.tenant_prev_hash

    def select(self, *columns):
        """A query over the chain's events."""
        query = select(*columns)
        return query if self.tenant_id is None else query.where(AuditEvent.tenant_id == self.tenant_id)


DEPLOYMENT = Chain()


@dataclass(frozen=True)
class ChainReport:
    """The outcome of walking (a page of) a chain: how far it holds, the first broken link if any,
    and where to continue when the page ended before the range did."""

    checked: int
    first_seq: int | None
    last_seq: int | None
    last_hash: str | None  # of the last intact event checked (compare it with a certificate's anchor)
    broken_seq: int | None = None
    reason: str | None = None
    next_from_seq: int | None = None  # the range goes on: walk again from here

    @property
    def valid(self) -> bool:
        """True when no link was broken."""
        return self.broken_seq is None


def verify_chain(
    session: Session,
    *,
    chain: Chain = DEPLOYMENT,
    from_seq: int = 1,
    to_seq: int | None = None,
    limit: int = VERIFY_LIMIT,
    chunk: int = 1000,
) -> ChainReport:
    """Walk `chain` from position `from_seq` to `to_seq` (default: its head), at most `limit` events,
    and report the first broken link.

    A row is broken when its body does not hash to its hash, its columns differ from its body,
    its position is missing, or the next row's link is not its hash (it was rewritten together
    with its own hash). A tenant's walk reads only that tenant's rows. The walk reads `chunk` rows
    per query and keeps none.
    """
    prev_seq, prev_hash = from_seq - 1, GENESIS
    if from_seq > 1:
        anchor = session.scalar(chain.select(AuditEvent.hash).where(chain.position == prev_seq))
        if anchor is None:
            if _head(session, chain) < from_seq:  # nothing to check
                return ChainReport(0, None, None, None)
            missing = f"{chain.name} {prev_seq} is missing: the event was deleted"
            return ChainReport(0, None, None, None, prev_seq, missing)
        prev_hash = anchor
    checked, broken, earlier_hash, next_from_seq = 0, None, None, None
    for row in _walk(session, chain, after_seq=prev_seq, to_seq=to_seq, count=limit + 1, chunk=chunk):
        full = checked == limit  # the range goes on: the next row only confirms the page's last hash
        broken = (_unlinked if full else _broken)(chain, row, prev_seq, prev_hash)
        if broken is not None:
            if broken[0] == prev_seq and checked:  # the previous row was rewritten: not intact after all
                checked, prev_seq, prev_hash = checked - 1, prev_seq - 1, earlier_hash
            break
        if full:
            next_from_seq = prev_seq + 1
            break
        earlier_hash, prev_seq, prev_hash = prev_hash, _position(chain, row), row.hash
        checked += 1
    intact = (from_seq, prev_seq, prev_hash) if checked else (None, None, None)
    return ChainReport(checked, *intact, *(broken or (None, None)), next_from_seq)


def _head(session: Session, chain: Chain) -> int:
    return session.scalar(chain.select(func.max(chain.position))) or 0


def _position(chain: Chain, row: Row) -> int:
    return row.seq if chain.tenant_id is None else row.tenant_seq


def _walk(
    session: Session, chain: Chain, *, after_seq: int, to_seq: int | None, count: int, chunk: int
) -> Iterator[Row]:
    """Up to `count` rows of the chain after `after_seq`, read `chunk` at a time."""
    columns = [getattr(AuditEvent, name) for name in (*CHAIN_COLUMNS, *TENANT_LINK, "body", "hash")]
    while count > 0:
        query = chain.select(*columns).where(chain.position > after_seq)
        if to_seq is not None:
            query = query.where(chain.position <= to_seq)
        rows = list(session.execute(query.order_by(chain.position).limit(min(chunk, count))))
        if not rows:
            return
        yield from rows
        after_seq, count = _position(chain, rows[-1]), count - len(rows)


def _broken(chain: Chain, row: Row, prev_seq: int, prev_hash: str) -> tuple[int, str] | None:
    """(position, why) when `row` does not continue `chain` after (prev_seq, prev_hash), else None."""
    position = _position(chain, row)
    if position != prev_seq + 1:
        return prev_seq + 1, f"{chain.name} {prev_seq + 1} is missing: the event was deleted"
    if hashlib.sha256(row.body.encode()).hexdigest() != row.hash:
        return position, "the body does not hash to the stored hash: the event was edited"
    try:
        body = json.loads(row.body)
    except ValueError:
        return position, "the body is not JSON: the event was edited"
    chained = _chained_columns(body)
    if chained is None:
        return position, "the body does not have the fields of an event: the event was edited"
    stored = {name: getattr(row, name) for name in chained}
    stored["occurred_at"] = timestamp(row.occurred_at)
    changed = [name for name in chained if body[name] != stored[name]]
    if changed:
        return position, f"the column {changed[0]} differs from the chained body: the row was edited"
    return _unlinked(chain, row, prev_seq, prev_hash)


def _unlinked(chain: Chain, row: Row, prev_seq: int, prev_hash: str) -> tuple[int, str] | None:
    """(position, why) when `row` follows (prev_seq, prev_hash) but does not record prev_hash, else None."""
    if _position(chain, row) != prev_seq + 1 or chain.previous(row) == prev_hash:
        return None
    if prev_seq == 0:
        return 1, "the first event does not start from the genesis hash"
    return prev_seq, (
        f"{chain.name} {prev_seq + 1} records its predecessor's hash as {chain.previous(row)[:16]}… but "
        f"{chain.name} {prev_seq} hashes to {prev_hash[:16]}…: {chain.name} {prev_seq} was rewritten"
    )


def _chained_columns(body: Any) -> tuple[str, ...] | None:
    """The columns a body chains: with the tenant link since migration 0007, without it before; None if neither."""
    if not isinstance(body, dict):
        return None
    if set(body) == {*CHAIN_COLUMNS, *TENANT_LINK, "data"}:
        return (*CHAIN_COLUMNS, *TENANT_LINK)
    if set(body) == {*CHAIN_COLUMNS, "data"}:
        return CHAIN_COLUMNS
    return None
