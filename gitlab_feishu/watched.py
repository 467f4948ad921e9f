"""Reloading hand-edited files (owners.json, users.json) while the service runs, and the start-up check.

`WatchedFile` keeps the last good version while an edit is broken, and a copy
of it in DATA_DIR for a process started later by the running service.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sqlite3
import threading
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Generic, Sized, TypeVar

from .config_file import UnreadableFile
from .db import owner_only
from .setting_values import os_text
from .settings import ConfigError, Settings

Loaded = TypeVar("Loaded", bound=Sized)
_UNREAD = (-1, -1)           # a signature no file has: the next check reads the file again


def check_files(settings: Settings) -> None:
    """Refuse to start with a broken owners.json or users.json (a ConfigError names file, line and key), or
    a DATA_DIR this user cannot write.

    Only a fresh start: a process the running service starts later (a gunicorn worker replacing one that
    died, a reload) routes by the last good version instead, as the running ones do. Light on purpose:
    gunicorn's master calls it, and keeps no Flask.
    """
    from .owners import load_owners        # here: both modules build on this one
    from .users import load_users

    load_owners(settings.owners_file)
    load_users(settings.users_file)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(settings.data_dir, os.W_OK | os.X_OK)
    except OSError as exc:
        raise ConfigError(f"DATA_DIR={settings.data_dir} cannot be made a folder: {exc.strerror}") from None
    if not writable:
        raise ConfigError(f"DATA_DIR={settings.data_dir} is not writable by this user: the outbox lives there; "
                          "give the service's user that folder (or set DATA_DIR to one it owns)")
    _refuse_a_newer_outbox(settings.data_dir / "outbox.sqlite3")


def _refuse_a_newer_outbox(path: Path) -> None:
    """An outbox a newer release wrote stops every worker at boot; said here once instead, before gunicorn's own
    tracebacks. (A connection opened and closed here: none may outlive the master's fork.)"""
    from .schema import SCHEMA_VERSION, newer_schema, schema_version
    if not path.exists():
        return
    try:
        with closing(sqlite3.connect(path, timeout=1.0)) as conn:
            version = schema_version(conn)
    except sqlite3.Error:
        return                        # damaged or locked: the workers say how, in their own words
    if version > SCHEMA_VERSION:
        raise newer_schema(path, version)


class WatchedFile(Generic[Loaded]):
    """Keeps the last good load of a file and reloads it when it changes.

    By default every use looks at the file's size and mtime (one stat call), so the webhook that
    follows a save already routes by it.
    """

    def __init__(self, path: Path, load: Callable[[Path], Loaded], *, log: logging.Logger,
                 clock: Callable[[], float] = time.monotonic, check_interval: float = 0.0,
                 last_good: Path | None = None) -> None:
        self._path = Path(path)
        self._load = load
        self._log = log
        self._clock = clock
        self._check_interval = check_interval
        self._last_good = last_good              # a copy of the last version that loaded, for a later process
        self._lock = threading.Lock()
        self._signature = self._stat()           # before reading, so an edit during the load is seen later
        self._digest = self._content_digest()    # the same: an edit during the load differs from it
        self._last_error: str | None = None
        self._loaded_at = _now()
        try:
            self._loaded = load(self._path)
        except ConfigError as exc:
            # A fresh start checks the file first (check_files), so this is a process the running service
            # started after a broken save: a gunicorn worker replacing one that died, or a reload.
            self._loaded = self._load_last_good(exc)
            self._last_error = str(exc)
            self._log.error("%s; routing with the last good version (%d entries)", exc, len(self._loaded))
            if isinstance(exc, UnreadableFile):
                self._signature = _UNREAD       # tried again at the next check, as in _reload
        else:
            self._keep_good(self._signature)
        self._next_check = clock() + check_interval

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._path)!r})"

    def current(self) -> Loaded:
        """The last good load, after reloading the file if it changed (looked at every check_interval s)."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._check_interval
            if self._stat() != self._signature:
                with self._lock:                 # a webhook arriving during a reload waits for its result
                    signature = self._stat()
                    if signature != self._signature:
                        self._reload(signature)
        return self._loaded

    def state(self) -> dict:
        """Path, entry count, time of the last good load and the last load error, for /healthz.

        The file is checked first, as for routing, so a worker that routed nothing since an edit reports it too.
        """
        self.current()
        return {"path": os_text(str(self._path)), "entries": len(self._loaded),
                "loaded_at": self._loaded_at, "last_error": self._last_error}

    def look_inside(self) -> None:
        """For the background watcher: notice an edit the file's size and times do not show. On Windows a file
        restored over the old one with its old modification time (robocopy, a backup tool) keeps its size,
        times and identity there when the sizes happen to match."""
        digest = self._content_digest()
        if digest is not None and digest != self._digest:
            with self._lock:
                self._signature = _UNREAD       # the next use reads the file again
            self.current()

    def _content_digest(self) -> bytes | None:
        try:
            return hashlib.sha256(self._path.read_bytes()).digest()
        except OSError:
            return None

    def _reload(self, signature: tuple[int, ...] | None) -> None:
        digest = self._content_digest()          # before the load, like the signature
        self._digest = digest
        try:
            loaded = self._load(self._path)
        except ConfigError as exc:
            if not isinstance(exc, UnreadableFile):
                self._signature = signature      # broken until the next save; unreadable: tried again
            if str(exc) != self._last_error:     # said once, not at every use
                self._log.error("%s; still routing with the last good version (%d entries)", exc, len(self._loaded))
            self._last_error = str(exc)
            return
        self._signature = signature              # read before the load, so an edit during it is seen later
        self._loaded, self._loaded_at, self._last_error = loaded, _now(), None
        self._log.info("%s reloaded: %d entries", self._path, len(loaded))
        self._keep_good(signature)

    def _load_last_good(self, error: ConfigError) -> Loaded:
        """The copy kept by an earlier good load, as if read from the file itself; else `error` stops us."""
        if self._last_good is None or not self._last_good.exists():
            raise error
        try:
            loaded = dataclasses.replace(self._load(self._last_good), path=self._path)
            self._loaded_at = iso_time(self._last_good.stat().st_mtime)
        except (ConfigError, OSError):
            raise error from None
        return loaded

    def _keep_good(self, signature: tuple[int, ...] | None) -> None:
        """Copy the file just loaded to `last_good`, unless it changed since (that version gets its own load)."""
        if self._last_good is None:
            return
        try:
            data = self._path.read_bytes()
            if self._stat() != signature:
                return
            self._last_good.parent.mkdir(parents=True, exist_ok=True)
            partial = self._last_good.with_name(f"{self._last_good.name}.{os.getpid()}.tmp")
            # Owner-only, like DATA_DIR's other files: owners.json may hold group bots' URLs and secrets.
            flags = os.O_WRONLY | os.O_TRUNC | getattr(os, "O_BINARY", 0)   # Windows: no CRLF added
            with os.fdopen(owner_only(partial, flags), "wb") as copy:
                copy.write(data)
            try:
                os.replace(partial, self._last_good)     # whole or not at all, whichever process writes last
            finally:
                partial.unlink(missing_ok=True)
        except FileNotFoundError:                        # an optional file that is not there: nothing to keep
            self._forget_good()
        except OSError as exc:
            self._log.warning("could not keep a copy of %s in %s: %s", self._path, self._last_good, exc)

    def _forget_good(self) -> None:
        try:
            self._last_good.unlink(missing_ok=True)
        except OSError as exc:
            self._log.warning("could not remove %s: %s", self._last_good, exc)

    def _stat(self) -> tuple[int, ...] | None:
        # None while the file is missing (an editor replacing it), so its return counts as a change. The
        # inode and change time too: `cp -p`, `rsync -a` or a restored backup can bring back the old mtime
        # and size with other content, and a file share may keep mtimes to the second.
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns


class FileWatcher:
    """Checks watched files in the background, so an edit (a broken one too) is applied and logged
    within seconds in every process, not only when a webhook happens to arrive."""

    def __init__(self, files: list[WatchedFile], interval: float = 1.0) -> None:
        self._files = files
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for watched in self._files:
                try:
                    watched.current()
                    watched.look_inside()
                except Exception:                # a surprise in one check must not end the watching
                    logging.getLogger(__name__).exception("checking %r failed", watched)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
