"""GitLab's side: verifying a delivery and parsing its payload into an event.

Pure functions only. GitLab omits or nulls many fields depending on its
version and the event (`user_email` is "", null or "[REDACTED]"; older
payloads lack `title`, `project.id`, `user_username`), so every field is read
defensively and an unexpected shape becomes `Ignored`, never an exception.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Mapping

from .events import Commit, Event, Person, Project, PushEvent

MAX_BODY_BYTES = 25 * 1024 * 1024   # GitLab's own cap on a webhook body

# object_kind -> the X-Gitlab-Event header a project hook sends with it
EVENT_HEADERS = {
    "push": "Push Hook",
    "tag_push": "Tag Push Hook",
    "merge_request": "Merge Request Hook",
    "pipeline": "Pipeline Hook",
}
SYSTEM_HOOK = "System Hook"          # a system hook sends push payloads under this header
SIGNATURE_TOLERANCE = 300.0          # Standard Webhooks: a webhook-timestamp off by more is refused
SIGNING_KEY_BYTES = (24, 64)         # Standard Webhooks' secret sizes; GitLab 19 makes 32-byte keys


@dataclass(frozen=True)
class Ignored:
    """A delivery that is valid but notifies nobody; `reason` is shown to GitLab and logged."""
    reason: str


def token_matches(received: str | None, expected: str) -> bool:
    """Constant-time compare of X-Gitlab-Token, on bytes so any header value is safe."""
    if received is None:
        return False
    return hmac.compare_digest(received.encode("utf-8", "replace"), expected.encode("utf-8"))


def signing_key(token: str) -> bytes:
    """The HMAC key in a `whsec_<base64>` signing token; ValueError says what is wrong, never the token."""
    if not token.startswith("whsec_"):
        raise ValueError("it must start with whsec_ (copy the signing token from GitLab's webhook page)")
    encoded = token.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not base64: copy the whole token again") from None
    low, high = SIGNING_KEY_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"the key is {len(key)} bytes, expected {low} to {high} (GitLab makes 32): "
                         "copy the whole token again")
    return key


def signature_valid(signing_token: str, headers: Mapping[str, str], body: bytes, now: float) -> bool:
    """Standard Webhooks verification of a GitLab 19 signed delivery.

    The signed content is `{webhook-id}.{webhook-timestamp}.` followed by the
    raw body bytes; `webhook-signature` holds space-separated `v1,<base64>`
    entries, any of which may match (key rotation sends two). The timestamp
    must be within SIGNATURE_TOLERANCE of `now` either way, so a captured
    delivery cannot be replayed later.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id, timestamp, signatures = (lowered.get(name, "").strip()
                                         for name in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (message_id and timestamp.isascii() and timestamp.isdigit() and signatures):
        return False
    if abs(now - int(timestamp)) > SIGNATURE_TOLERANCE:
        return False
    signed = f"{message_id}.{timestamp}.".encode("utf-8", "replace") + body
    expected = hmac.new(signing_key(signing_token), signed, hashlib.sha256).digest()
    for entry in signatures.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(candidate, expected):
            return True
    return False


def parse_event(payload: Any, event_header: str | None) -> Event | Ignored:
    """Turn a decoded webhook body into an event, or say why it is ignored."""
    if not isinstance(payload, dict):
        return Ignored("payload is not a JSON object")
    kind = payload.get("object_kind")
    if not isinstance(kind, str) or not kind:
        return Ignored("payload has no object_kind")
    expected_header = EVENT_HEADERS.get(kind)
    if expected_header is None:
        return Ignored(f"{kind} events are not handled")
    if event_header and event_header not in (expected_header, SYSTEM_HOOK):
        return Ignored(f"X-Gitlab-Event {event_header!r} does not match object_kind {kind!r}")
    parser = _PARSERS.get(kind)
    if parser is None:
        return Ignored(f"{kind} events are not handled")
    return parser(payload)


def _parse_push(payload: dict) -> PushEvent | Ignored:
    project = parse_project(payload.get("project"), payload.get("project_id"))
    if project is None:
        return Ignored("push payload has no project.path_with_namespace")
    ref = _text(payload.get("ref"))
    if not ref:
        return Ignored("push payload has no ref")
    commits = tuple(c for c in (_parse_commit(raw) for raw in _list(payload.get("commits"))) if c)
    total = payload.get("total_commits_count")
    total = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else 0
    protected = payload.get("ref_protected")
    return PushEvent(
        project=project,
        actor=Person(name=_text(payload.get("user_name")), username=_text(payload.get("user_username")),
                     email=clean_email(payload.get("user_email"))),
        ref=ref,
        before=_text(payload.get("before")),
        after=_text(payload.get("after")),
        commits=commits,
        total_commits=max(total, len(commits)),
        ref_protected=protected if isinstance(protected, bool) else None,
    )


_PARSERS = {"push": _parse_push}


def parse_project(raw: Any, fallback_id: Any = None) -> Project | None:
    """The `project` object common to every event kind; None when it has no path."""
    if not isinstance(raw, dict):
        return None
    path = _text(raw.get("path_with_namespace")).strip("/")
    if not path:
        return None
    project_id = raw.get("id", fallback_id)
    return Project(
        path=path,
        name=_text(raw.get("name")) or path.rsplit("/", 1)[-1],
        web_url=_text(raw.get("web_url") or raw.get("homepage")).rstrip("/"),
        id=project_id if isinstance(project_id, int) and not isinstance(project_id, bool) else None,
        default_branch=_text(raw.get("default_branch")),
    )


def _parse_commit(raw: Any) -> Commit | None:
    if not isinstance(raw, dict) or not _text(raw.get("id")):
        return None
    author = _dict(raw.get("author"))
    return Commit(
        id=_text(raw.get("id")),
        message=_text(raw.get("message")) or _text(raw.get("title")),
        url=_text(raw.get("url")),
        author=Person(name=_text(author.get("name")), email=clean_email(author.get("email"))),
        timestamp=_text(raw.get("timestamp")),
    )


def clean_email(value: Any) -> str:
    """An email GitLab really disclosed, or "" for null, "" and "[REDACTED]"."""
    text = _text(value).strip()
    return text if "@" in text and text != "[REDACTED]" else ""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}
