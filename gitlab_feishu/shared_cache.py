"""Feishu answers every process can reuse: the tenant token, and which open_id an email is.

Each gunicorn worker keeps these in memory too; this small file under DATA_DIR
lets a worker that has not talked to Feishu yet start warm, so a push costs
one call per owner whichever worker takes it, and a restart costs nothing.
It holds a tenant token (valid two hours at most), so it is created readable
by its owner only.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable

from .db import Complaint, Database, storage_failure, unusable

log = logging.getLogger(__name__)
LOCK_WAIT = 1.0             # seconds a write waits for a lock another program holds on the file
NOT_SHARED = "each process asks Feishu itself meanwhile"


class SharedCache:
    """Values with a lifetime, shared by every process using the same file."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._db = Database(Path(path))          # owner-only: it holds a tenant token
        self._complain = Complaint(log)
        self._write("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT, expires_at REAL NOT NULL)",
                    [()])

    def get(self, keys: Iterable[str]) -> dict[str, tuple[str | None, float]]:
        """key -> (value, seconds it has left), for the keys present and not expired (none when the file
        cannot be read: every process then asks Feishu itself)."""
        keys = list(keys)
        now = self.clock()
        try:
            rows = self._db.connection().execute(
                f"SELECT key, value, expires_at FROM cache WHERE key IN ({', '.join('?' * len(keys))})"
                " AND expires_at > ?", (*keys, now)).fetchall()
        except sqlite3.DatabaseError as exc:
            if not storage_failure(exc):
                raise
            self._complain(f"{unusable(self._db.path, exc)}; {NOT_SHARED}")
            return {}
        self._complain.resolved()
        return {row["key"]: (row["value"], row["expires_at"] - now) for row in rows}

    def put(self, entries: dict[str, tuple[str | None, float]]) -> None:
        """Store key -> (value, lifetime in seconds); None is a value too (an email Feishu does not know)."""
        now = self.clock()
        self._write("INSERT OR REPLACE INTO cache (key, value, expires_at) VALUES (?, ?, ?)",
                    [(key, value, now + ttl) for key, (value, ttl) in entries.items()])

    def forget(self, key: str, value: str | None) -> None:
        """Drop `key` if it still holds `value` (another process may have replaced it already)."""
        self._write("DELETE FROM cache WHERE key = ? AND value IS ?", [(key, value)])

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """`sql` for each row, in one transaction; skipped when the file cannot be used (another program's
        lock, a damaged file): this is only a cache, and a webhook must not wait for it."""
        try:
            with self._db.write(timeout=LOCK_WAIT) as conn:
                conn.executemany(sql, rows)
            self._complain.resolved()
        except sqlite3.DatabaseError as exc:
            if not storage_failure(exc):
                raise
            self._complain(f"{unusable(self._db.path, exc)}; {NOT_SHARED}")
