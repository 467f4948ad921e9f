"""Hand-edited JSON files (owners.json, users.json): reading, checking and reloading them safely.

People edit these files in Windows Notepad, with a Chinese input method, while
the service runs. So a file is decoded whatever Notepad saved it as (or
refused with what to do), every mistake names the file, line and key, and
`WatchedFile` keeps the last good version while an edit is broken.
"""
from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Sized, TypeVar

from .settings import ConfigError, Settings, os_text

_JSON_SPACE = " \t\r\n"
_RESAVE = "open it in Notepad, File > Save As, choose Encoding: UTF-8 and save"
_FULL_WIDTH_PUNCTUATION = "“”‘’，：｛｝［］"   # what a Chinese input method types instead of JSON's ASCII

Loaded = TypeVar("Loaded", bound=Sized)


class UnreadableFile(ConfigError):
    """The file is there but could not be read just now (an editor or a virus scanner holding it)."""


def read_config_text(path: Path, missing_hint: str, log: logging.Logger) -> tuple[str, list[str]]:
    """The file's text and any encoding warnings (also logged); a ConfigError says what to fix."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: {missing_hint}") from None
    except OSError as exc:
        raise UnreadableFile(f"{path} cannot be read: {exc.strerror}") from None
    text, warnings = _decode(data, path)
    for warning in warnings:
        log.warning("%s", warning)
    return text, warnings


def object_members(text: str, path: Path, example: str) -> Iterator[tuple[str, Any, int, str, int]]:
    """(key, value, line, where, value offset) for each member of the JSON object in `text`, in file order.

    `where` ("FILE, line N: key "K"") starts the caller's own error messages; the value's offset
    lets `members_at` walk an object value for its own line numbers. A ConfigError
    names the file and line when the text is empty, not JSON, not an object, or repeats a key;
    `example` shows what the object should look like.
    """
    if not text.strip():
        raise ConfigError(f"{path} is empty: it must be a JSON object such as {example}")
    try:
        top = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}, line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}"
                          f"{_syntax_hint(text, exc.pos)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested far too deeply to be this file; it must be a JSON object such as "
                          f"{example}") from None
    if not isinstance(top, dict):
        raise ConfigError(f"{path}, line 1: the top level must be a JSON object such as {example}, "
                          f"not {describe(top)}")
    first_line: dict[str, int] = {}
    for key, value, line, value_at in members_at(text, 0):
        where = f"{path}, line {line}: key {json.dumps(key, ensure_ascii=False)}"
        if key in first_line:
            raise ConfigError(f"{where} appears twice (first on line {first_line[key]}); "
                              "JSON would keep only the last one, so merge the two into one entry")
        first_line[key] = line
        yield key, value, line, where, value_at


def describe(value: Any) -> str:
    """What a JSON value is, for an error message: "a list", "null", "the number 5"."""
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    return names.get(type(value), f"the number {value}" if isinstance(value, (int, float)) else "that")


def _decode(data: bytes, path: Path) -> tuple[str, list[str]]:
    """UTF-8 (BOM or not) is normal; UTF-16 with a BOM or a plausible GBK file is accepted with a warning."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), [f"{path} was decoded as UTF-16 (Notepad's \"Unicode\"); "
                                           f"to keep it portable, {_RESAVE}"]
        except UnicodeDecodeError:
            raise ConfigError(f"{path} starts like UTF-16 but is not valid UTF-16; {_RESAVE}") from None
    if b"\x00" in data:                          # UTF-16 without its byte-order mark, which UTF-8 would read
        raise ConfigError(f"{path} holds NUL bytes, as UTF-16 without a byte-order mark does; {_RESAVE}")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        utf8_error = exc
    line = data.count(b"\n", 0, utf8_error.start) + 1
    not_utf8 = f"{path} is not UTF-8 (byte 0x{data[utf8_error.start]:02x} on line {line})"
    try:
        # An old Notepad "ANSI" save on a Chinese Windows; trusted only when it also parses as JSON.
        text = data.decode("gb18030")
        json.loads(text)
    except json.JSONDecodeError as exc:
        # Readable as GBK but with a typo: say where, or the person re-saves and still has the typo.
        raise ConfigError(f"{not_utf8}; read as GBK (an \"ANSI\" save), line {exc.lineno} column {exc.colno} "
                          f"is not valid JSON: {exc.msg}{_syntax_hint(text, exc.pos)}; {_RESAVE}") from None
    except (ValueError, RecursionError):
        raise ConfigError(f"{not_utf8} nor readable as GBK; {_RESAVE}") from None
    if any("\ue000" <= char <= "\uf8ff" for char in text):
        # Private-use characters: GBK bytes never make them, another encoding's (Big5's) often do.
        raise ConfigError(f"{not_utf8} nor GBK (read as GBK it holds characters no text has: Big5 or another "
                          f"encoding?); {_RESAVE}")
    return text, [f"{path} was decoded as GBK (an \"ANSI\" save); to avoid garbled names, {_RESAVE}"]


def members_at(text: str, start: int) -> Iterator[tuple[str, Any, int, int]]:
    """(key, value, line of the key, offset of the value) for each member of the object at `start`.

    `text` is valid JSON (json.loads accepted it), so this walk needs no error handling.
    """
    decoder = json.JSONDecoder()

    def skip(pos: int) -> int:
        while text[pos] in _JSON_SPACE:
            pos += 1
        return pos

    pos = skip(skip(start) + 1)                   # past "{"
    while text[pos] != "}":
        key, end = decoder.raw_decode(text, pos)
        value_at = skip(skip(end) + 1)            # past ":"
        value, end = decoder.raw_decode(text, value_at)
        yield key, value, text.count("\n", 0, pos) + 1, value_at
        pos = skip(end)
        if text[pos] == ",":
            pos = skip(pos + 1)


def _syntax_hint(text: str, pos: int) -> str:
    nearby = text[max(pos - 1, 0):pos + 1]
    if any(ch in _FULL_WIDTH_PUNCTUATION for ch in nearby):
        return " (use ASCII quotes \" , : instead of the Chinese “ ” ， ：)"
    return " (check for a missing or extra comma and for double quotes around every key and email)"


def check_files(settings: Settings) -> None:
    """Refuse to start with a broken owners.json or users.json (a ConfigError names file, line and key).

    Only a fresh start: a process the running service starts later (a gunicorn worker replacing one that
    died, a reload) routes by the last good version instead, as the running ones do. Light on purpose:
    gunicorn's master calls it, and keeps no Flask.
    """
    from .owners import load_owners        # here: both modules build on this one
    from .users import load_users

    load_owners(settings.owners_file)
    load_users(settings.users_file)


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
        self._last_error: str | None = None
        try:
            self._loaded = load(self._path)
        except ConfigError as exc:
            # A fresh start checks the file first (check_files), so this is a process the running service
            # started after a broken save: a gunicorn worker replacing one that died, or a reload.
            self._loaded = self._load_last_good(exc)
            self._last_error = str(exc)
            self._log.error("%s; routing with the last good version (%d entries)", exc, len(self._loaded))
        else:
            self._keep_good(self._signature)
        self._loaded_at = _now()
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

    def _reload(self, signature: tuple[int, int] | None) -> None:
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
            return dataclasses.replace(self._load(self._last_good), path=self._path)
        except ConfigError:
            raise error from None

    def _keep_good(self, signature: tuple[int, int] | None) -> None:
        """Copy the file just loaded to `last_good`, unless it changed since (that version gets its own load)."""
        if self._last_good is None:
            return
        try:
            data = self._path.read_bytes()
            if self._stat() != signature:
                return
            self._last_good.parent.mkdir(parents=True, exist_ok=True)
            partial = self._last_good.with_name(f"{self._last_good.name}.{os.getpid()}.tmp")
            partial.write_bytes(data)
            os.replace(partial, self._last_good)         # whole or not at all, whichever process writes last
        except FileNotFoundError:                        # an optional file that is not there: nothing to keep
            self._last_good.unlink(missing_ok=True)
        except OSError as exc:
            self._log.warning("could not keep a copy of %s in %s: %s", self._path, self._last_good, exc)

    def _stat(self) -> tuple[int, int] | None:
        # None while the file is missing (an editor replacing it), so its return counts as a change.
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size


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
                except Exception:                # a surprise in one check must not end the watching
                    logging.getLogger(__name__).exception("checking %r failed", watched)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
