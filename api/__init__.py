"""The HTTP edge of the erasure service (FastAPI), built by `api.app.create_app(settings)`.

Imports fastapi, pydantic and the ledger; never torch, timm, celery or a task. Requests reach
workers only through the ledger's outbox.
"""
