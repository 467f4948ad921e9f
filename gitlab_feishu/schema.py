"""The outbox's SQLite schema, as numbered migrations, applied in order when the outbox is opened."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from .db import Database
from .settings import ConfigError

SCHEMA_VERSION = 3

# Each entry upgrades the schema from version N-1 to N; never edit a shipped one.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE events (
               key TEXT PRIMARY KEY,
               kind TEXT NOT NULL,
               project TEXT NOT NULL,
               created_at REAL NOT NULL)""",
        """CREATE TABLE deliveries (
               id INTEGER PRIMARY KEY,
               event_key TEXT NOT NULL REFERENCES events(key),
               channel TEXT NOT NULL,
               recipient TEXT NOT NULL,
               rule TEXT NOT NULL,
               content TEXT NOT NULL,
               uuid TEXT NOT NULL,
               status TEXT NOT NULL,
               attempts INTEGER NOT NULL DEFAULT 0,
               rounds INTEGER NOT NULL DEFAULT 0,
               next_attempt_at REAL NOT NULL,
               lease_owner TEXT,
               lease_until REAL,
               last_error TEXT,
               message_id TEXT,
               created_at REAL NOT NULL,
               give_up_at REAL NOT NULL,
               updated_at REAL NOT NULL,
               UNIQUE (event_key, channel, recipient))""",
        "CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at)",
        "CREATE INDEX events_created ON events (created_at)",
    ),
    2: (
        # The newest finished pipeline on each ref, so a success after a failure can say "fixed".
        """CREATE TABLE pipeline_refs (
               project TEXT NOT NULL,
               ref TEXT NOT NULL,
               pipeline_id INTEGER NOT NULL,
               status TEXT NOT NULL,
               updated_at REAL NOT NULL,
               PRIMARY KEY (project, ref))""",
    ),
    3: (
        # /healthz's last delivery time (MAX(updated_at) of the sent rows) without reading every sent row.
        "CREATE INDEX deliveries_status_updated ON deliveries (status, updated_at)",
    ),
}


def newer_schema(path: Path, version: int) -> ConfigError:
    return ConfigError(f"{path} was written by a newer release (schema {version}); upgrade this service, or move "
                       "the file aside once that release has sent what it queued (--outbox)")


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: Database, path: Path, *, lock_wait: float) -> None:
    """Create the schema, or upgrade it to SCHEMA_VERSION."""
    # The usual start: a read, which no other program's write transaction holds up. In our turn all the
    # same: processes switching a new file to WAL at the same moment get "locked" at once.
    with db.turn():
        if schema_version(db.connection()) == SCHEMA_VERSION:
            return
    # Processes starting together all get here; BEGIN IMMEDIATE lets one
    # create or upgrade the schema while the others wait, then find it done.
    with db.write(lock_wait) as conn:
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise newer_schema(path, version)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
