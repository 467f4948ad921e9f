"""The durable outbox: every accepted event and every delivery, in SQLite.

One file under DATA_DIR, shared by every process (gunicorn workers, the CLI).
A delivery is written before it is attempted and leased to one process while
it is in flight; a lease that runs out (the process died) makes the row due
again, and the Feishu `uuid` stored with it keeps a repeat from making a
second card. Events are remembered by idempotency key so GitLab's Resend
makes nothing new.
"""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from .db import BUSY_TIMEOUT, Database, is_damaged, is_locked, storage_failure
from .rows import FAILED, QUEUED, Delivery, NewDelivery, recipient_identity
from .schema import migrate, schema_version
from .settings import ConfigError

log = logging.getLogger(__name__)

# Seconds an outbox write waits for a lock another program holds (an sqlite3 shell in a transaction):
# meanwhile it holds up every writer of the service behind it, webhooks included.
LOCK_WAIT = 2.0
# Seconds ahead no next try (backoff at most 10 minutes, or Feishu's rate-limit reset) is ever set, and no
# lease (a retry round's is a minute): anything further ahead was set before the clock was stepped back.
NEXT_TRY_FURTHEST = 660.0
LEASE_FURTHEST = 90.0

# A sent card is never sent again: its content (most of a row) is dropped, so eight days of a busy GitLab's
# deliveries take a third of the disk.
_FINISH = ("UPDATE deliveries SET status = ?1, attempts = attempts + ?2, rounds = rounds + (?2 > 0 AND ?1 != 'sent'),"
           " last_error = ?3, message_id = COALESCE(?4, message_id), next_attempt_at = COALESCE(?5, next_attempt_at),"
           " content = CASE WHEN ?1 = 'sent' THEN '' ELSE content END,"
           " give_up_at = COALESCE(?8, give_up_at),"
           " lease_owner = NULL, lease_until = NULL, updated_at = ?6 WHERE id = ?7 AND status != 'sent'")


class Outbox:
    """SQLite-backed store of events and deliveries, safe across threads and processes."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self._db = Database(self.path)
        # Outcomes a lock held by another program kept us from writing: written before the next claim,
        # so the retry worker never re-sends a row whose card went out (group bots take no uuid).
        self._unrecorded: dict[int, tuple] = {}
        self._unrecorded_lock = threading.Lock()
        try:
            migrate(self._db, self.path, lock_wait=BUSY_TIMEOUT)
        except sqlite3.DatabaseError as exc:
            if not storage_failure(exc) or is_locked(exc):
                raise
            if is_damaged(exc):
                raise ConfigError(f"{self.path} cannot be read ({exc}): the file is damaged; stop the service, "
                                  f"move it aside (`sqlite3 FILE .recover` saves what it can of the cards queued "
                                  f"in it) and start again") from None
            raise ConfigError(f"{self.path} cannot be opened ({exc}): is the disk full or read-only?") from None

    # -- connection and schema -------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return self._db.connection()

    def _write(self, timeout: float | None = None):
        return self._db.write(LOCK_WAIT if timeout is None else timeout)

    @property
    def schema_version(self) -> int:
        return schema_version(self._connect())

    # -- events ----------------------------------------------------------------

    def begin_event(self, key: str, kind: str, project: str, deliveries: Iterable[NewDelivery], *,
                    lease_owner: str, lease_seconds: float, retry_window: float, waiting: str | None = None,
                    timeout: float | None = None) -> tuple[list[Delivery], list[Delivery]]:
        """Record an event's deliveries, each new one leased to the caller for an inline attempt (or, with no
        lease, left to the retry worker, `waiting` saying why: it is then counted as queued from the start).

        Returns (new rows, rows recorded earlier for the same key and recipient): a repeat of the event
        makes no second card for anyone, yet reaches a recipient added to owners.json since. Raises
        sqlite3.OperationalError when another program holds the outbox locked for `timeout` (LOCK_WAIT).
        """
        now = self.clock()
        with self._write(timeout) as conn:
            is_new = conn.execute("INSERT OR IGNORE INTO events (key, kind, project, created_at) VALUES (?, ?, ?, ?)",
                                  (key, kind, project, now)).rowcount == 1
            recorded = {} if is_new else {recipient_identity(row.channel, row.recipient): row
                                          for row in self._event_rows(conn, key)}
            new, earlier = [], []
            for d in deliveries:
                identity = recipient_identity(d.channel, d.recipient)
                if identity in recorded:
                    earlier.append(recorded[identity])
                    continue
                row = Delivery(id=0, event_key=key, channel=d.channel, recipient=d.recipient, rule=d.rule,
                               content=d.content, uuid=d.uuid, status=QUEUED, attempts=0, rounds=0,
                               next_attempt_at=now, lease_until=now + lease_seconds, last_error=waiting,
                               created_at=now, give_up_at=now + retry_window)
                cursor = conn.execute(
                    "INSERT INTO deliveries (event_key, channel, recipient, rule, content, uuid, status,"
                    " next_attempt_at, lease_owner, lease_until, last_error, created_at, give_up_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                    (key, d.channel, d.recipient, d.rule, d.content, d.uuid, now, lease_owner, row.lease_until,
                     waiting, now, row.give_up_at, now))
                new.append(dataclasses.replace(row, id=cursor.lastrowid))
            return new, earlier

    def event_summary(self, key: str) -> tuple[str, str] | None:
        """(kind, project) of a remembered event, or None."""
        row = self._connect().execute("SELECT kind, project FROM events WHERE key = ?", (key,)).fetchone()
        return (row["kind"], row["project"]) if row else None

    def event_rows(self, key: str) -> list[Delivery]:
        return self._event_rows(self._connect(), key)

    @staticmethod
    def _event_rows(conn: sqlite3.Connection, key: str) -> list[Delivery]:
        rows = conn.execute("SELECT * FROM deliveries WHERE event_key = ? ORDER BY id", (key,)).fetchall()
        return [_delivery(row) for row in rows]

    # -- outcomes --------------------------------------------------------------

    def finish(self, delivery_id: int, status: str, *, attempts: int, error: str | None = None,
               message_id: str | None = None, next_attempt_at: float | None = None,
               give_up_at: float | None = None) -> None:
        """Record the outcome of a round of attempts and release the lease; a sent row never changes again."""
        values = (status, attempts, error, message_id, next_attempt_at, self.clock(), delivery_id, give_up_at)
        try:
            with self._write() as conn:
                conn.execute(_FINISH, values)
        except sqlite3.DatabaseError as exc:
            if not storage_failure(exc):
                raise
            # Kept for the next claim: a row whose card went out must not be sent again (group bots take
            # no uuid) just because the disk was full or another program held the file when it was recorded.
            with self._unrecorded_lock:
                self._unrecorded[delivery_id] = values
            why = "it is locked by another program" if is_locked(exc) else str(exc)
            log.warning("could not record yet that delivery %s is %s (%s: %s); kept until it can be",
                        delivery_id, status, self.path, why)

    # -- the retry worker ------------------------------------------------------

    def claim_due(self, *, owner: str, lease_seconds: float, limit: int = 50) -> list[Delivery]:
        """Lease up to `limit` due deliveries to `owner`; another process never gets the same row."""
        now = self.clock()
        with self._unrecorded_lock:
            unrecorded = dict(self._unrecorded)
        with self._write() as conn:
            conn.executemany(_FINISH, unrecorded.values())
            rows = conn.execute(
                "SELECT * FROM deliveries WHERE status = 'queued' AND next_attempt_at <= ?"
                " AND (lease_until IS NULL OR lease_until <= ?) ORDER BY next_attempt_at, id LIMIT ?",
                (now, now, limit)).fetchall()
            conn.executemany("UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE id = ?",
                             [(owner, now + lease_seconds, row["id"]) for row in rows])
        with self._unrecorded_lock:
            for delivery_id, values in unrecorded.items():
                if self._unrecorded.get(delivery_id) is values:
                    del self._unrecorded[delivery_id]
        return [_delivery(row) for row in rows]

    def lease_owners(self) -> set[str]:
        """Who holds the leases still running on queued rows."""
        rows = self._connect().execute("SELECT DISTINCT lease_owner FROM deliveries WHERE status = 'queued'"
                                       " AND lease_owner IS NOT NULL AND lease_until > ?", (self.clock(),))
        return {row[0] for row in rows}

    def release_leases(self, owners: Iterable[str]) -> int:
        """Free the queued rows leased to `owners` (processes that are gone): due again at once."""
        owners = list(owners)
        if not owners:
            return 0
        with self._write() as conn:
            return conn.execute(
                f"UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE status = 'queued'"
                f" AND lease_owner IN ({', '.join('?' * len(owners))})", owners).rowcount

    def undo_clock_step(self) -> int:
        """Put right the queued rows whose next try or lease lies further ahead than any is ever set: they were
        set before the clock was stepped back (an NTP correction), and would wait the size of the step. The next
        try is due at once; a lease is cut to the longest there is, its owner kept: that process may still be
        sending (a group post, which no uuid makes harmless to repeat, takes up to 13 s)."""
        now = self.clock()
        try_by, lease_by = now + NEXT_TRY_FURTHEST, now + LEASE_FURTHEST
        ahead = ("SELECT 1 FROM deliveries WHERE status = 'queued' AND (next_attempt_at > ? OR lease_until > ?)"
                 " LIMIT 1")
        if self._connect().execute(ahead, (try_by, lease_by)).fetchone() is None:    # a read: no lock taken
            return 0
        with self._write() as conn:
            return conn.execute(
                "UPDATE deliveries SET next_attempt_at = CASE WHEN next_attempt_at > ?1 THEN ?3 ELSE next_attempt_at"
                " END, lease_until = MIN(lease_until, ?2)"
                " WHERE status = 'queued' AND (next_attempt_at > ?1 OR lease_until > ?2)",
                (try_by, lease_by, now)).rowcount

    def next_due_at(self) -> float | None:
        """When the earliest queued delivery becomes due (its lease included), or None."""
        row = self._connect().execute(
            "SELECT MIN(MAX(next_attempt_at, COALESCE(lease_until, 0))) FROM deliveries WHERE status = 'queued'"
        ).fetchone()
        return row[0]

    # -- pipeline history ------------------------------------------------------

    def record_finished_pipeline(self, project: str, ref: str, pipeline_id: int,
                                 status: str) -> tuple[int, str] | None:
        """Remember a finished pipeline as the latest on its ref, unless a newer one is already there.

        Returns the (pipeline_id, status) that was recorded for the ref before, or None. An older
        pipeline arriving late changes nothing; the caller sees that from the returned id.
        """
        with self._write() as conn:
            row = conn.execute("SELECT pipeline_id, status FROM pipeline_refs WHERE project = ? AND ref = ?",
                               (project, ref)).fetchone()
            if row is None or row["pipeline_id"] <= pipeline_id:
                # As GitLab's own ref status (Ci::Ref): a canceled pipeline is the newest on its ref (an older one
                # finishing later is out of date) but leaves the ref failing or passing as it was.
                kept = row["status"] if row is not None and status == "canceled" else status
                conn.execute("INSERT OR REPLACE INTO pipeline_refs (project, ref, pipeline_id, status, updated_at)"
                             " VALUES (?, ?, ?, ?, ?)", (project, ref, pipeline_id, kept, self.clock()))
        return (row["pipeline_id"], row["status"]) if row else None

    # -- operators -------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Deliveries waiting for a retry, and those failed for good. A card on its first try inside a webhook
        is not waiting: counted, a busy service's status line and backlog alert would report a queue."""
        # A first try (Delivery.on_first_try) holds its lease and has no error yet; a row put back (by a pacing
        # wait too, with attempts 0) has its lease released (NULL) and an error: it waits, and is counted.
        rows = self._connect().execute(
            "SELECT status, COUNT(*) FROM deliveries WHERE status = 'failed' OR (status = 'queued' AND"
            " NOT (attempts = 0 AND last_error IS NULL AND COALESCE(lease_until, 0) > ?)) GROUP BY status",
            (self.clock(),)).fetchall()
        counts = {QUEUED: 0, FAILED: 0}
        counts.update({status: n for status, n in rows})
        return counts

    def last_sent_at(self) -> float | None:
        """When the most recent delivery was sent, or None (for /healthz)."""
        return self._connect().execute("SELECT MAX(updated_at) FROM deliveries WHERE status = 'sent'").fetchone()[0]

    def pending(self) -> list[Delivery]:
        """Everything queued or failed, oldest first (for `--outbox`)."""
        rows = self._connect().execute(
            "SELECT * FROM deliveries WHERE status IN ('queued', 'failed') ORDER BY created_at, id").fetchall()
        return [_delivery(row) for row in rows]

    def retry_failed(self, *, retry_window: float) -> int:
        """Put failed deliveries back in the queue, due now, with a fresh retry window and backoff."""
        now = self.clock()
        with self._write() as conn:
            return conn.execute(
                "UPDATE deliveries SET status = 'queued', rounds = 0, next_attempt_at = ?, give_up_at = ?,"
                " updated_at = ? WHERE status = 'failed'", (now, now + retry_window, now)).rowcount

    def prune(self, *, keep_seconds: float, keep_failed_seconds: float, keep_pipeline_seconds: float,
              batch: int = 500) -> int:
        """Forget events older than keep_seconds (with their deliveries) once nothing of theirs is queued and no
        delivery of theirs failed within keep_failed_seconds; and the pipelines of refs quiet for
        keep_pipeline_seconds. Returns the events forgotten.

        In batches of `batch` events, one transaction each: every webhook of every process waits for the
        write lock while a batch is deleted, so the first prune after weeks of failures must not hold it long.
        """
        now = self.clock()
        # NOT EXISTS looks each old event's rows up by the (event_key, ...) index instead of scanning them all.
        prunable = ("created_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_key = events.key"
                    " AND (d.status = 'queued' OR (d.status = 'failed' AND d.updated_at >= ?)))")
        cutoffs = (now - keep_seconds, now - keep_failed_seconds)
        forgotten = failed = 0
        after = (float("-inf"), 0)          # (created_at, rowid) of the last event looked at
        while True:
            # Found by a read, which holds up no webhook; events kept (a recent failure) are passed over once,
            # not again by every batch. Each batch is checked again under the write lock.
            found = self._connect().execute(
                f"SELECT key, created_at, rowid FROM events WHERE (created_at, rowid) > (?, ?) AND {prunable}"
                " ORDER BY created_at, rowid LIMIT ?", (*after, *cutoffs, batch)).fetchall()
            if not found:
                break
            after = (found[-1]["created_at"], found[-1]["rowid"])
            marks = ", ".join("?" * len(found))
            with self._write() as conn:
                keys = [row[0] for row in conn.execute(f"SELECT key FROM events WHERE key IN ({marks}) AND {prunable}",
                                                       (*[row["key"] for row in found], *cutoffs))]
                marks = ", ".join("?" * len(keys))
                # `+status`: count by the event_key index, not by reading every failed row through the status one.
                failed += conn.execute(f"SELECT COUNT(*) FROM deliveries WHERE event_key IN ({marks})"
                                       " AND +status = 'failed'", keys).fetchone()[0]
                conn.execute(f"DELETE FROM deliveries WHERE event_key IN ({marks})", keys)
                conn.execute(f"DELETE FROM events WHERE key IN ({marks})", keys)
            forgotten += len(keys)
            if len(found) < batch:
                break
        with self._write() as conn:
            conn.execute("DELETE FROM pipeline_refs WHERE updated_at < ?", (now - keep_pipeline_seconds,))
        if failed:      # they were listed by --outbox and counted on /healthz: say where they went
            log.info("forgot %d failed deliveries that last failed over %.0f days ago", failed,
                     keep_failed_seconds / 86400)
        return forgotten


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(id=row["id"], event_key=row["event_key"], channel=row["channel"], recipient=row["recipient"],
                    rule=row["rule"], content=row["content"], uuid=row["uuid"], status=row["status"],
                    attempts=row["attempts"], rounds=row["rounds"], next_attempt_at=row["next_attempt_at"],
                    lease_until=row["lease_until"], last_error=row["last_error"], created_at=row["created_at"],
                    give_up_at=row["give_up_at"])
