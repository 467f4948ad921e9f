"""Feishu answers every process can reuse: the tenant token, and which open_id an email is.

Each gunicorn worker keeps these in memory too; this small file under DATA_DIR
lets a worker that has not talked to Feishu yet start warm, so a push costs
one call per owner whichever worker takes it, and a restart costs nothing.
It holds a tenant token (valid two hours at most), so it is created readable
by its owner only.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterable

from .db import HelperDatabase

log = logging.getLogger(__name__)
SCHEMA = ("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT, expires_at REAL NOT NULL)",)


class SharedCache:
    """Values with a lifetime, shared by every process using the same file. While the file cannot be used
    (another program's lock, a damaged file) nothing is shared: each process asks Feishu itself."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._db = HelperDatabase(Path(path), SCHEMA, log=log,
                                  meanwhile="each process asks Feishu itself meanwhile")

    def get(self, keys: Iterable[str]) -> dict[str, tuple[str | None, float]]:
        """key -> (value, seconds it has left), for the keys present and not expired."""
        keys = list(keys)
        now = self.clock()
        rows = self._db.use(lambda: self._db.connection().execute(
            f"SELECT key, value, expires_at FROM cache WHERE key IN ({', '.join('?' * len(keys))})"
            " AND expires_at > ?", (*keys, now)).fetchall(), [])
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
        def write() -> None:
            with self._db.write() as conn:
                conn.executemany(sql, rows)
        self._db.use(write, None)
