"""The request's unit of work on SQLite: reads never wait for the write lock, and an upload is copied and
checked before the route's write transaction begins."""

from __future__ import annotations

import sqlite3
import time

import pytest


@pytest.mark.parametrize("path", ["/v1/audit/verify", "/v1/audit/events", "/v1/datasets"])
def test_a_get_answers_while_another_connection_holds_the_write_lock(api, path):
    writer = sqlite3.connect(api.settings.ledger.home / "ledger.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a long write transaction elsewhere (the busy timeout is 30 s)
    try:
        started = time.monotonic()
        answer = api.http.get(path, headers=api.client.headers)
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 5
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_dataset_upload_is_copied_and_checked_without_holding_the_write_lock(api, artifacts, monkeypatch):
    from api.routes import datasets

    lock_free: list[bool] = []

    def save_and_probe(*args, **kwargs):
        written = save_stream(*args, **kwargs)
        probe = sqlite3.connect(api.settings.ledger.home / "ledger.db", timeout=0.5, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            lock_free.append(True)
        except sqlite3.OperationalError:  # database is locked: the request's session holds the write lock
            lock_free.append(False)
        finally:
            probe.close()
        return written

    save_stream = datasets.save_stream
    monkeypatch.setattr(datasets, "save_stream", save_and_probe)
    api.client.register_dataset(artifacts.archive)
    assert lock_free == [True]
