"""Engine and session factories: built from a URL on request, never at import time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from ledger import artifacts, audit


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for `url`. SQLite gets WAL, a busy timeout and foreign keys; Postgres a pre-ping pool."""
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record) -> None:
            # Take transaction control away from pysqlite (its implicit BEGIN breaks SAVEPOINT).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:
            # IMMEDIATE: every transaction takes the write lock up front (waiting up to the busy
            # timeout), so a read-then-write transaction can never fail on a stale snapshot. The
            # embedded ledger's transactions are all short; nothing holds one during a job.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # A bounded connect: with the database unreachable the API answers 503 at once instead of
    # holding the client (and a worker thread) for the operating system's TCP timeout.
    return create_engine(url, echo=echo, pool_pre_ping=True, connect_args={"connect_timeout": 5})


class Database:
    """An engine plus its session factory; `session()` is a unit of work the caller commits."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo)
        # expire_on_commit=False: objects stay readable after commit (responses are built then).
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        audit.install(self.sessions)  # recorded audit events join the hash chain when a session commits
        artifacts.install(self.sessions)  # after the audit seal: files land once every row is written

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that rolls back on error and always closes; the caller commits."""
        session = self.sessions()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session committed on success, rolled back on error."""
        with self.session() as session:
            yield session
            session.commit()

    def ping(self) -> None:
        """Raise if the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
