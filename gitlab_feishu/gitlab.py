"""GitLab's side: verifying a delivery and dispatching its payload to a parser.

Pure functions only. An unexpected shape becomes `Ignored`, never an
exception; the parsers themselves live in `parsers`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any, Mapping

from .events import Event, Ignored   # Ignored: what parse_event returns for a delivery it will not notify
from .parsers import parse_merge_request, parse_pipeline, parse_push, parse_tag_push

MAX_BODY_BYTES = 25 * 1024 * 1024   # GitLab's own cap on a webhook body
_SURROGATE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")   # U+D800-U+DFFF, raw or escaped

# object_kind -> the X-Gitlab-Event header a project hook sends with it
EVENT_HEADERS = {
    "push": "Push Hook",
    "tag_push": "Tag Push Hook",
    "merge_request": "Merge Request Hook",
    "pipeline": "Pipeline Hook",
}
SYSTEM_HOOK = "System Hook"          # a system hook sends push payloads under this header
SIGNATURE_TOLERANCE = 300.0          # Standard Webhooks: a webhook-timestamp off by more is refused
_PARSERS = {"push": parse_push, "tag_push": parse_tag_push, "merge_request": parse_merge_request,
            "pipeline": parse_pipeline}
_NOT_HANDLED = {"build": "job events are not handled: a failed pipeline notifies once, never once per job"}


def decode_payload(body: bytes) -> Any:
    """The JSON body as Python values; ValueError (or RecursionError) when it is not JSON.

    A UTF-8 BOM, which Windows tools put in front of a hand-made test payload, is skipped. A lone
    surrogate (a `\\ud800` escape, or its raw bytes: valid JSON, not encodable as UTF-8) becomes "?",
    so it cannot break the outbox, a log line or the answer.
    """
    text = body.decode(json.detect_encoding(body), "surrogatepass")   # as json.loads(bytes) reads it
    payload = json.loads(text)
    return _without_surrogates(payload) if _SURROGATE.search(text) else payload


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_surrogates(key): _without_surrogates(item) for key, item in value.items()}
    return value


def token_matches(received: str | None, expected: str) -> bool:
    """Constant-time compare of X-Gitlab-Token, on bytes so any header value is safe."""
    if received is None:
        return False
    try:
        raw = received.encode("latin-1")      # WSGI hands header bytes over decoded as latin-1
    except UnicodeEncodeError:
        raw = received.encode("utf-8", "replace")   # text that never was bytes on the wire (a test client)
    return hmac.compare_digest(raw, expected.encode("utf-8"))


def signing_key(token: str) -> bytes:
    """The HMAC key in a `whsec_<base64>` signing token; ValueError says what is wrong, never the token.

    Any non-empty key is used, as the Standard Webhooks libraries do. The prefix, which GitLab always
    shows, is required: without it a Secret token pasted here by mistake may well decode as base64,
    and every delivery would then be refused.
    """
    if not token.startswith("whsec_"):
        raise ValueError("it must start with whsec_ (copy the signing token from GitLab's webhook page, "
                         "not the Secret token)")
    encoded = token.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not base64: copy the whole token from GitLab's "
                         "webhook page again") from None
    if not key:
        raise ValueError("the key after whsec_ is empty: copy the whole token from GitLab's webhook page again")
    return key


def signature_problem(signing_token: str, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """Why a GitLab 19 signed delivery fails Standard Webhooks verification, or None when it passes.

    The signed content is `{webhook-id}.{webhook-timestamp}.` followed by the
    raw body bytes; `webhook-signature` holds space-separated `v1,<base64>`
    entries, any of which may match (key rotation sends two). The timestamp
    must be within SIGNATURE_TOLERANCE of `now` either way, so a captured
    delivery cannot be replayed later. The reasons tell the usual set-up
    mistakes apart: no Signing token on the hook, a skewed clock, another token.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id, timestamp, signatures = (lowered.get(name, "").strip()
                                         for name in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not signatures:
        return ("no webhook-signature header: give the hook a Signing token (GitLab 19 or later) equal to "
                "GITLAB_SIGNING_TOKEN")
    if not (message_id and timestamp.isascii() and timestamp.isdigit()):
        return "webhook-signature without a valid webhook-id and webhook-timestamp"
    digits = timestamp.lstrip("0") or "0"
    if len(digits) > 15:            # no clock's seconds: int() refuses 4,300 digits, a float 309 (a 500 otherwise)
        return "webhook-signature is stale: its webhook-timestamp is not a time in seconds (too many digits)"
    skew = now - int(digits)
    if abs(skew) > SIGNATURE_TOLERANCE:
        return (f"webhook-signature is stale: its webhook-timestamp is {abs(skew):.0f} s "
                f"{'behind' if skew > 0 else 'ahead of'} this server's clock (at most {SIGNATURE_TOLERANCE:.0f} s "
                "either way): check the clocks of GitLab and this server")
    try:
        key = signing_key(signing_token)
    except ValueError:                       # refused at start-up already; never a 500
        return "GITLAB_SIGNING_TOKEN is not a signing token"
    signed = f"{message_id}.{timestamp}.".encode("utf-8", "replace") + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    for entry in signatures.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(candidate, expected):
            return None
    return ("no webhook-signature matches GITLAB_SIGNING_TOKEN: set the hook's Signing token to it (or the body "
            "was changed on the way)")


def parse_event(payload: Any, event_header: str | None) -> Event | Ignored:
    """Turn a decoded webhook body into an event, or say why it is ignored."""
    if not isinstance(payload, dict):
        return Ignored("payload is not a JSON object")
    kind = payload.get("object_kind")
    if not isinstance(kind, str) or not kind:
        # GitLab's system-hook documentation shows push and tag events without object_kind, naming
        # the kind only in event_name; the other system events (project_create, repository_update...)
        # carry only event_name too, and are not handled.
        event_name = payload.get("event_name")
        if event_name in ("push", "tag_push"):
            kind = event_name
        elif isinstance(event_name, str) and event_name:
            return Ignored(f"{event_name} events are not handled")
        else:
            return Ignored("payload has no object_kind")
    expected_header = EVENT_HEADERS.get(kind)
    if expected_header is None:
        return Ignored(_NOT_HANDLED.get(kind, f"{kind} events are not handled"))
    if event_header and event_header not in (expected_header, SYSTEM_HOOK):
        return Ignored(f"X-Gitlab-Event {event_header!r} does not match object_kind {kind!r}")
    return _PARSERS[kind](payload)
