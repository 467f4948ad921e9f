"""owners.json as a file: decoding, JSON with line numbers, and validation into entries.

A value is one recipient, a list of them, or an object that adds filters and
group chats:

    "grouptwogame/*": {"owners": ["lead@example.com"], "chats": ["https://open.feishu.cn/open-apis/bot/v2/hook/…"],
                       "branches": ["main", "release/*", ":protected"], "events": ["push", "pipeline"]}

Every mistake is a ConfigError naming the file, the line, the key and the
field. Matching lives in owners.py.
"""
from __future__ import annotations

import codecs
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .chats import bot_url_problem, mask_chat_url
from .settings import EVENT_KINDS, ConfigError

FIELDS = ("owners", "chats", "branches", "events")
PRESETS = (":default", ":protected")

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")   # practical, not RFC 5322
_OPEN_ID = re.compile(r"ou_[A-Za-z0-9]+")
# What git refuses in a branch name (git check-ref-format), except `*`, which is our wildcard.
_NOT_IN_BRANCH = re.compile(r"[\x00-\x20\x7f~^:?\[\\]|\.\.|@\{|//")
_JSON_SPACE = " \t\r\n"
_RESAVE = "open it in Notepad, File > Save As, choose Encoding: UTF-8 and save"
_FULL_WIDTH_PUNCTUATION = "“”‘’，：｛｝［］"   # what a Chinese input method types instead of JSON's ASCII


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
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: create it (see README, owners.json) or set OWNERS_FILE") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror}") from None
    text, warnings = _decode(data, path)
    secrets: dict[str, tuple[str, int]] = {}
    entries = tuple(_entries(text, path, secrets))
    return OwnersData(entries, {url: secret for url, (secret, _) in secrets.items()}, tuple(warnings))


def fold(text: str) -> str:
    """The form keys and projects are compared in: NFKC (full-width letters count as ASCII), casefolded."""
    return unicodedata.normalize("NFKC", text).casefold()


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


def _entries(text: str, path: Path, secrets: dict[str, tuple[str, int]]) -> Iterator[Entry]:
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
    for key, value, line, value_at in _members(text, 0):
        where = f"{path}, line {line}: key {_quote(key)}"
        if key in first_line:
            raise ConfigError(f"{where} appears twice (first on line {first_line[key]}); "
                              "JSON would keep only the last one, so merge their owners into one list")
        first_line[key] = line
        if not fold(key).strip().strip("/"):
            raise ConfigError(f"{where}: the key is empty; write a project path, group or name")
        if isinstance(value, dict):
            yield _object_entry(key, line, text, value_at, where, path, secrets)
        else:
            yield Entry(key, line, owners=_owners(value, where))


def _object_entry(key: str, line: int, text: str, start: int, where: str, path: Path,
                  secrets: dict[str, tuple[str, int]]) -> Entry:
    values: dict[str, Any] = {}
    for name, value, field_line, _ in _members(text, start):
        at = f"{path}, line {field_line}: key {_quote(key)}, field {_quote(name)}"
        if name not in FIELDS:
            guess = next((f for f in FIELDS if f.rstrip("s") == name.lower().rstrip("s")), None)
            raise ConfigError(f"{at}: unknown field" + (f'; did you mean "{guess}"?' if guess else
                              "; an entry object takes " + ", ".join(f'"{f}"' for f in FIELDS)))
        if name in values:
            raise ConfigError(f"{at} appears twice; JSON would keep only the last one")
        if not isinstance(value, list):
            raise ConfigError(f"{at}: must be a list, e.g. {_EXAMPLES[name]}, not {_kind(value)}")
        if not value and name in ("branches", "events"):
            raise ConfigError(f"{at}: the list is empty, so nothing would match; remove the field to mean "
                              f"every {'branch' if name == 'branches' else 'event'}")
        values[name] = _FIELD_CHECKS[name](value, at, field_line, secrets)
    if not values.get("owners") and not values.get("chats"):
        raise ConfigError(f"{where}: the object names nobody to notify; give \"owners\" (emails) "
                          f"or \"chats\" (group bot webhook URLs), or both")
    return Entry(key, line, owners=values.get("owners", ()), chats=values.get("chats", ()),
                 branches=values.get("branches"), events=values.get("events"))


def _owners(value: Any, where: str, *_: Any) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise ConfigError(f"{where}: the value must be an email, a list of emails, or an object with "
                          f"{', '.join(FIELDS)}; not {_kind(value)}")
    if not values:
        raise ConfigError(f"{where}: the list of owners is empty; add an email or remove the key")
    for item in values:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: every owner must be an email in quotes, not {_kind(item)}")
        if not (_EMAIL.fullmatch(item) or _OPEN_ID.fullmatch(item)):
            raise ConfigError(f"{where}: {_quote(item)} is not an email address "
                              "(name@domain.tld, no spaces) or a Feishu open_id (ou_...)")
    return tuple(values)


def _object_owners(value: list, where: str, *_: Any) -> tuple[str, ...]:
    return _owners(value, where) if value else ()


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
            if not isinstance(secret, str) or not secret.strip():
                raise ConfigError(f'{at}: "secret" must be the bot\'s signing secret in quotes; '
                                  "leave the object out and write the URL alone when signing is off")
        else:
            url, secret = item, None
        if not isinstance(url, str):
            raise ConfigError(f"{at}: a chat is a bot webhook URL in quotes, or "
                              f'{{"url": ..., "secret": ...}}; not {_kind(url)}')
        url = url.strip()
        problem = bot_url_problem(url)
        if problem:
            raise ConfigError(f"{at}: {mask_chat_url(url) if '/hook/' in url else _quote(url)} {problem}")
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
            raise ConfigError(f"{where}: every branch must be a name or pattern in quotes, not {_kind(item)}")
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
            raise ConfigError(f"{where}: {_quote(item) if isinstance(item, str) else _kind(item)} is not an "
                              f"event; choose from {', '.join(EVENT_KINDS)}")
    return frozenset(value)


_FIELD_CHECKS = {"owners": _object_owners, "chats": _chats, "branches": _branches, "events": _events}
_EXAMPLES = {"owners": '["lead@example.com"]', "chats": '["https://open.feishu.cn/open-apis/bot/v2/hook/…"]',
             "branches": '["main", "release/*"]', "events": '["push", "merge_request"]'}


def _members(text: str, start: int) -> Iterator[tuple[str, Any, int, int]]:
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


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    return names.get(type(value), f"the number {value}" if isinstance(value, (int, float)) else "that")
