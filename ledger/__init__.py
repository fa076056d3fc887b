"""The ledger: persistence and the request state machine of the erasure service.

Postgres (SQLite when embedded) is the only source of truth. Every table is declared in
`ledger.tables`; each domain has one module of keyword-only service functions taking the session
first (`tenants`, `datasets`, `registry`, `requests`, `outbox`, `audit`, `reports`, `certificates`,
`retention`). Service functions never commit: the caller owns the transaction, so a request row,
its dispatch row and its audit event land together or not at all (audit events join the hash
chain at that commit). Status changes are compare-and-set UPDATEs, so a redelivered task
or a second worker is a no-op. The schema exists only through the Alembic migrations in
`migrations/` (see `ledger.migrate`).

Imports sqlalchemy and the standard library only.
"""
