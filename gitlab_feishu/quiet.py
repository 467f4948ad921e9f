"""Quiet rules: events and recipients that deliberately get no card.

Pure functions the service applies around routing:
- a push whose every commit asks for silence (`[skip notify]`, `[通知跳过]`) notifies nobody;
- an event caused by someone in IGNORE_PUSHERS (a CI bot, a mirror) notifies nobody;
- with NOTIFY_SELF=false, the person who caused an event is not told about it.
"""
from __future__ import annotations

import unicodedata
from typing import Callable, Iterable, Protocol, TypeVar

from .events import Event, Person
from .rows import person_key
from .users import TRIGGERED

# Compared after NFKC + casefold, so "[Skip Notify]" and the full-width "［通知跳过］" count too;
# 【】 are the brackets a Chinese input method types for [ ].
SKIP_MARKERS = ("[skip notify]", "[通知跳过]", "【通知跳过】")
SELF_SKIPPED = "NOTIFY_SELF is false and they caused this event"

AddressOf = Callable[[str], str | None]     # GitLab username -> email or open_id (the users file)


class _Recipient(Protocol):
    recipient: str
    channel: str
    rule: str


GITLAB_COMMIT_CAP = 20           # commits GitLab lists in a push payload at most

R = TypeVar("R", bound=_Recipient)


def quiet_reason(event, ignore_pushers: frozenset[str], address_of: AddressOf | None = None) -> str | None:
    """Why `event` notifies nobody whatever owners.json says, or None."""
    if event.kind == "push" and asks_for_silence(event.commits, event.total_commits):
        return "every commit in this push carries [skip notify] or [通知跳过]"
    ignored = ignored_actor(event.actor, ignore_pushers, address_of)
    if ignored:
        return f"{ignored} is listed in IGNORE_PUSHERS"
    return None


def asks_for_silence(commits: Iterable, total_commits: int) -> bool:
    """At least one commit, and every one carries a skip marker.

    GitLab lists at most 20 commits; when it cut the list, the other messages
    are unknown, so the push is not silenced. (A shorter list whose count says
    more, as in GitLab's documented example, is judged on what it lists.)
    """
    commits = list(commits)
    if not commits or (len(commits) >= GITLAB_COMMIT_CAP and total_commits > len(commits)):
        return False
    return all(any(marker in _folded(commit.message) for marker in SKIP_MARKERS) for commit in commits)


def ignored_actor(actor: Person, ignore_pushers: frozenset[str], address_of: AddressOf | None = None) -> str | None:
    """The actor's username or email when IGNORE_PUSHERS (lower-cased) lists either, else None.

    GitLab hides most emails, so an email listed there is also found through what the users file maps
    the actor's username to, as NOTIFY_SELF does.
    """
    mapped = address_of(actor.username) if address_of and actor.username else None
    for identity in (actor.username, actor.email, mapped):
        if identity and identity.lower() in ignore_pushers:
            return identity
    return None


def is_self(recipient: str, actor: Person, address_of: AddressOf | None = None) -> bool:
    """Whether `recipient` (an email or open_id) is the person who caused the event.

    By the email GitLab disclosed, else (GitLab hides emails by default) by
    what the users file maps the actor's username to.
    """
    addresses = {person_key(actor.email.strip())} if actor.email else set()
    mapped = address_of(actor.username) if address_of and actor.username else None
    if mapped:
        addresses.add(person_key(mapped.strip()))
    return person_key(recipient.strip()) in addresses


def split_self(matches: list[R], event: Event, address_of: AddressOf | None = None) -> tuple[list[R], list[R]]:
    """(kept, skipped): owners who caused the event themselves are skipped; group chats never are.

    Nor is whoever triggered a failed pipeline in that role (users.json's "triggered: ..."): they are always its
    actor, and that card exists to tell them their own pipeline broke. An owner who triggered it is an owner who
    caused an event, and skipped like one.
    """
    kept: list[R] = []
    skipped: list[R] = []
    for match in matches:
        spared = match.channel != "dm" or match.rule.startswith(f"{TRIGGERED}: ")
        mine = not spared and is_self(match.recipient, event.actor, address_of)
        (skipped if mine else kept).append(match)
    return kept, skipped


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()
