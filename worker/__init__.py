"""The execution edge: the erasure job, the embedded runner, the outbox relay and the Celery app.

Imports the ledger and ltu_core (lazily: importing this package loads neither torch nor celery).
`worker.job.run_erasure` is the one job function; the Celery task and the embedded runner both
call it.
"""
