"""GitLab's side: verifying a delivery and dispatching its payload to a parser.

Pure functions only. An unexpected shape becomes `Ignored`, never an
exception; the parsers themselves live in `parsers`.
"""
from __future__ import annotations

import hmac
from typing import Any

from .events import Event, Ignored   # Ignored: what parse_event returns for a delivery it will not notify
from .parsers import parse_merge_request, parse_pipeline, parse_push, parse_tag_push

MAX_BODY_BYTES = 25 * 1024 * 1024   # GitLab's own cap on a webhook body

# object_kind -> the X-Gitlab-Event header a project hook sends with it
EVENT_HEADERS = {
    "push": "Push Hook",
    "tag_push": "Tag Push Hook",
    "merge_request": "Merge Request Hook",
    "pipeline": "Pipeline Hook",
}
SYSTEM_HOOK = "System Hook"          # a system hook sends push payloads under this header
_PARSERS = {"push": parse_push, "tag_push": parse_tag_push, "merge_request": parse_merge_request,
            "pipeline": parse_pipeline}
_NOT_HANDLED = {"build": "job events are not handled: a failed pipeline notifies once, never once per job"}


def token_matches(received: str | None, expected: str) -> bool:
    """Constant-time compare of X-Gitlab-Token, on bytes so any header value is safe."""
    if received is None:
        return False
    return hmac.compare_digest(received.encode("utf-8", "replace"), expected.encode("utf-8"))


def parse_event(payload: Any, event_header: str | None) -> Event | Ignored:
    """Turn a decoded webhook body into an event, or say why it is ignored."""
    if not isinstance(payload, dict):
        return Ignored("payload is not a JSON object")
    kind = payload.get("object_kind")
    if not isinstance(kind, str) or not kind:
        return Ignored("payload has no object_kind")
    expected_header = EVENT_HEADERS.get(kind)
    if expected_header is None:
        return Ignored(_NOT_HANDLED.get(kind, f"{kind} events are not handled"))
    if event_header and event_header not in (expected_header, SYSTEM_HOOK):
        return Ignored(f"X-Gitlab-Event {event_header!r} does not match object_kind {kind!r}")
    return _PARSERS[kind](payload)
