"""How each setting's text becomes its value: one function per kind, raising ValueError with what to write
(settings.py adds the setting's name). Also the values other modules share: event kinds, card languages,
what a recipient looks like, text from the environment as it was typed."""
from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import urlsplit

from .gitlab import signing_key

PROJECT_DIR = Path(__file__).resolve().parent.parent      # where relative paths in settings start

EVENT_KINDS = ("push", "tag_push", "merge_request", "pipeline")
CARD_LANGS = ("zh", "en")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")   # practical, not RFC 5322
_OPEN_ID = re.compile(r"ou_[A-Za-z0-9]+")


def is_recipient(value: str) -> bool:
    """An email address or a Feishu open_id: what owners.json, users.json and ADMIN_EMAILS may name."""
    return bool(_EMAIL.fullmatch(value) or _OPEN_ID.fullmatch(value)) and not input_method_typed(value)


def input_method_typed(value: str) -> bool:
    """Full-width letters (ｚｈａｎｇ), or an invisible character (a zero-width space): what a Chinese input method
    leaves in text; no mailbox Feishu knows is spelled that way."""
    return unicodedata.normalize("NFKC", value) != unicodedata.normalize("NFC", value) \
        or any(unicodedata.category(ch) == "Cf" for ch in value)


def recipient_hint(value: str) -> str:
    """What to add to 'is not an email address': why, when the cause is the input method."""
    return "; it holds full-width or invisible characters: retype it with the input method in half-width " \
        "(English) mode" if input_method_typed(value) else ""


def os_text(value: str) -> str:
    """A value from the environment or the command line as it was typed.

    Under a locale that cannot decode it (LC_ALL=C with PYTHONUTF8=0 on Linux) Python hands non-ASCII
    bytes over as surrogate escapes, which no encoder accepts; they were UTF-8 text. A path keeps its
    escapes, because the file system wants the same bytes back, and goes through here only to be shown.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def path_value(raw: str) -> Path:
    if any(ch < " " for ch in raw):
        # python-dotenv reads \n, \t, \b... inside double quotes as escapes: "C:\服务\new" loses its \n.
        raise ValueError("it contains a control character; in .env write a Windows path without quotes")
    try:
        os.fsencode(raw)
    except UnicodeEncodeError:
        # Chinese read from .env under a file system encoding that cannot hold it (LC_ALL=C, PYTHONUTF8=0): as
        # the environment would hand it over, the UTF-8 bytes as surrogate escapes.
        raw = os.fsdecode(raw.encode("utf-8"))
    path = Path(raw).expanduser()
    return path if path.is_absolute() else PROJECT_DIR / path


def bool_value(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false")


def seconds_value(low: float, high: float):
    expected = f"a number of seconds from {low:g} to {high:g}"

    def convert(raw: str) -> float:
        value = _number(raw, float, expected)
        if not low <= value <= high:          # nan too
            raise ValueError(f"use {expected}")
        return value
    return convert


def port_value(raw: str) -> int:
    value = _number(raw, int, "a port number from 1 to 65535")
    if not 0 < value < 65536:
        raise ValueError("use a port number from 1 to 65535")
    return value


def count_value(raw: str) -> int:
    value = _number(raw, int, "a whole number, 1 or more")
    if value < 1:
        raise ValueError("use a whole number, 1 or more")
    return value


def _number(raw: str, kind: type, expected: str):
    """`raw` as an int or float, or a ValueError that says what to write (not "invalid literal for int()")."""
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"use {expected}") from None


def url_value(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    parts = urlsplit(raw)
    try:
        port = parts.port               # "https://host:443x" raises here; "https://host:0" does not
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the port after the host is not a number from 1 to 65535")
    if not parts.hostname or any(ch.isspace() for ch in raw):
        raise ValueError("write it as https://host[:port], with a host and no spaces")
    return raw.rstrip("/")


def log_level_value(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"use one of {', '.join(LOG_LEVELS)}")
    return level


def word_list(raw: str) -> list[str]:
    # A Chinese input method types the full-width ， ； or 、 between the words.
    for separator in (";", "，", "；", "、"):
        raw = raw.replace(separator, ",")
    return [word.strip() for word in raw.split(",") if word.strip()]


def pushers_value(raw: str) -> frozenset[str]:
    """IGNORE_PUSHERS: usernames and emails, neither of which holds a space; GitLab shows a username as
    `@name`, which is how people copy it."""
    return frozenset(word.lower().removeprefix("@") for words in word_list(raw) for word in words.split())


def event_kinds_value(raw: str) -> frozenset[str]:
    kinds = frozenset(word.lower() for word in word_list(raw))
    if not kinds:         # only separators: every kind off would leave a service that notifies nobody
        raise ValueError(f"name at least one of {', '.join(EVENT_KINDS)}, or leave it empty for all of them")
    unknown = sorted(kinds - set(EVENT_KINDS))
    if unknown:
        raise ValueError(f"unknown event kind {', '.join(unknown)}; choose from {', '.join(EVENT_KINDS)}")
    return kinds


def card_lang_value(raw: str) -> str:
    if raw.lower() not in CARD_LANGS:
        raise ValueError(f"choose one of {', '.join(CARD_LANGS)}")
    return raw.lower()


def signing_token_value(raw: str) -> str:
    signing_key(raw)          # its ValueError says what is wrong (settings.py never quotes a secret)
    return raw


def networks_value(raw: str) -> tuple:
    if raw.strip() and not word_list(raw):
        # Only separators: for ALLOWED_SOURCES that would silently mean "anyone", the opposite of what was meant.
        raise ValueError("it holds only separators; write addresses or networks (10.0.0.0/8), or leave it empty")
    try:
        return tuple(_unmapped(ipaddress.ip_network(word, strict=False)) for word in word_list(raw))
    except ValueError as exc:
        raise ValueError(f"{exc}; write addresses or networks (10.0.0.0/8), several separated by commas") from None


def gitlab_url_value(raw: str) -> str:
    url = url_value(raw)
    if url.lower().endswith("/api/v4"):
        raise ValueError("write GitLab's own address, without /api/v4 (https://gitlab.example.com)")
    return url


def _unmapped(network):
    """An IPv4-mapped network (::ffff:10.0.0.0/104) as the IPv4 one: callers' addresses are compared as IPv4."""
    mapped = network.network_address.ipv4_mapped if network.version == 6 else None
    if mapped is None or network.prefixlen < 96:
        return network
    return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")


def admins_value(raw: str) -> tuple[str, ...]:
    # An open_id needs no lookup, so it still gets the alert when the app lacks the contact permission.
    admins = tuple(word_list(raw))
    for admin in admins:
        if not is_recipient(admin):
            raise ValueError(f"{admin!r} is neither an email address nor a Feishu open_id (ou_...); separate "
                             f"several with commas{recipient_hint(admin)}")
    return admins
