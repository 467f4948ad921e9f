"""What each project's GitLab webhook should be, and what to do about it: pure, no HTTP.

`wiring` reads projects and their hooks through GitLab's API (as the plain
JSON objects GitLab returns) and hands them here. `plan` decides per project
whether to create, update, leave (ok) or skip its hook; `check` describes the
hook for `--wire-hooks --check`; `wiring` puts either in a table for people.
Neither sees the API token or the secret token: the secret is added by
`wiring` when it sends a hook.

A hook "points here" when its URL is ours up to a trailing slash, the case of
scheme and host and a default port. Hooks pointing anywhere else belong to
somebody else and are never changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from .events import Project

HOOK_PATH = "/gitlab-webhook"
# The event kinds of NOTIFY_EVENTS and the project hook trigger each needs; every other trigger stays off.
TRIGGERS = {
    "push": "push_events",
    "tag_push": "tag_push_events",
    "merge_request": "merge_requests_events",
    "pipeline": "pipeline_events",
}
# GitLab answers a URL its validation refuses with only 422 "Invalid url given"; the usual cause is a private
# address while GitLab blocks webhooks to the local network (its default).
URL_REFUSED_HINT = ("GitLab refused PUBLIC_URL/gitlab-webhook as a hook URL: if that address is on your local "
                    "network, a GitLab administrator must tick Admin > Settings > Network > Outbound requests > "
                    "Allow requests to the local network from webhooks and integrations")
REENABLE_HINT = ("once the service answers at PUBLIC_URL, re-enable it in GitLab: the project's "
                 "Settings > Webhooks > Test > Push events (a 2xx answer re-enables the hook)")


@dataclass(frozen=True)
class DesiredHook:
    """The hook every owned project should have (the secret token is added when sending)."""
    url: str
    triggers: frozenset[str]      # trigger fields to switch on, e.g. {"push_events", "tag_push_events"}
    signed: bool = False          # GITLAB_SIGNING_TOKEN is set: the service refuses unsigned deliveries

    @property
    def verifies_ssl(self) -> bool:
        return self.url.lower().startswith("https://")

    def attributes(self, *, new: bool) -> dict:
        """The fields sent: our URL and triggers, and SSL verification for a new https hook (an existing one
        keeps its choice: cleared, it is how GitLab reaches a self-signed certificate)."""
        attributes: dict = {"url": self.url}
        attributes.update({name: name in self.triggers for name in TRIGGERS.values()})
        if new and self.verifies_ssl:
            attributes["enable_ssl_verification"] = True
        return attributes


def desired_hook(public_url: str, notify_events: frozenset[str], *, signed: bool = False) -> DesiredHook:
    """Our hook URL (PUBLIC_URL + /gitlab-webhook; a PUBLIC_URL that already ends with it is kept)."""
    base = public_url.rstrip("/")
    url = base if base.lower().endswith(HOOK_PATH) else base + HOOK_PATH
    return DesiredHook(url, frozenset(TRIGGERS[kind] for kind in notify_events if kind in TRIGGERS), signed)


@dataclass(frozen=True)
class Listing:
    """A project owners.json names, with its hooks as GitLab returned them, or why they could not be read."""
    project: Project
    hooks: tuple[Mapping, ...] = ()
    problem: str = ""


@dataclass(frozen=True)
class Step:
    """What to do about one project's hook, and why, in words for the table."""
    project: Project
    action: str                   # create | update | ok | skip
    why: str
    hook_id: int | None = None    # the hook to update
    attributes: Mapping = field(default_factory=dict, repr=False)   # what to send, without the secret
    secret_unknown: bool = False  # GitLab (before 19.0) does not say whether the hook has a secret


def plan(listing: Listing, desired: DesiredHook, now: datetime) -> Step:
    """Create our hook, update it where it differs, leave it when right; skip a project we cannot read."""
    if listing.problem:
        return Step(listing.project, "skip", listing.problem)
    ours, others = _split(listing.hooks, desired)
    left_alone = [f"{others} other hook{'s' if others > 1 else ''} left alone"] if others else []
    left_alone += _lookalikes(listing.hooks, desired)
    if not ours:
        return Step(listing.project, "create", "; ".join([f"new hook: {_names(desired.triggers)}"] + left_alone),
                    attributes=desired.attributes(new=True))
    hook = ours[0]
    notes = left_alone + _duplicates(ours)
    if _disabled(hook, now):
        notes.append("GitLab has disabled it, see --check")
    changes = _differences(hook, desired)
    if not changes:
        return Step(listing.project, "ok",
                    "; ".join([f"hook #{hook.get('id')} up to date, secret {_secret(hook)}"] + notes),
                    secret_unknown=hook.get("token_present") is None)
    attributes = desired.attributes(new=False)
    attributes.update({name: False for name in _extra_triggers(hook, desired)})
    return Step(listing.project, "update", "; ".join([f"hook #{hook.get('id')}: " + "; ".join(changes)] + notes),
                hook_id=hook.get("id"), attributes=attributes)


@dataclass(frozen=True)
class HookStatus:
    """One row of `--check`: the state of a project's hook, each column in words."""
    project: Project
    hook: str                     # "#12", "missing" or "?"
    secret: str                   # set | missing | unknown | -
    triggers: str                 # "ok" or what differs
    state: str                    # active | disabled ... | no permission ...
    hints: tuple[str, ...] = ()
    attention: bool = False


def check(listing: Listing, desired: DesiredHook, now: datetime) -> HookStatus:
    """Does the project have our hook, with the secret and the right triggers, and is GitLab sending to it?"""
    if listing.problem:
        return HookStatus(listing.project, "?", "-", "-", listing.problem, attention=True)
    ours, others = _split(listing.hooks, desired)
    if not ours:
        elsewhere = f" ({others} other hook{'s' if others > 1 else ''})" if others else ""
        return HookStatus(listing.project, "missing" + elsewhere, "-", "-", "-",
                          ("run --wire-hooks to create it", *_lookalikes(listing.hooks, desired)), attention=True)
    hook = ours[0]
    hints = _duplicates(ours)
    missing, extra = _missing_triggers(hook, desired), _extra_triggers(hook, desired)
    wrong = ([f"missing {_names(missing)}"] if missing else []) + ([f"extra {_names(extra)}"] if extra else [])
    unsignable = desired.signed and "signing_token_present" not in hook
    if unsignable:
        hints.append("this GitLab does not say whether hooks have a signing token: before 19.0 it cannot sign, "
                     "and the service refuses its deliveries; unset GITLAB_SIGNING_TOKEN")
    if hook.get("token_present") is False or (_lacks_signing(hook, desired) and not unsignable) or wrong:
        hints.append("run --wire-hooks to fix it")
    # Shown, not to be fixed: cleared, it is how GitLab reaches a self-signed certificate.
    ssl_off = ["SSL verification off (right only for a self-signed certificate)"] \
        if desired.verifies_ssl and hook.get("enable_ssl_verification") is False else []
    state = _disabled(hook, now)
    if state:
        hints.append("GitLab stopped sending to it after failed deliveries (events meanwhile are lost); "
                     + REENABLE_HINT)
    secret = _secret(hook) + (", no signing token" if _lacks_signing(hook, desired) else "")
    # Shown, not counted as needing attention: only a person knows whether that address is this service.
    notes = _lookalikes(listing.hooks, desired)
    return HookStatus(listing.project, f"#{hook.get('id')}", secret, ", ".join(wrong + ssl_off) or "ok",
                      state or "active", tuple(hints + notes), attention=bool(hints))


def normalize_url(url: str) -> str:
    """The URL as compared: scheme and host lower-cased, default port and trailing slashes dropped."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    default_port = {"http": 80, "https": 443}.get(scheme)
    try:
        port = parts.port
    except ValueError:            # a malformed port: compare the text as it is
        return url.strip().rstrip("/")
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    if parts.username or parts.password:
        netloc = f"{parts.netloc.rsplit('@', 1)[0]}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def _split(hooks: Sequence[Mapping], desired: DesiredHook) -> tuple[list[Mapping], int]:
    """Our hooks (pointing here), oldest first, and how many others the project has."""
    target = normalize_url(desired.url)
    ours = sorted((h for h in hooks if normalize_url(str(h.get("url") or "")) == target),
                  key=lambda h: h.get("id") or 0)
    return ours, len(hooks) - len(ours)


def _lookalikes(hooks: Sequence[Mapping], desired: DesiredHook) -> list[str]:
    """Other hooks that also end in /gitlab-webhook: often this service at an earlier PUBLIC_URL, which
    GitLab still sends every event to (a second card each time, if that address still reaches it)."""
    target = normalize_url(desired.url)
    notes = []
    for hook in hooks:
        url = normalize_url(str(hook.get("url") or ""))
        parts = urlsplit(url)
        if url != target and parts.path.lower().endswith(HOOK_PATH):
            shown = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"    # no credentials
            notes.append(f"hook #{hook.get('id')} at {shown} also ends in {HOOK_PATH}: if that is this service's "
                         "earlier address, delete it in Settings > Webhooks (GitLab sends every event to both)")
    return notes


def _duplicates(ours: list[Mapping]) -> list[str]:
    if len(ours) < 2:
        return []
    extra = ", ".join(f"#{h.get('id')}" for h in ours[1:])
    return [f"hooks {extra} also point here, so GitLab sends every event twice: delete them in "
            "Settings > Webhooks"]


def _differences(hook: Mapping, desired: DesiredHook) -> list[str]:
    missing, extra = _missing_triggers(hook, desired), _extra_triggers(hook, desired)
    changes = ([f"switch on {_names(missing)}"] if missing else []) + ([f"switch off {_names(extra)}"] if extra else [])
    if hook.get("token_present") is False:
        changes.append("set the secret token")
    if _lacks_signing(hook, desired):
        changes.append("set the signing token")
    return changes


def _lacks_signing(hook: Mapping, desired: DesiredHook) -> bool:
    """Signatures are required but GitLab does not say the hook has a signing token (19.0+ says so; a GitLab
    that says nothing is older, and cannot sign)."""
    return desired.signed and hook.get("signing_token_present") is not True


def _missing_triggers(hook: Mapping, desired: DesiredHook) -> list[str]:
    return [name for name in TRIGGERS.values() if name in desired.triggers and not hook.get(name)]


def _extra_triggers(hook: Mapping, desired: DesiredHook) -> list[str]:
    """Triggers on that the service does not handle (any `*_events` field, so new GitLab triggers count)."""
    return sorted(name for name, value in hook.items()
                  if name.endswith("_events") and value is True and name not in desired.triggers)


def _secret(hook: Mapping) -> str:
    """GitLab never returns the token; 19.0+ says whether one is set (token_present)."""
    present = hook.get("token_present")
    secret = "unknown" if present is None else ("set" if present else "missing")
    if hook.get("signing_token_present"):
        secret += ", signing token set"
    return secret


def _disabled(hook: Mapping, now: datetime) -> str:
    """How GitLab has disabled the hook after failed deliveries ("" when it is sending)."""
    status = hook.get("alert_status")
    if status == "disabled":
        return "disabled (permanently)"
    until = _timestamp(hook.get("disabled_until"))
    if until is not None and until > now:
        return f"disabled until {until.strftime('%Y-%m-%d %H:%M')} UTC"
    if status == "temporarily_disabled":
        return "disabled (temporarily)"
    return ""


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))   # 3.10 does not read "Z"
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _names(triggers: Iterable[str]) -> str:
    """Trigger fields in a stable order: the handled ones as in TRIGGERS, then any others alphabetically."""
    order = {name: i for i, name in enumerate(TRIGGERS.values())}
    names = sorted(triggers, key=lambda name: (order.get(name, len(order)), name))
    return ", ".join(names) or "no events (NOTIFY_EVENTS is empty)"
