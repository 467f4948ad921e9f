"""The shared SQLite database: writers taking turns, rollback, background checkpoints."""
from __future__ import annotations

import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gitlab_feishu import db as db_module
from gitlab_feishu.db import Database, why_unwritable


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "test.sqlite3")
    with database.write() as conn:
        conn.execute("CREATE TABLE items (n INTEGER PRIMARY KEY)")
    return database


def count(db: Database) -> int:
    return db.connection().execute("SELECT COUNT(*) FROM items").fetchone()[0]


def test_writes_from_many_threads_and_two_connections_all_commit(db, tmp_path):
    """Writers take turns (a thread lock, a file lock between processes) and none is lost."""
    other_process = Database(tmp_path / "test.sqlite3")

    def insert(n):
        with (db if n % 2 else other_process).write() as conn:
            conn.execute("INSERT INTO items (n) VALUES (?)", (n,))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(insert, range(200)))
    assert count(db) == 200


def test_a_failing_write_is_rolled_back(db):
    with pytest.raises(sqlite3.IntegrityError):
        with db.write() as conn:
            conn.execute("INSERT INTO items (n) VALUES (1)")
            conn.execute("INSERT INTO items (n) VALUES (1)")
    assert count(db) == 0


def test_commits_leave_checkpoints_to_a_background_thread(db):
    """No webhook's commit pays for the fsync of a checkpoint."""
    assert db.connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    with db.write() as conn:
        conn.execute("INSERT INTO items (n) VALUES (1)")
    assert db._checkpointer is not None and db._checkpointer.is_alive()


def test_the_files_are_the_service_users_alone_whatever_the_umask(tmp_path):
    """They hold emails, cards, group bots' URLs and tenant tokens."""
    old = os.umask(0o022)
    try:
        db = Database(tmp_path / "outbox.sqlite3")
        with db.write() as conn:
            conn.execute("CREATE TABLE t (x)")
    finally:
        os.umask(old)
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes


def test_a_file_made_before_with_a_wider_mode_is_narrowed(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    path.touch(mode=0o644)
    path.chmod(0o644)
    Database(path)
    assert path.stat().st_mode & 0o777 == 0o600


def failed_write(tmp_path, how: str) -> sqlite3.Error:
    """The error SQLite itself raises for a write to a file opened read-only, or deleted while open."""
    path = tmp_path / "outbox.sqlite3"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True) if how == "read-only" else sqlite3.connect(path)
    conn.execute("SELECT * FROM t").fetchall()
    if how == "deleted":
        path.unlink()
    try:
        conn.execute("INSERT INTO t VALUES (1)")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("the write went through")


@pytest.mark.parametrize("error, words", [
    (lambda tmp: failed_write(tmp, "read-only"), "cannot write DATA_DIR"),
    (lambda tmp: failed_write(tmp, "deleted"), "deleted or moved while the service ran"),
    (lambda tmp: sqlite3.OperationalError("database or disk is full"), "the disk is full"),
    (lambda tmp: sqlite3.DatabaseError("database disk image is malformed"), "damaged or deleted file"),
    (lambda tmp: sqlite3.OperationalError("no such table: events"), "emptied, deleted or replaced"),
])
def test_a_failed_write_says_its_likely_cause(tmp_path, error, words):
    assert words in why_unwritable(error(tmp_path))


def test_a_new_connection_waits_only_briefly_for_a_file_another_connection_locks(tmp_path, monkeypatch):
    """An outbox emptied under a running service: setting up WAL waited 30 s for the lock, past GitLab's 10 s."""
    monkeypatch.setattr(db_module, "SETUP_WAIT", 0.2)
    path = tmp_path / "outbox.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")                 # a new (non-WAL) file, locked
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError):
        Database(path).connection()
    assert time.monotonic() - started < 2
    holder.execute("ROLLBACK")
