"""The outbox's SQLite schema, as numbered migrations (outbox.py applies them in order on open)."""
from __future__ import annotations

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
