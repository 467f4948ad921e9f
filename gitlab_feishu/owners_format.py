"""owners.json as a file: decoding, JSON with line numbers, and validation into entries.

A value is one recipient, a list of them, or an object that adds filters and
group chats:

    "grouptwogame/*": {"owners": ["lead@example.com"], "chats": ["https://open.feishu.cn/open-apis/bot/v2/hook/…"],
                       "branches": ["main", "release/*", ":protected"], "events": ["push", "pipeline"]}

Every mistake is a ConfigError naming the file, the line, the key and the
field. Matching lives in owners.py.
"""
from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .chats import bot_url_problem, mask_chat_url, quoted_value
from .config_file import describe, element_lines, members_at, object_members, read_config_text
from .setting_values import EVENT_KINDS, is_recipient, recipient_hint
from .settings import ConfigError

log = logging.getLogger("gitlab_feishu.owners")

FIELDS = ("owners", "chats", "branches", "events")
PRESETS = (":default", ":protected")
MIN_KEY = 2        # keys and key parts shorter than this never match: they would match nearly everything

# What a GitLab group or project path may hold (folded), and `*`: a pattern with anything else never matches.
_PATH_PATTERN = re.compile(r"[a-z0-9_.\-/*]+")
# What git refuses in a branch name (git check-ref-format), except `*`, which is our wildcard.
_NOT_IN_BRANCH = re.compile(r"[\x00-\x20\x7f~^:?\[\\]|\.\.|@\{|//")


@dataclass(frozen=True)
class Entry:
    """One key of owners.json, validated; None filters mean "every branch" and "every event"."""
    key: str                                  # as written in the file
    line: int
    owners: tuple[str, ...] = ()              # emails and open_ids
    chats: tuple[str, ...] = field(default=(), repr=False)   # bot webhook URLs (credentials); secrets apart
    branches: tuple[str, ...] | None = None   # names, `*` patterns and presets
    events: frozenset[str] | None = None


@dataclass(frozen=True)
class OwnersData:
    entries: tuple[Entry, ...]
    chat_secrets: dict[str, str] = field(repr=False)   # webhook URL -> signing secret
    warnings: tuple[str, ...] = ()


def read_owners(path: Path) -> OwnersData:
    """Read, decode and validate owners.json; a ConfigError names the file, line, key and problem."""
    text, warnings = read_config_text(path, "create it (see README, owners.json) or set OWNERS_FILE", log)
    secrets: dict[str, tuple[str, int]] = {}
    entries = tuple(_entries(text, path, secrets))
    for entry in entries:
        why = _never_matches(entry.key)
        if why:
            warnings.append(f"{path}, line {entry.line}: key {_quote(entry.key)} {why}")
            log.warning("%s", warnings[-1])
    return OwnersData(entries, {url: secret for url, (secret, _) in secrets.items()}, tuple(warnings))


def too_short(key: str) -> bool:
    """A key that never matches: shorter than MIN_KEY and no `*` pattern."""
    folded = fold(key).strip().strip("/")
    return len(folded) < MIN_KEY and "*" not in folded


def _never_matches(key: str) -> str | None:
    """Why a key can never match anything, or None."""
    if too_short(key):
        return (f"is shorter than {MIN_KEY} characters, so it never matches; write the project's full path "
                "(group/project) or its name")
    folded = fold(key).strip().strip("/")
    if "*" in folded and not _PATH_PATTERN.fullmatch(folded):
        return ("is a * pattern, which matches a project's path (group/project: letters, digits, - _ .) and never "
                "its display name, so it never matches; write a pattern over the path, or the name without *")
    return None


def fold(text: str) -> str:
    """The form keys and projects are compared in: NFKC (full-width letters count as ASCII), casefolded."""
    return unicodedata.normalize("NFKC", text).casefold()


def _entries(text: str, path: Path, secrets: dict[str, tuple[str, int]]) -> Iterator[Entry]:
    """Validate the top-level object and build its entries in file order."""
    for key, value, line, where, value_at in object_members(text, path, '{"group/project": "owner@example.com"}'):
        if not fold(key).strip().strip("/"):
            raise ConfigError(f"{where}: the key is empty; write a project path, group or name")
        if isinstance(value, dict):
            yield _object_entry(key, line, text, value_at, where, path, secrets)
        else:
            yield Entry(key, line, owners=_owners(value, where, _line_of_item(text, value_at, value)))


def _object_entry(key: str, line: int, text: str, start: int, where: str, path: Path,
                  secrets: dict[str, tuple[str, int]]) -> Entry:
    values: dict[str, Any] = {}
    for name, value, field_line, value_at in members_at(text, start):
        at = f"{path}, line {field_line}: key {_quote(key)}, field {_quote(name)}"
        if name not in FIELDS:
            guess = next((f for f in FIELDS if f.rstrip("s") == name.lower().rstrip("s")), None)
            raise ConfigError(f"{at}: unknown field" + (f'; did you mean "{guess}"?' if guess else
                              "; an entry object takes " + ", ".join(f'"{f}"' for f in FIELDS)))
        if name in values:
            raise ConfigError(f"{at} appears twice; JSON would keep only the last one")
        if not isinstance(value, list):
            raise ConfigError(f"{at}: must be a list, e.g. {_EXAMPLES[name]}, not {describe(value)}")
        if not value and name in ("branches", "events"):
            raise ConfigError(f"{at}: the list is empty, so nothing would match; remove the field to mean "
                              f"every {'branch' if name == 'branches' else 'event'}")
        if name == "owners":
            values[name] = _owners(value, at, _line_of_item(text, value_at, value)) if value else ()
        else:
            values[name] = _FIELD_CHECKS[name](value, at, field_line, secrets)
    if not values.get("owners") and not values.get("chats"):
        raise ConfigError(f"{where}: the object names nobody to notify; give \"owners\" (emails) "
                          f"or \"chats\" (group bot webhook URLs), or both")
    return Entry(key, line, owners=values.get("owners", ()), chats=values.get("chats", ()),
                 branches=values.get("branches"), events=values.get("events"))


def _line_of_item(text: str, start: int, value: Any) -> Callable[[int], str]:
    """Where item n of the list at `start` is, for an error message: its line when the list spans several.
    Found only for an error: walking every list at every reload made a large owners.json several times
    slower to read, and a webhook arriving during a reload waits for it."""
    def line_of(n: int) -> str:
        lines = element_lines(text, start) if isinstance(value, list) else []
        return f" (line {lines[n]})" if len(set(lines)) > 1 else ""
    return line_of


def _owners(value: Any, where: str, line_of: Callable[[int], str]) -> tuple[str, ...]:
    """The owners of an entry; a bad one is named with its own line when the list spans several."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise ConfigError(f"{where}: the value must be an email, a list of emails, or an object with "
                          f"{', '.join(FIELDS)}; not {describe(value)}")
    if not values:
        raise ConfigError(f"{where}: the list of owners is empty; add an email or remove the key")
    for n, item in enumerate(values):
        if not isinstance(item, str):
            raise ConfigError(f"{where}: every owner must be an email in quotes, not {describe(item)}{line_of(n)}")
        if not is_recipient(item):
            bot = ' (a group bot\'s webhook URL goes under "chats")' if "/open-apis/bot/" in item else ""
            raise ConfigError(f"{where}: {quoted_value(item)}{line_of(n)} is not an email address "
                              f"(name@domain.tld, no spaces) or a Feishu open_id (ou_...){bot}{recipient_hint(item)}")
    return tuple(values)


def _chats(value: list, where: str, line: int, secrets: dict[str, tuple[str, int]]) -> tuple[str, ...]:
    urls = []
    for number, item in enumerate(value, 1):
        at = f"{where}, item {number}"
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"url", "secret"})
            if unknown:
                raise ConfigError(f"{at}: unknown field {_quote(unknown[0])}; a chat object takes "
                                  '"url" and "secret"')
            url, secret = item.get("url"), item.get("secret")
            if "url" not in item:
                raise ConfigError(f'{at}: "url" is missing; a chat object is {{"url": ..., "secret": ...}}')
            if not isinstance(url, str):
                raise ConfigError(f'{at}: "url" must be the bot\'s webhook URL in quotes, not {describe(url)}')
            if not isinstance(secret, str) or not secret.strip():
                raise ConfigError(f'{at}: "secret" must be the bot\'s signing secret in quotes; '
                                  "leave the object out and write the URL alone when signing is off")
        else:
            url, secret = item, None
        if not isinstance(url, str):
            raise ConfigError(f"{at}: a chat is a bot webhook URL in quotes, or "
                              f'{{"url": ..., "secret": ...}}; not {describe(url)}')
        url = url.strip()
        problem = bot_url_problem(url)
        if problem:
            raise ConfigError(f"{at}: {quoted_value(url)} {problem}")
        if secret is not None:
            secret = secret.strip()
            known = secrets.setdefault(url, (secret, line))
            if known[0] != secret:
                raise ConfigError(f"{at}: {mask_chat_url(url)} has a different secret on line {known[1]}; "
                                  "a bot has one secret")
        urls.append(url)
    return tuple(dict.fromkeys(urls))


def _branches(value: list, where: str, *_: Any) -> tuple[str, ...]:
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: every branch must be a name or pattern in quotes, not {describe(item)}")
        if item.startswith(":"):
            if item not in PRESETS:
                raise ConfigError(f"{where}: {_quote(item)} is not a preset; the presets are "
                                  f"{' and '.join(PRESETS)}")
        elif item.startswith("refs/"):
            raise ConfigError(f"{where}: {_quote(item)}: write the branch name alone, without refs/heads/")
        elif (not item or _NOT_IN_BRANCH.search(item) or item.startswith(("-", "/", "."))
              or item.endswith(("/", ".", ".lock"))):
            raise ConfigError(f"{where}: {_quote(item)} is not a branch name or pattern (like main or "
                              f"release/*; no spaces, and * is the only wildcard)")
    return tuple(dict.fromkeys(value))


def _events(value: list, where: str, *_: Any) -> frozenset[str]:
    for item in value:
        if item not in EVENT_KINDS:
            raise ConfigError(f"{where}: {_quote(item) if isinstance(item, str) else describe(item)} is not an "
                              f"event; choose from {', '.join(EVENT_KINDS)}")
    return frozenset(value)


_FIELD_CHECKS = {"chats": _chats, "branches": _branches, "events": _events}   # "owners": see _owners
_EXAMPLES = {"owners": '["lead@example.com"]', "chats": '["https://open.feishu.cn/open-apis/bot/v2/hook/…"]',
             "branches": '["main", "release/*"]', "events": '["push", "merge_request"]'}


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
