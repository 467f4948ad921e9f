"""owners.json: who owns which project, loaded safely and reloaded when it changes.

The file maps a key to one recipient or a list of them; a recipient is an
email or a Feishu open_id (`ou_...`). `load_owners` decodes, parses and
validates it into an immutable `Owners`; `Owners.match` is pure and decides who
hears about a push; `OwnersFile` keeps the last good `Owners` while people edit
the file (the file handling is shared with users.json, in `config_file`).
"""
from __future__ import annotations

import json
import logging
import re
import time
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from .config_file import WatchedFile, describe, object_members, read_config_text
from .events import Project
from .settings import ConfigError

log = logging.getLogger("gitlab_feishu.owners")

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")   # practical, not RFC 5322
_OPEN_ID = re.compile(r"ou_[A-Za-z0-9]+")
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
    text, warnings = read_config_text(path, "create it (see README, owners.json) or set OWNERS_FILE", log)
    return Owners(path, tuple(_entries(text, path)), tuple(warnings))


def _entries(text: str, path: Path) -> Iterator[_Entry]:
    """Validate the top-level object and build its entries in file order."""
    for key, value, line, where in object_members(text, path, '{"group/project": "owner@example.com"}'):
        if not _fold(key).strip().strip("/"):
            raise ConfigError(f"{where}: the key is empty; write a project path, group or name")
        yield _Entry(key, line, _recipients(value, where))


def _recipients(value: Any, where: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise ConfigError(f"{where}: the value must be an email or a list of emails, not {describe(value)}")
    if not values:
        raise ConfigError(f"{where}: the list of owners is empty; add an email or remove the key")
    for item in values:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: every owner must be an email in quotes, not {describe(item)}")
        if not is_recipient(item):
            raise ConfigError(f"{where}: {json.dumps(item, ensure_ascii=False)} is not an email address "
                              "(name@domain.tld, no spaces) or a Feishu open_id (ou_...)")
    return tuple(values)


def is_recipient(value: str) -> bool:
    """An email address or a Feishu open_id: what owners.json and users.json may name."""
    return bool(_EMAIL.fullmatch(value) or _OPEN_ID.fullmatch(value))


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


@lru_cache(maxsize=1024)
def _target(path: str, name: str) -> _Target:
    folded_path, folded_name = _fold(path).strip().strip("/"), _fold(name).strip()
    segments = folded_path.split("/")
    runs = {"/".join(segments[i:j]) for i in range(len(segments)) for j in range(i + 1, len(segments) + 1)}
    return _Target(folded_path, folded_name, frozenset(runs | {folded_name}))


class OwnersFile(WatchedFile[Owners]):
    """Keeps the last good Owners and reloads owners.json when it changes."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic,
                 check_interval: float = 2.0) -> None:
        super().__init__(path, load_owners, log=log, clock=clock, check_interval=check_interval)
