"""Engine and session factories: built from a URL on request, never at import time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from ledger import artifacts, audit, webhooks

SQLITE_READ_ONLY = "ltu_sqlite_read_only"  # execution option: the transaction only reads (Database.read)


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
            # IMMEDIATE: a transaction that may write takes the write lock up front (waiting up to
            # the busy timeout), so a read-then-write transaction can never fail on a stale
            # snapshot; such transactions are all short, nothing holds one during a job. A read
            # session's transaction stays deferred (a WAL snapshot: no lock that blocks a writer),
            # and query_only makes any write in it fail instead of taking the lock late.
            read_only = bool(conn.get_execution_options().get(SQLITE_READ_ONLY))
            conn.exec_driver_sql(f"PRAGMA query_only={int(read_only)}")
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # A bounded connect: with the database unreachable the API answers 503 at once instead of
    # holding the client (and a worker thread) for the operating system's TCP timeout.
    return create_engine(url, echo=echo, pool_pre_ping=True, connect_args={"connect_timeout": 5})


def read_only_options(engine: Engine) -> dict[str, bool]:
    """Execution options that make an engine's transactions read-only (and, on SQLite, lock-free)."""
    if engine.dialect.name == "postgresql":
        return {"postgresql_readonly": True}
    return {SQLITE_READ_ONLY: True}


class Database:
    """An engine plus its session factories: `session()` is a unit of work the caller commits, `read()`
    one that only reads."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo)
        # expire_on_commit=False: objects stay readable after commit (responses are built then).
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        audit.install(self.sessions)  # recorded audit events join the hash chain when a session commits
        webhooks.install(self.sessions)  # before the seal: the audit events it commits become webhook events
        artifacts.install(self.sessions)  # after the audit seal: files land once every row is written
        # Same pool; neither hook is installed, so recording an event or staging a file there raises.
        self.reader = self.engine.execution_options(**read_only_options(self.engine))
        self.readers = sessionmaker(self.reader, expire_on_commit=False)

    def session(self) -> AbstractContextManager[Session]:
        """A session that rolls back on error and always closes; the caller commits."""
        return self._scope(self.sessions)

    def read(self) -> AbstractContextManager[Session]:
        """A session that only reads and always closes: it never holds SQLite's write lock, so a long
        read (a chain walk, a listing) lets writers commit meanwhile. Any write in it fails."""
        return self._scope(self.readers)

    @contextmanager
    def _scope(self, sessions: sessionmaker) -> Iterator[Session]:
        session = sessions()
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
        with self.reader.connect() as conn:  # a readiness probe never waits for SQLite's write lock
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
