"""SQLite shared by every process of the service (gunicorn workers, the CLI).

Every webhook writes twice (the delivery before it is attempted, the outcome
after), from many threads and processes at once. Writers take turns on locks
that wake the next one the moment the last commits (a thread lock inside a
process, a file lock between processes), where SQLite's own busy handler
sleeps 1, 2, 5, 10 ... ms between tries; and WAL checkpoints (an fsync) run
in a background thread, not in the commit of whichever webhook happened to
fill the log.
"""
from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from .settings import ConfigError

T = TypeVar("T")

try:
    import fcntl
except ImportError:        # Windows: one waitress process, so the thread lock is enough
    fcntl = None

CHECKPOINT_INTERVAL = 1.0  # seconds between background checkpoints while there are writes
BUSY_TIMEOUT = 30.0        # seconds a write waits for a lock another program holds, unless told less
SETUP_WAIT = 2.0           # seconds a new connection waits to set itself up (reads wait as long)
HELPER_LOCK_WAIT = 1.0     # the same for a database that only helps (HelperDatabase): a webhook must not wait


def is_locked(exc: sqlite3.OperationalError) -> bool:
    """SQLite gave up waiting for a lock (another program holds the file in a transaction)."""
    name = getattr(exc, "sqlite_errorname", None)             # Python 3.11+
    return name in ("SQLITE_BUSY", "SQLITE_LOCKED") if name else "database is locked" in str(exc)


def storage_failure(exc: sqlite3.Error) -> bool:
    """The file or the disk failed (locked, full, read-only, damaged, gone), not the code using it."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def is_file_trouble(exc: sqlite3.Error) -> bool:
    """The file itself is in trouble (locked, full, read-only, unopenable, damaged, replaced by an empty one), as
    opposed to a statement SQLite refused (a bug), which storage_failure also counts."""
    name = getattr(exc, "sqlite_errorname", "")               # Python 3.11+
    return is_locked(exc) or is_damaged(exc) or "no such table" in str(exc) or name.startswith(
        ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_IOERR"))


def is_damaged(exc: sqlite3.Error) -> bool:
    """The file is not a database, or a damaged one."""
    name = getattr(exc, "sqlite_errorname", None)             # Python 3.11+
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    return "not a database" in str(exc) or "malformed" in str(exc)


def why_unwritable(exc: sqlite3.Error) -> str:
    """The likely cause of a failed write, in words for the person who has to fix it."""
    name = getattr(exc, "sqlite_errorname", "")               # Python 3.11+
    text = str(exc)
    if name == "SQLITE_READONLY_DBMOVED":
        return "the file was deleted or moved while the service ran: restart the service"
    if "no such table" in text:                               # a new, empty file where the outbox was
        return "the file was emptied, deleted or replaced while the service ran: restart the service"
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")) or "readonly" in text:
        return ("the service's user cannot write DATA_DIR or the files in it (made by root, say?): give them "
                "back to that user")
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "the disk is full: free space"
    return "a full disk, or a damaged or deleted file?"


def unusable(path: Path, exc: sqlite3.Error) -> str:
    """Why a database that only helps (the pacing log, the shared cache) cannot be used now."""
    if is_locked(exc):
        return f"{path} is locked by another program"
    return f"{path} cannot be used ({exc}): stop the service and delete it; it holds nothing that must be kept"


class Complaint:
    """A warning logged once until it changes or the file works again: a broken file must not add a line to
    every webhook, and a new trouble days later must still be said."""

    def __init__(self, log: logging.Logger):
        self._log, self._last = log, ""

    def __call__(self, text: str) -> None:
        if text != self._last:
            self._last = text
            self._log.warning("%s", text)

    def resolved(self) -> None:
        self._last = ""


def owner_only(path: Path, flags: int) -> int:
    """Open (creating) `path` readable by its owner only; a file made before with a wider mode is narrowed."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    if hasattr(os, "fchmod"):              # not on Windows, whose files carry no such mode
        try:
            os.fchmod(fd, 0o600)
        except PermissionError:            # another user's file: left as it is
            pass
    return fd


class Database:
    """One connection per thread to `path`, and a `write()` transaction that queues instead of sleeping."""

    def __init__(self, path: Path, *, lock_wait: float = BUSY_TIMEOUT):
        self.path = Path(path)
        self.lock_wait = lock_wait           # seconds to wait for a lock another program holds, by default
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only, whatever the umask, also for a file made before: the files hold emails, cards, bot
            # URLs and tokens. SQLite gives its -wal and -shm files the database's own mode.
            os.close(owner_only(self.path, os.O_WRONLY))
            self._lock_file = os.fdopen(owner_only(self.path.with_name(self.path.name + ".lock"),
                                                    os.O_RDWR | os.O_APPEND), "a+b") if fcntl else None
        except PermissionError as exc:
            raise ConfigError(f"{exc.filename} cannot be opened ({exc.strerror}): the service's user must be able "
                              "to write DATA_DIR and the files in it (made by root, say?)") from None
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._written = threading.Event()
        self._checkpointer: threading.Thread | None = None

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), so a
            # writer takes the lock up front instead of failing on upgrade.
            # A short wait for the settings below, whatever lock_wait is: they need a lock only when the file is
            # new or was emptied under the other processes (then a long wait held a webhook past GitLab's 10 s);
            # write() sets each transaction's own wait.
            conn = sqlite3.connect(self.path, timeout=min(self.lock_wait, SETUP_WAIT), isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")     # see _checkpoint_forever
            self._local.conn, self._local.busy_ms = conn, None
        return conn

    @contextmanager
    def write(self, timeout: float | None = None) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on this thread's connection.

        Our own processes take turns on the locks below; only another program (an sqlite3 shell left
        in a transaction, a backup tool) makes SQLite itself wait: until `timeout` seconds (by default the
        database's `lock_wait`) after the call, then sqlite3.OperationalError ("database is locked"). Counted from the call, so writers
        queued behind one that waited give up at their own time, not one after another: as long as
        every writer's timeout is short, none waits much longer than its own.
        """
        deadline = time.monotonic() + (self.lock_wait if timeout is None else timeout)
        with self.turn() as conn:
            # In steps of 0.1 s, rounded up: the same as last time unless this write waited its turn.
            busy_ms = math.ceil(max(deadline - time.monotonic(), 0) * 10) * 100
            if self._local.busy_ms != busy_ms:
                conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
                self._local.busy_ms = busy_ms
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:      # SQLite may have rolled back itself (a full disk, an I/O error)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        self._written.set()
        if self._checkpointer is None:
            self._start_checkpointer()

    @contextmanager
    def turn(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection while no other thread or process of this service uses its turn: a wait
        for this service alone, never for another program's transaction."""
        with self._write_lock, self._between_processes():
            yield self.connection()

    @contextmanager
    def _between_processes(self) -> Iterator[None]:
        if self._lock_file is None:
            yield
            return
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _start_checkpointer(self) -> None:
        with self._write_lock:
            if self._checkpointer is None:
                self._checkpointer = threading.Thread(target=self._checkpoint_forever, daemon=True,
                                                      name=f"checkpoint-{self.path.name}")
                self._checkpointer.start()

    def _checkpoint_forever(self) -> None:
        # PASSIVE copies the log into the database without blocking writers or readers.
        while True:
            self._written.wait()
            self._written.clear()
            try:
                self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass                   # a busy checkpointer elsewhere; the next round catches up
            time.sleep(CHECKPOINT_INTERVAL)


class HelperDatabase(Database):
    """A database that only helps (the pacing log, the shared cache). Its tables are made at start-up, or at
    the first use that can make them; while the file cannot be used (another program's lock, a damaged file)
    every use is passed over, with one warning, and the next use tries again."""

    def __init__(self, path: Path, schema: tuple[str, ...], *, log: logging.Logger, meanwhile: str):
        super().__init__(path, lock_wait=HELPER_LOCK_WAIT)
        self._schema, self._has_tables = schema, False
        self._complain, self._meanwhile = Complaint(log), meanwhile
        self.use(lambda: None, None)

    def use(self, operation: Callable[[], T], otherwise: T) -> T:
        """`operation()`, or `otherwise` when the file cannot be used now."""
        try:
            if not self._has_tables:
                with self.write() as conn:
                    for statement in self._schema:
                        conn.execute(statement)
                self._has_tables = True
            result = operation()
        except sqlite3.DatabaseError as exc:
            if not storage_failure(exc):
                raise
            self._complain(f"{unusable(self.path, exc)}; {self._meanwhile}")
            return otherwise
        self._complain.resolved()
        return result
