"""Settings: read from the environment (and `.env`) in exactly one place.

Everything else receives a frozen `Settings`; tests build one directly, so no
test ever reads a developer's environment or `.env`.
"""
from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .envfile import EnvFileError, read_env_file
from .setting_values import (EVENT_KINDS, PROJECT_DIR, admins_value, bool_value, card_lang_value, count_value,
                             event_kinds_value, gitlab_url_value, log_level_value, networks_value, os_text,
                             path_value, port_value, pushers_value, seconds_value, signing_token_value, url_value)

log = logging.getLogger(__name__)


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
                object.__setattr__(self, name, path_value(os.fspath(value)))

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
            _warn_of_near_misses(Path(env_file), values)
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


def _warn_of_near_misses(env_file: Path, values: Mapping[str, str]) -> None:
    """A name in .env that is almost a setting (FEISHU_APPID, a lower-case one) sets nothing: say which it
    looks like. (Other names, HTTPS_PROXY say, are the environment's business.)"""
    for name in values:
        if name not in ENV_NAMES:
            typed = unicodedata.normalize("NFKC", name)      # ＦＥＩＳＨＵ_APP_ID: full-width letters
            near = difflib.get_close_matches(typed.upper(), ENV_NAMES, n=1, cutoff=0.8)
            if near:
                how = " (typed with full-width letters: retype it in half-width mode)" if typed != name else ""
                log.warning("%s: %s is not a setting, so it sets nothing; did you mean %s?%s", env_file, name,
                            near[0], how)


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
                parsed[attr] = convert(raw if convert is path_value else os_text(raw))
            except ValueError as exc:
                shown = name if name in SECRETS else f"{name}={raw!r}"      # a secret is never quoted
                raise ConfigError(f"{shown} is not valid: {exc}") from None
    return parsed


_FIELDS = (
    ("FEISHU_APP_ID", "feishu_app_id", str),
    ("FEISHU_APP_SECRET", "feishu_app_secret", str),
    ("FEISHU_BASE_URL", "feishu_base_url", url_value),
    ("GITLAB_WEBHOOK_SECRET", "gitlab_webhook_secret", str),
    ("GITLAB_SIGNING_TOKEN", "gitlab_signing_token", signing_token_value),
    ("OWNERS_FILE", "owners_file", path_value),
    ("USERS_FILE", "users_file", path_value),
    ("DATA_DIR", "data_dir", path_value),
    ("LOG_DIR", "log_dir", path_value),
    ("LOG_LEVEL", "log_level", log_level_value),
    ("HOST", "host", lambda raw: raw.strip("[]")),      # an IPv6 address as URLs write it: [::1]
    ("PORT", "port", port_value),
    ("DELIVERY_DEADLINE_SECONDS", "delivery_deadline_seconds", seconds_value(0.5, 8)),
    ("RETRY_BASE_SECONDS", "retry_base_seconds", seconds_value(0.01, 600)),
    ("FEISHU_PACING", "feishu_pacing", bool_value),
    ("NOTIFY_EVENTS", "notify_events", event_kinds_value),
    ("IGNORE_PUSHERS", "ignore_pushers", pushers_value),
    ("NOTIFY_SELF", "notify_self", bool_value),
    ("CARD_LANG", "card_lang", card_lang_value),
    ("ALLOWED_SOURCES", "allowed_sources", networks_value),
    ("TRUSTED_PROXIES", "trusted_proxies", networks_value),
    ("ADMIN_EMAILS", "admin_emails", admins_value),
    ("ALERT_QUEUE_THRESHOLD", "alert_queue_threshold", count_value),
    ("GITLAB_URL", "gitlab_url", gitlab_url_value),
    ("GITLAB_API_TOKEN", "gitlab_api_token", str),
    ("PUBLIC_URL", "public_url", url_value),
)

ENV_NAMES = tuple(name for name, _, _ in _FIELDS)
# The settings whose fields repr leaves out: a refusal names them without their value.
SECRETS = frozenset(name for name, attr, _ in _FIELDS if not Settings.__dataclass_fields__[attr].repr)
