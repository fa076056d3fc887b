"""The bare floor of bench/api_load.py: what the same client pattern costs with nothing but FastAPI,
pydantic and SQLAlchemy Core on the same Postgres database (its own table).

POST /v1/deletion-requests validates the body with pydantic and does one INSERT + COMMIT;
GET /v1/deletion-requests/{id} does one SELECT by primary key. No authentication, idempotency,
rate limit, audit or outbox: the service's answers to the same requests cost at least this much.
The routes are sync `def`s like the service's (FastAPI runs them in its thread pool), the engine
keeps SQLAlchemy's default pool. Served by uvicorn, as many worker processes as the service:

    python -m uvicorn --app-dir bench floor_app:app_from_env --factory --workers 2 --port 8001

with FLOOR_DATABASE_URL naming the database; api_load.py creates the table (create_table) first,
so the workers never race to create it.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, Field
from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table, create_engine, insert, select

DATABASE_URL_VARIABLE = "FLOOR_DATABASE_URL"

metadata = MetaData()
floor_requests = Table(
    "floor_requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("model_id", String(64), nullable=False),
    Column("subject_ids", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


class FloorRequestCreate(BaseModel):
    model_id: str = Field(min_length=1, max_length=64)
    subject_ids: list[str] = Field(min_length=1, max_length=1000)


class FloorRequestRead(BaseModel):
    id: str
    model_id: str
    subject_ids: list[str]
    status: str
    received_at: datetime


def _engine_url(url: str) -> str:
    return "postgresql+psycopg://" + url.removeprefix("postgresql+psycopg://").removeprefix("postgresql://")


def create_table(url: str) -> None:
    """Create the floor's table in the database at `url` (before any worker starts)."""
    engine = create_engine(_engine_url(url))
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()


def create_app(url: str) -> FastAPI:
    engine = create_engine(_engine_url(url))
    app = FastAPI(title="api_load floor")

    @app.post("/v1/deletion-requests", status_code=202, response_model=FloorRequestRead)
    def submit(body: FloorRequestCreate, response: Response) -> FloorRequestRead:
        row = FloorRequestRead(
            id=str(uuid.uuid4()),
            model_id=body.model_id,
            subject_ids=body.subject_ids,
            status="received",
            received_at=datetime.now(UTC),
        )
        with engine.begin() as conn:
            conn.execute(insert(floor_requests).values(row.model_dump()))
        response.headers["Location"] = f"/v1/deletion-requests/{row.id}"
        return row

    @app.get("/v1/deletion-requests/{request_id}", response_model=FloorRequestRead)
    def read(request_id: str) -> FloorRequestRead:
        with engine.connect() as conn:
            found = conn.execute(select(floor_requests).where(floor_requests.c.id == request_id)).mappings().first()
        if found is None:
            raise HTTPException(404, "no such request")
        return FloorRequestRead(**found)

    return app


def app_from_env() -> FastAPI:
    """ASGI factory of one uvicorn worker: the database from FLOOR_DATABASE_URL."""
    return create_app(os.environ[DATABASE_URL_VARIABLE])
