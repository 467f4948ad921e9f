"""Settings: read from the environment (and `.env`) in exactly one place.

Everything else receives a frozen `Settings`; tests build one directly, so no
test ever reads a developer's environment or `.env`.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from .envfile import EnvFileError, read_env_file
from .gitlab import signing_key

PROJECT_DIR = Path(__file__).resolve().parent.parent

EVENT_KINDS = ("push", "tag_push", "merge_request", "pipeline")
CARD_LANGS = ("zh", "en")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")   # practical, not RFC 5322
_OPEN_ID = re.compile(r"ou_[A-Za-z0-9]+")


def is_recipient(value: str) -> bool:
    """An email address or a Feishu open_id: what owners.json, users.json and ADMIN_EMAILS may name."""
    return bool(_EMAIL.fullmatch(value) or _OPEN_ID.fullmatch(value))


class ConfigError(Exception):
    """A setting or configuration file a person has to fix; the message says how."""


@dataclass(frozen=True)
class Settings:
    feishu_app_id: str = ""
    feishu_app_secret: str = field(default="", repr=False)
    feishu_base_url: str = "https://open.feishu.cn"
    gitlab_webhook_secret: str = field(default="", repr=False)
    gitlab_signing_token: str = field(default="", repr=False)
    owners_file: Path = PROJECT_DIR / "config" / "owners.json"
    users_file: Path = PROJECT_DIR / "config" / "users.json"
    data_dir: Path = PROJECT_DIR / "data"
    log_dir: Path = PROJECT_DIR / "logs"
    log_level: str = "INFO"
    host: str = "0.0.0.0"
    port: int = 5000
    delivery_deadline_seconds: float = 5.0
    retry_base_seconds: float = 5.0
    feishu_pacing: bool = True
    notify_events: frozenset[str] = frozenset(EVENT_KINDS)
    ignore_pushers: frozenset[str] = frozenset()
    notify_self: bool = True
    card_lang: str = "zh"
    allowed_sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    admin_emails: tuple[str, ...] = ()
    alert_queue_threshold: int = 100
    gitlab_url: str = ""
    gitlab_api_token: str = field(default="", repr=False)
    public_url: str = ""

    def __post_init__(self) -> None:
        # Paths given as text (a test building Settings by hand) are read as .env's are.
        for name in ("owners_file", "users_file", "data_dir", "log_dir"):
            value = getattr(self, name)
            if not isinstance(value, Path):
                object.__setattr__(self, name, _path(os.fspath(value)))

    @property
    def dry_run(self) -> bool:
        """Without a Feishu app nothing is sent: cards go to the log instead."""
        return not self.feishu_app_id

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 env_file: Path | None = PROJECT_DIR / ".env") -> "Settings":
        """Build settings from `environ` (default os.environ) over the `.env` file; the environment wins."""
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            try:
                values.update(read_env_file(Path(env_file)))
            except EnvFileError as exc:
                raise ConfigError(str(exc)) from None
        values.update(os.environ if environ is None else environ)
        return cls(**_parse(values))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> "Settings":
        """Settings from `values` alone, without the environment or `.env` (tests): keys are the settings'
        names (FEISHU_APP_ID) or the fields' (feishu_app_id); a list is written as in .env, comma-separated."""
        environ = {}
        for key, value in values.items():
            name = str(key).upper()
            if name not in ENV_NAMES:
                raise ConfigError(f"{key!r} is not a setting; the settings are {', '.join(ENV_NAMES)}")
            many = isinstance(value, (list, tuple, set, frozenset))
            environ[name] = ",".join(map(str, value)) if many else "" if value is None else str(value)
        return cls.from_env(environ, env_file=None)


# In gunicorn's master, the settings it serves with and the address it listens on: gunicorn.conf.py sets them
# at the start and at each reload whose .env is good. Its workers inherit them by fork and run on them, so a
# worker that replaces one that died runs on what the master checked: with .env broken since, it would fail
# to boot, and gunicorn would then stop altogether. A reload with a broken .env keeps both.
_serving: tuple[Settings, str] | None = None


def serve_with(settings: Settings, bind: str) -> None:
    global _serving
    _serving = (settings, bind)


def serving() -> Settings | None:
    """The settings gunicorn's master serves with; None outside gunicorn and before its start."""
    return _serving[0] if _serving else None


def serving_bind() -> str | None:
    """The address gunicorn's master listens on (gunicorn.conf.py's `bind`); None before its start."""
    return _serving[1] if _serving else None


def _parse(env: Mapping[str, str]) -> dict:
    def get(name: str) -> str | None:
        value = env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    parsed: dict = {}
    for name, attr, convert in _FIELDS:
        raw = get(name)
        if raw is not None:
            try:
                parsed[attr] = convert(raw if convert is _path else os_text(raw))
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from None
    return parsed


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


def _path(raw: str) -> Path:
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


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false")


def _seconds(low: float, high: float):
    expected = f"a number of seconds from {low:g} to {high:g}"

    def convert(raw: str) -> float:
        value = _number(raw, float, expected)
        if not low <= value <= high:          # nan too
            raise ValueError(f"use {expected}")
        return value
    return convert


def _port(raw: str) -> int:
    value = _number(raw, int, "a port number from 1 to 65535")
    if not 0 < value < 65536:
        raise ValueError("use a port number from 1 to 65535")
    return value


def _positive_int(raw: str) -> int:
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


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    parts = urlsplit(raw)
    try:
        parts.port                      # "https://host:443x" raises here
    except ValueError:
        raise ValueError("the port after the host is not a number from 1 to 65535") from None
    if not parts.hostname or any(ch.isspace() for ch in raw):
        raise ValueError("write it as https://host[:port], with a host and no spaces")
    return raw.rstrip("/")


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"use one of {', '.join(LOG_LEVELS)}")
    return level


def _words(raw: str) -> list[str]:
    # A Chinese input method types the full-width ， ； or 、 between the words.
    for separator in (";", "，", "；", "、"):
        raw = raw.replace(separator, ",")
    return [word.strip() for word in raw.split(",") if word.strip()]


def _event_kinds(raw: str) -> frozenset[str]:
    kinds = frozenset(word.lower() for word in _words(raw))
    if not kinds:         # only separators: every kind off would leave a service that notifies nobody
        raise ValueError(f"name at least one of {', '.join(EVENT_KINDS)}, or leave it empty for all of them")
    unknown = sorted(kinds - set(EVENT_KINDS))
    if unknown:
        raise ValueError(f"unknown event kind {', '.join(unknown)}; choose from {', '.join(EVENT_KINDS)}")
    return kinds


def _card_lang(raw: str) -> str:
    if raw.lower() not in CARD_LANGS:
        raise ValueError(f"choose one of {', '.join(CARD_LANGS)}")
    return raw.lower()


def _signing_token(raw: str) -> str:
    # ConfigError, not ValueError: _parse would quote the value, and this one is a secret.
    try:
        signing_key(raw)
    except ValueError as exc:
        raise ConfigError(f"GITLAB_SIGNING_TOKEN is not valid: {exc}") from None
    return raw


def _networks(raw: str) -> tuple:
    return tuple(_unmapped(ipaddress.ip_network(word, strict=False)) for word in _words(raw))


def _unmapped(network):
    """An IPv4-mapped network (::ffff:10.0.0.0/104) as the IPv4 one: callers' addresses are compared as IPv4."""
    mapped = network.network_address.ipv4_mapped if network.version == 6 else None
    if mapped is None or network.prefixlen < 96:
        return network
    return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")


def _admins(raw: str) -> tuple[str, ...]:
    # An open_id needs no lookup, so it still gets the alert when the app lacks the contact permission.
    admins = tuple(_words(raw))
    for admin in admins:
        if not is_recipient(admin):
            raise ValueError(f"{admin!r} is neither an email address nor a Feishu open_id (ou_...); separate "
                             "several with commas")
    return admins


_FIELDS = (
    ("FEISHU_APP_ID", "feishu_app_id", str),
    ("FEISHU_APP_SECRET", "feishu_app_secret", str),
    ("FEISHU_BASE_URL", "feishu_base_url", _url),
    ("GITLAB_WEBHOOK_SECRET", "gitlab_webhook_secret", str),
    ("GITLAB_SIGNING_TOKEN", "gitlab_signing_token", _signing_token),
    ("OWNERS_FILE", "owners_file", _path),
    ("USERS_FILE", "users_file", _path),
    ("DATA_DIR", "data_dir", _path),
    ("LOG_DIR", "log_dir", _path),
    ("LOG_LEVEL", "log_level", _log_level),
    ("HOST", "host", lambda raw: raw.strip("[]")),      # an IPv6 address as URLs write it: [::1]
    ("PORT", "port", _port),
    ("DELIVERY_DEADLINE_SECONDS", "delivery_deadline_seconds", _seconds(0.5, 8)),
    ("RETRY_BASE_SECONDS", "retry_base_seconds", _seconds(0.01, 600)),
    ("FEISHU_PACING", "feishu_pacing", _bool),
    ("NOTIFY_EVENTS", "notify_events", _event_kinds),
    ("IGNORE_PUSHERS", "ignore_pushers", lambda raw: frozenset(w.lower() for w in _words(raw))),
    ("NOTIFY_SELF", "notify_self", _bool),
    ("CARD_LANG", "card_lang", _card_lang),
    ("ALLOWED_SOURCES", "allowed_sources", _networks),
    ("TRUSTED_PROXIES", "trusted_proxies", _networks),
    ("ADMIN_EMAILS", "admin_emails", _admins),
    ("ALERT_QUEUE_THRESHOLD", "alert_queue_threshold", _positive_int),
    ("GITLAB_URL", "gitlab_url", _url),
    ("GITLAB_API_TOKEN", "gitlab_api_token", str),
    ("PUBLIC_URL", "public_url", _url),
)

ENV_NAMES = tuple(name for name, _, _ in _FIELDS)
