"""owners.json: who owns which project, loaded safely and reloaded when it changes.

The file maps a key to one recipient or a list of them; a recipient is an
email or a Feishu open_id (`ou_...`). `load_owners` decodes, parses and
validates it into an immutable `Owners`; `Owners.match` is pure and decides who
hears about a push; `OwnersFile` keeps the last good `Owners` while people edit
the file.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from .events import Project
from .settings import ConfigError

log = logging.getLogger("gitlab_feishu.owners")

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")   # practical, not RFC 5322
_OPEN_ID = re.compile(r"ou_[A-Za-z0-9]+")
_JSON_SPACE = " \t\r\n"
_RESAVE = "open it in Notepad, File > Save As, choose Encoding: UTF-8 and save"
_FULL_WIDTH_PUNCTUATION = "“”‘’，：｛｝［］"   # what a Chinese input method types instead of JSON's ASCII
MIN_FRAGMENT = 2   # shorter keys and key parts never match fuzzily: they would match nearly everything


@dataclass(frozen=True)
class Match:
    """One recipient of a push and the rule that chose them."""
    recipient: str   # an email exactly as written in owners.json, or a Feishu open_id "ou_..."
    rule: str        # "exact: KEY" or "fuzzy: KEY", KEY as written in the file


@dataclass(frozen=True)
class _Target:
    """A project folded once for comparison."""
    path: str
    name: str
    exact_forms: frozenset[str]   # the name and every run of consecutive path segments


@dataclass(frozen=True)
class _Entry:
    """One key of owners.json with its recipients and its comparison forms, folded at load."""
    key: str                          # as written in the file
    line: int
    recipients: tuple[str, ...]
    folded: str = field(init=False, repr=False)
    fragments: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        folded = _fold(self.key).strip().strip("/")
        parts = [folded] + re.split(r"[_\s]+", folded)
        object.__setattr__(self, "folded", folded)
        object.__setattr__(self, "fragments",
                           tuple(dict.fromkeys(p for p in parts if len(p) >= MIN_FRAGMENT)))

    def matches_exactly(self, target: _Target) -> bool:
        """The key is the project's name, or a whole run of its path segments (the full path included)."""
        return self.folded in target.exact_forms

    def matches_fuzzily(self, target: _Target) -> bool:
        """The key, or a part of it split at `_` and spaces, occurs inside the path or the name."""
        return any(f in target.path or f in target.name for f in self.fragments)


@dataclass(frozen=True)
class Owners:
    """One validated owners.json; immutable, so it is safe to share between threads."""
    path: Path
    entries: tuple[_Entry, ...] = field(repr=False)
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, project: Project) -> list[Match]:
        """Who to notify about `project`, each recipient once, in file order.

        Case-insensitive (NFKC + casefold, so full-width letters and `＿` count
        as their ASCII forms). Exact tier first: the key equals the project's
        name, its full path or a whole run of consecutive path segments (a group
        `grouptwogame`, `grouptwogame/sub`, `sub/project`, the project's own
        path); every exact match counts, whatever the key's length, since an
        exact segment cannot match by accident. Only when nothing matched
        exactly, the fuzzy tier: the whole key or a part of it (split at `_` and
        spaces) of 2 characters or more occurs inside the path or the name.
        A recipient named by several keys is kept with the first key's rule.
        """
        target = _target(project.path, project.name)
        for tier, test in (("exact", _Entry.matches_exactly), ("fuzzy", _Entry.matches_fuzzily)):
            matches: list[Match] = []
            seen: set[str] = set()
            for entry in self.entries:
                if not test(entry, target):
                    continue
                for recipient in entry.recipients:
                    identity = recipient.casefold() if "@" in recipient else recipient
                    if identity not in seen:
                        seen.add(identity)
                        matches.append(Match(recipient, f"{tier}: {entry.key}"))
            if matches:
                return matches
        return []


def load_owners(path: Path) -> Owners:
    """Read and validate owners.json; a ConfigError names the file, line, key and problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: create it (see README, owners.json) or set OWNERS_FILE") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror}") from None
    text, warnings = _decode(data, path)
    for warning in warnings:
        log.warning("%s", warning)
    return Owners(path, tuple(_entries(text, path)), tuple(warnings))


def _decode(data: bytes, path: Path) -> tuple[str, list[str]]:
    """UTF-8 (BOM or not) is normal; UTF-16 with a BOM or a plausible GBK file is accepted with a warning."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), [f"{path} was decoded as UTF-16 (Notepad's \"Unicode\"); "
                                           f"to keep it portable, {_RESAVE}"]
        except UnicodeDecodeError:
            raise ConfigError(f"{path} starts like UTF-16 but is not valid UTF-16; {_RESAVE}") from None
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        utf8_error = exc
    try:
        # An old Notepad "ANSI" save on a Chinese Windows; trusted only when it also parses as JSON.
        text = data.decode("gb18030")
        json.loads(text)
    except (UnicodeDecodeError, ValueError):
        line = data.count(b"\n", 0, utf8_error.start) + 1
        raise ConfigError(f"{path} is not UTF-8 (byte 0x{data[utf8_error.start]:02x} on line {line}) "
                          f"nor readable as GBK; {_RESAVE}") from None
    return text, [f"{path} was decoded as GBK (an \"ANSI\" save); to avoid garbled names, {_RESAVE}"]


def _entries(text: str, path: Path) -> Iterator[_Entry]:
    """Validate the top-level object and build its entries in file order."""
    if not text.strip():
        raise ConfigError(f"{path} is empty: it must be a JSON object such as "
                          '{"group/project": "owner@example.com"}')
    try:
        top = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}, line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}"
                          f"{_syntax_hint(text, exc.pos)}") from None
    if not isinstance(top, dict):
        raise ConfigError(f"{path}, line 1: the top level must be a JSON object "
                          f'{{"key": "email" or ["email", ...]}}, not {_kind(top)}')
    first_line: dict[str, int] = {}
    for key, value, line in _members(text):
        where = f"{path}, line {line}: key {json.dumps(key, ensure_ascii=False)}"
        if key in first_line:
            raise ConfigError(f"{where} appears twice (first on line {first_line[key]}); "
                              "JSON would keep only the last one, so merge their owners into one list")
        first_line[key] = line
        if not _fold(key).strip().strip("/"):
            raise ConfigError(f"{where}: the key is empty; write a project path, group or name")
        yield _Entry(key, line, _recipients(value, where))


def _recipients(value: Any, where: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise ConfigError(f"{where}: the value must be an email or a list of emails, not {_kind(value)}")
    if not values:
        raise ConfigError(f"{where}: the list of owners is empty; add an email or remove the key")
    for item in values:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: every owner must be an email in quotes, not {_kind(item)}")
        if not (_EMAIL.fullmatch(item) or _OPEN_ID.fullmatch(item)):
            raise ConfigError(f"{where}: {json.dumps(item, ensure_ascii=False)} is not an email address "
                              "(name@domain.tld, no spaces) or a Feishu open_id (ou_...)")
    return tuple(values)


def _members(text: str) -> Iterator[tuple[str, Any, int]]:
    """(key, value, line of the key) for each member of the top-level object of valid JSON text."""
    decoder = json.JSONDecoder()

    def skip(pos: int) -> int:
        while text[pos] in _JSON_SPACE:
            pos += 1
        return pos

    pos = skip(skip(0) + 1)                       # past "{"
    while text[pos] != "}":
        key, end = decoder.raw_decode(text, pos)
        value, end = decoder.raw_decode(text, skip(skip(end) + 1))   # past ":"
        yield key, value, text.count("\n", 0, pos) + 1
        pos = skip(end)
        if text[pos] == ",":
            pos = skip(pos + 1)


def _syntax_hint(text: str, pos: int) -> str:
    nearby = text[max(pos - 1, 0):pos + 1]
    if any(ch in _FULL_WIDTH_PUNCTUATION for ch in nearby):
        return " (use ASCII quotes \" , : instead of the Chinese “ ” ， ：)"
    return " (check for a missing or extra comma and for double quotes around every key and email)"


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    return names.get(type(value), f"the number {value}" if isinstance(value, (int, float)) else "that")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


@lru_cache(maxsize=1024)
def _target(path: str, name: str) -> _Target:
    folded_path, folded_name = _fold(path).strip().strip("/"), _fold(name).strip()
    segments = folded_path.split("/")
    runs = {"/".join(segments[i:j]) for i in range(len(segments)) for j in range(i + 1, len(segments) + 1)}
    return _Target(folded_path, folded_name, frozenset(runs | {folded_name}))


class OwnersFile:
    """Keeps the last good Owners and reloads the file when it changes."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic,
                 check_interval: float = 2.0) -> None:
        self._path = Path(path)
        self._clock = clock
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._signature = self._stat()           # before reading, so an edit during the load is seen later
        self._owners = load_owners(self._path)   # a ConfigError here stops the service
        self._loaded_at = _now()
        self._last_error: str | None = None
        self._next_check = clock() + check_interval

    def current(self) -> Owners:
        """The last good Owners, after reloading the file if it changed (checked every check_interval s)."""
        now = self._clock()
        if now >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = now + self._check_interval
                signature = self._stat()
                if signature != self._signature:
                    self._signature = signature
                    self._reload()
            finally:
                self._lock.release()
        return self._owners

    def state(self) -> dict:
        """Path, entry count, time of the last good load and the last load error, for /healthz.

        The file is checked first, as for routing, so a worker that routed nothing since an edit reports it too.
        """
        self.current()
        return {"path": str(self._path), "entries": len(self._owners),
                "loaded_at": self._loaded_at, "last_error": self._last_error}

    def _reload(self) -> None:
        try:
            owners = load_owners(self._path)
        except ConfigError as exc:
            self._last_error = str(exc)
            log.error("%s; still routing with the last good version (%d entries)", exc, len(self._owners))
            return
        self._owners, self._loaded_at, self._last_error = owners, _now(), None
        log.info("%s reloaded: %d entries", self._path, len(owners))

    def _stat(self) -> tuple[int, int] | None:
        # None while the file is missing (an editor replacing it), so its return counts as a change.
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
