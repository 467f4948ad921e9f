"""The shared SQLite database: writers taking turns, rollback, background checkpoints."""
from __future__ import annotations

import os
import sqlite3
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
