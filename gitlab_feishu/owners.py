"""owners.json routing: who hears about an event, and which entry and filter decided it.

`load_owners` reads and validates the file (owners_format.py) into an
immutable `Owners`; `Owners.match` is pure and decides who hears about an
event; `Owners.route` also says why, for `--match`; `OwnersFile` keeps the
last good `Owners` while people edit the file.

The tier is chosen first, then each chosen entry's filters apply, so an exact
entry whose filters drop an event never lets a fuzzy entry take over.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Protocol

from .chats import mask_chat_url
from .watched import WatchedFile
from .events import Project
from .rows import recipient_identity
from .owners_format import MIN_KEY, Entry, fold, read_owners

log = logging.getLogger("gitlab_feishu.owners")


class RoutedEvent(Protocol):
    """What routing reads from an event; every event kind offers it."""
    kind: str                          # push | tag_push | merge_request | pipeline
    project: Project
    branch: str | None                 # what `branches` filters compare with; None for a tag
    ref_protected: bool | None         # None where GitLab does not say


@dataclass(frozen=True)
class Match:
    """One recipient of an event and the rule that chose them."""
    recipient: str   # an email as written in owners.json, an open_id "ou_...", or a bot webhook URL
    rule: str        # "exact: KEY" or "fuzzy: KEY", KEY as written in the file
    channel: str = "dm"   # "dm" (a person) or "chat" (a group bot)

    @property
    def shown(self) -> str:
        """The recipient as responses and logs show it: a chat's URL is a credential."""
        return mask_chat_url(self.recipient) if self.channel == "chat" else self.recipient

    def __repr__(self) -> str:
        return f"Match({self.shown!r}, {self.rule!r}, {self.channel!r})"


@dataclass(frozen=True)
class Routing:
    matches: tuple[Match, ...]
    notes: tuple[str, ...]   # one line per decision, for people


@dataclass(frozen=True)
class _Target:
    """A project folded once for comparison."""
    path: str
    name: str
    slashed: str                  # "/" + path + "/": a run of whole segments is a "/run/" inside it


@dataclass(frozen=True)
class _Entry:
    """An owners.json entry with its key folded once for comparison."""
    spec: Entry
    folded: str = field(init=False, repr=False)
    fragments: tuple[str, ...] = field(init=False, repr=False)
    glob: re.Pattern | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        folded = fold(self.spec.key).strip().strip("/")
        parts = [folded] + re.split(r"[_\s]+", folded)
        object.__setattr__(self, "folded", folded)
        object.__setattr__(self, "fragments",
                           tuple(dict.fromkeys(p for p in parts if len(p) >= MIN_KEY)))
        object.__setattr__(self, "glob", _wildcard(folded) if "*" in folded else None)

    @property
    def key(self) -> str:
        return self.spec.key

    def matches_exactly(self, target: _Target) -> bool:
        """A glob key matches the whole path; another key is the name or a whole run of path segments."""
        if self.glob is not None:
            return bool(self.glob.fullmatch(target.path))
        return len(self.folded) >= MIN_KEY and (self.folded == target.name or f"/{self.folded}/" in target.slashed)

    def matches_fuzzily(self, target: _Target) -> bool:
        """The key, or a part of it split at `_` and spaces, occurs inside the path or the name."""
        return self.glob is None and any(f in target.path or f in target.name for f in self.fragments)

    def refusal(self, event: RoutedEvent) -> str | None:
        """Why this entry's filters drop `event`, or None when they let it through."""
        if self.spec.events is not None and event.kind not in self.spec.events:
            return f"event {event.kind}"
        if self.spec.branches is not None and event.branch is not None and not any(
                _branch_matches(pattern, event) for pattern in self.spec.branches):
            return f"branch {event.branch}"
        return None

    def label(self, tier: str) -> str:
        filters = [f"{name}: {', '.join(sorted(values) if name == 'events' else values)}"
                   for name, values in (("branches", self.spec.branches), ("events", self.spec.events))
                   if values is not None]
        return f"{tier}: {self.key}" + (f" ({'; '.join(filters)})" if filters else "")

    def recipients(self) -> list[tuple[str, str]]:
        return [("dm", owner) for owner in self.spec.owners] + [("chat", url) for url in self.spec.chats]


@dataclass(frozen=True)
class Owners:
    """One validated owners.json; immutable, so it is safe to share between threads."""
    path: Path
    entries: tuple[_Entry, ...] = field(repr=False)
    warnings: tuple[str, ...] = ()
    chat_secrets: dict[str, str] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, event: RoutedEvent) -> list[Match]:
        """Who to notify about `event`, each recipient once, in file order (see `route`)."""
        return list(self.route(event).matches)

    def route(self, event: RoutedEvent) -> Routing:
        """Who to notify about `event`, and a note on each decision.

        Case-insensitive (NFKC + casefold, so full-width letters and `＿` count
        as their ASCII forms). Exact tier first: the key equals the project's
        name, its full path or a whole run of consecutive path segments (a group
        `grouptwogame`, `grouptwogame/sub`, the project's own path), or the key
        is a `*` pattern matching the full path; every exact match counts.
        Only when nothing matched exactly, the fuzzy tier (never glob keys):
        the whole key or a part of it (split at `_` and spaces) of 2 characters
        or more occurs inside the path or the name. Then each chosen entry's
        `events` and `branches` filters apply. A recipient named by several
        entries is kept with the first one's rule.
        """
        target = _target(event.project.path, event.project.name)
        tier = "exact"
        chosen = [entry for entry in self.entries if entry.matches_exactly(target)]
        if not chosen:
            tier = "fuzzy"
            chosen = [entry for entry in self.entries if entry.matches_fuzzily(target)]
        matches: list[Match] = []
        notes: list[str] = []
        first_rule: dict[tuple[str, str], str] = {}
        for entry in chosen:
            label, rule = entry.label(tier), f"{tier}: {entry.key}"
            refusal = entry.refusal(event)
            if refusal:
                notes.append(f"{label} filtered out: {refusal}")
                continue
            for channel, recipient in entry.recipients():
                match = Match(recipient, rule, channel)
                identity = recipient_identity(channel, recipient)
                if identity in first_rule:
                    notes.append(f"{label} -> {match.shown} (already notified through {first_rule[identity]})")
                    continue
                first_rule[identity] = rule
                matches.append(match)
                notes.append(f"{label} -> {match.shown}")
        if tier == "exact":
            notes.append("fuzzy tier not used: exact matches exist")
        elif chosen:
            notes.insert(0, "no exact match: fuzzy tier used")
        else:
            notes.append(f"no entry matches {event.project.path} ({event.project.name}), exactly or fuzzily")
        return Routing(tuple(matches), tuple(notes))

    def names(self, project: Project) -> bool:
        """Whether an entry names `project` in either tier, whatever its filters (e.g. which projects need a hook)."""
        target = _target(project.path, project.name)
        return any(entry.matches_exactly(target) or entry.matches_fuzzily(target) for entry in self.entries)

    def why_nobody(self, event: RoutedEvent) -> str:
        """The reason an event matched nobody, for the response and the log."""
        filtered = [note for note in self.route(event).notes if " filtered out: " in note]
        if filtered:
            return f"owners.json entries match {event.project.path}, but their filters exclude this event: " \
                   + "; ".join(filtered)
        return f"no entry in owners.json matches {event.project.path} ({event.project.name})"

    def chat_secret(self, url: str) -> str | None:
        """The signing secret owners.json gives for a group bot, read when sending so an edit applies."""
        return self.chat_secrets.get(url)


def load_owners(path: Path) -> Owners:
    """Read and validate owners.json; a ConfigError names the file, line, key and problem."""
    data = read_owners(Path(path))
    return Owners(Path(path), tuple(_Entry(entry) for entry in data.entries), data.warnings, data.chat_secrets)


def _branch_matches(pattern: str, event: RoutedEvent) -> bool:
    """A branch name, a `*` pattern (as GitLab's: `*` matches anything, `/` included) or a preset."""
    default = event.project.default_branch
    if pattern == ":default":
        return bool(default) and event.branch == default
    if pattern == ":protected":
        if event.ref_protected is not None:
            return event.ref_protected
        return bool(default) and event.branch == default
    return bool(_wildcard(pattern).fullmatch(event.branch or ""))


@lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern:
    """`*` matches any characters, `/` included, as in GitLab's protected branches; nothing else is special."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


@lru_cache(maxsize=1024)
def _target(path: str, name: str) -> _Target:
    folded_path, folded_name = fold(path).strip().strip("/"), fold(name).strip()
    # Not the set of every run of segments: that is quadratic in their number, and a path of a few thousand
    # segments (GitLab allows 21; a forged payload any) took seconds and hundreds of MB, kept by the cache.
    return _Target(folded_path, folded_name, f"/{folded_path}/")


class OwnersFile(WatchedFile[Owners]):
    """Keeps the last good Owners and reloads owners.json when it changes."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic,
                 check_interval: float = 0.0, last_good: Path | None = None) -> None:
        super().__init__(path, load_owners, log=log, clock=clock, check_interval=check_interval, last_good=last_good)
