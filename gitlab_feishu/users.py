"""users.json: GitLab usernames mapped to Feishu recipients, for people beyond the owners.

GitLab hides most emails, so the reviewers and assignees of a merge request,
and whoever triggered a failed pipeline, are reachable only through this
optional map: `{"zhangsan": "zhangsan@example.com", "lisi": "ou_..."}`. A
missing file turns the feature off; an invalid one stops the service at
start-up; a broken edit keeps the last good version, as with owners.json.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .chats import quoted_value
from .config_file import describe, object_members, read_config_text
from .events import Event, MergeRequestEvent, Person, PipelineEvent
from .owners import Match
from .rows import person_key
from .setting_values import is_recipient, recipient_hint
from .settings import ConfigError
from .watched import WatchedFile

log = logging.getLogger("gitlab_feishu.users")

_USERNAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")   # the characters GitLab allows in a username
EXAMPLE = '{"zhangsan": "zhangsan@example.com"}'
TRIGGERED = "triggered"      # the role, and rule prefix, of whoever triggered a failed pipeline
ROLES = ("reviewer", "assignee", TRIGGERED)    # the rule prefixes of the people users.json reaches


@dataclass(frozen=True)
class Users:
    """One validated users.json; immutable, so it is safe to share between threads."""
    path: Path
    recipients: Mapping[str, str] = field(default_factory=dict, repr=False)   # casefolded username -> recipient
    found: bool = True                                                        # False: no file, feature off
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.recipients)

    def recipient(self, username: str) -> str | None:
        """The Feishu email or open_id of a GitLab user (usernames ignore case), or None."""
        return self.recipients.get(username.casefold()) if username else None


def load_users(path: Path) -> Users:
    """Read and validate users.json; a missing file is an empty map, a bad one a ConfigError naming file and line."""
    path = Path(path)
    if not path.exists():
        return Users(path, found=False)
    text, warnings = read_config_text(path, "create it (see README, users.json) or set USERS_FILE", log)
    recipients: dict[str, str] = {}
    lines: dict[str, int] = {}
    for username, value, line, where, _ in object_members(text, path, EXAMPLE):
        if not _USERNAME.fullmatch(username) or username.startswith("-"):
            raise ConfigError(f"{where}: not a GitLab username (letters, digits, _ - . and no @), "
                              f"as in {EXAMPLE}")
        folded = username.casefold()
        if folded in lines:
            raise ConfigError(f"{where}: names the same GitLab user as line {lines[folded]} "
                              "(usernames ignore case); keep one")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: the value must be one email or Feishu open_id in quotes "
                              f"(one person per username), not {describe(value)}")
        if not is_recipient(value):
            raise ConfigError(f"{where}: {quoted_value(value)} is not an email address "
                              f"(name@domain.tld, no spaces) or a Feishu open_id (ou_...){recipient_hint(value)}")
        lines[folded] = line
        recipients[folded] = value
    return Users(path, recipients, True, tuple(warnings))


class UsersFile(WatchedFile[Users]):
    """Keeps the last good Users and reloads users.json when it changes (a deleted file turns the feature off)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic,
                 check_interval: float = 0.0, last_good: Path | None = None) -> None:
        super().__init__(path, load_users, log=log, clock=clock, check_interval=check_interval, last_good=last_good)

    def state(self) -> dict:
        return {**super().state(), "found": self.current().found}


def with_people(matches: list[Match], event: Event, users: Users) -> list[Match]:
    """`matches` (the owners), then the people the event concerns who are in users.json, each recipient once.

    The rule says why each person gets the card: "reviewer: zhangsan", "assignee: lisi", "triggered: wangwu".
    """
    recipients = list(matches)
    seen = {person_key(match.recipient) for match in matches}
    for role, person in _concerned(event):
        recipient = users.recipient(person.username)
        if recipient and person_key(recipient) not in seen:
            seen.add(person_key(recipient))
            recipients.append(Match(recipient, f"{role}: {person.username}"))
    return recipients


def _concerned(event: Event) -> list[tuple[str, Person]]:
    """Who, besides the owners, this event is for, and in what role."""
    if isinstance(event, MergeRequestEvent):
        return [("reviewer", p) for p in event.reviewers] + [("assignee", p) for p in event.assignees]
    if isinstance(event, PipelineEvent) and event.status == "failed":
        return [(TRIGGERED, event.actor)]
    return []
