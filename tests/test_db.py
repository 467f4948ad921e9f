"""The shared SQLite database: group-committed writes, isolation of a failing write, background checkpoints."""
from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from gitlab_feishu.db import Database


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "test.sqlite3")
    with database.write() as conn:
        conn.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)")
    return database


def count(db: Database) -> int:
    return db.connection().execute("SELECT COUNT(*) FROM items").fetchone()[0]


def test_transact_returns_what_the_work_returns(db):
    assert db.transact(lambda conn: conn.execute("INSERT INTO items (n) VALUES (1)").lastrowid) == 1


def test_writes_from_many_threads_all_commit(db):
    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(lambda n: db.transact(lambda conn: conn.execute("INSERT INTO items (n) VALUES (?)",
                                                                          (n,)).lastrowid), range(200)))
    assert sorted(ids) == list(range(200)) and count(db) == 200


def test_writes_queued_meanwhile_are_committed_together(db):
    """While one write holds the turn, the writes that arrive queue up and commit in one transaction."""
    release, started = threading.Event(), threading.Event()

    def slow(conn):
        started.set()
        release.wait(5)
        conn.execute("INSERT INTO items (n) VALUES (0)")

    leader = threading.Thread(target=db.transact, args=(slow,))
    leader.start()
    started.wait(5)
    connections = []
    followers = [threading.Thread(target=db.transact, args=(lambda conn, n=n: connections.append(conn)
                                                            or conn.execute("INSERT INTO items (n) VALUES (?)",
                                                                            (n,)),))
                 for n in range(1, 6)]
    for follower in followers:
        follower.start()
    for _ in range(5000):               # until every follower is queued behind the leader
        if len(db._queue) == 5:
            break
        threading.Event().wait(0.001)
    release.set()
    for thread in [leader, *followers]:
        thread.join(5)
    assert count(db) == 6
    assert len({id(conn) for conn in connections}) == 1     # one thread ran them all: one transaction


def test_a_failing_write_fails_alone(db):
    """A write that raises is rolled back on its own; the others queued with it still commit."""
    def bad(conn):
        conn.execute("INSERT INTO items (n) VALUES (1)")
        raise sqlite3.IntegrityError("boom")

    with ThreadPoolExecutor(max_workers=8) as pool:
        good = [pool.submit(db.transact, lambda conn, n=n: conn.execute("INSERT INTO items (n) VALUES (?)", (n,)))
                for n in range(10, 20)]
        failing = pool.submit(db.transact, bad)
        for future in good:
            future.result()
        with pytest.raises(sqlite3.IntegrityError, match="boom"):
            failing.result()
    assert count(db) == 10


def test_commits_leave_checkpoints_to_a_background_thread(db):
    """No webhook's commit pays for the fsync of a checkpoint."""
    assert db.connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    db.transact(lambda conn: conn.execute("INSERT INTO items (n) VALUES (1)"))
    assert db._checkpointer is not None and db._checkpointer.is_alive()
