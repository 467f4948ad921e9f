"""Reading GitLab payload fields defensively.

GitLab omits or nulls many fields depending on its version and the event
(`user_email` is "", null or "[REDACTED]"; older payloads lack `title`,
`project.id`, `user_username`), so each reader returns a plain default for a
missing or mistyped value instead of raising.
"""
from __future__ import annotations

from typing import Any

from .events import Commit, Person, Project


def text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def clean_email(value: Any) -> str:
    """An email GitLab really disclosed, or "" for null, "" and "[REDACTED]"."""
    email = text(value).strip()
    return email if "@" in email and email != "[REDACTED]" else ""


def parse_project(raw: Any, fallback_id: Any = None) -> Project | None:
    """The `project` object common to every event kind; None when it has no path."""
    if not isinstance(raw, dict):
        return None
    path = text(raw.get("path_with_namespace")).strip("/")
    if not path:
        return None
    return Project(
        path=path,
        name=text(raw.get("name")) or path.rsplit("/", 1)[-1],
        web_url=text(raw.get("web_url") or raw.get("homepage")).rstrip("/"),
        id=integer(raw.get("id", fallback_id)),
        default_branch=text(raw.get("default_branch")),
    )


def parse_commit(raw: Any) -> Commit | None:
    if not isinstance(raw, dict) or not text(raw.get("id")):
        return None
    author = as_dict(raw.get("author"))
    return Commit(
        id=text(raw.get("id")),
        message=text(raw.get("message")) or text(raw.get("title")),
        url=text(raw.get("url")),
        author=Person(name=text(author.get("name")), email=clean_email(author.get("email"))),
        timestamp=text(raw.get("timestamp")),
    )


def parse_user(raw: Any) -> Person:
    """A `user` object (merge request, pipeline, assignees, reviewers); an empty Person when absent."""
    user = as_dict(raw)
    return Person(name=text(user.get("name")), username=text(user.get("username")),
                  email=clean_email(user.get("email")))


def parse_pusher(payload: dict) -> Person:
    """Who pushed, from the flat `user_*` fields of push and tag push payloads."""
    return Person(name=text(payload.get("user_name")), username=text(payload.get("user_username")),
                  email=clean_email(payload.get("user_email")))


def optional_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None
