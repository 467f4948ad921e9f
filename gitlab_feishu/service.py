"""The pipeline behind POST /gitlab-webhook: parse, match owners, render, deliver, answer.

`Notifier.notify` takes a verified, decoded payload and returns the JSON body
GitLab shows on its Recent events page. HTTP concerns (size, token, JSON)
stay in app.py.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any, Callable, Mapping

from . import cards, chats
from .cards import render_content
from .db import is_locked, storage_failure, why_unwritable
from .delivery import Deliverer, Outcome
from .events import Event, MergeRequestEvent, PipelineEvent
from .gitlab import Ignored, parse_event
from .outbox import LOCK_WAIT, Outbox
from .owners import Match, OwnersFile
from .pipelines import pipeline_to_notify
from .quiet import SELF_SKIPPED, quiet_reason, split_self
from .rows import QUEUED, SENT, Delivery, NewDelivery, feishu_uuid, recipient_identity, shown
from .settings import Settings
from .users import UsersFile, with_people
from .watched import iso_time

log = logging.getLogger(__name__)

RETRY_WINDOW = 24 * 3600.0     # how long a queued delivery is retried before it is marked failed
LEASE_SLACK = 20.0             # an inline attempt's lease outlives the deadline by this much: longer than a group
                               # post started just before it may take (BotClient.longest_post, 13 s)
DEADLINE_MARGIN = 0.3          # answer GitLab this long before the deadline, for the reply itself
CARD_LIMITS = {"dm": cards.MAX_CARD_BYTES, "chat": chats.MAX_CARD_BYTES}   # a bot's body holds its card
# Webhooks that may try their cards inline at once, per process: fewer than the server's 32 threads
# (gunicorn.conf.py, cli.py), so that while Feishu is down or hanging, and every inline attempt holds
# its thread until the deadline, a burst still finds threads that answer at once. The others leave
# their cards to the retry worker; without this, 200 webhooks at once waited past GitLab's 10 s.
INLINE_SLOTS = 24
BUSY = "many webhooks in flight: left to the retry worker"


def idempotency_key(headers: Mapping[str, str], event: Event) -> str:
    """GitLab's Idempotency-Key (17.4+, kept on Resend), else the event UUID, else one built from the payload."""
    # A blank header must not merge unrelated events under one key.
    if key := (headers.get("Idempotency-Key") or "").strip():
        return "idem:" + key[:200]
    if event_uuid := (headers.get("X-Gitlab-Event-UUID") or "").strip():
        # Recursive hooks share one (a bot's API call after a push makes a merge request, say): with the
        # payload's own key, the second event is not taken for a repeat of the first.
        return f"uuid:{event_uuid[:200]}:{event.idempotency_key}"
    return "payload:" + event.idempotency_key


def overall_status(results: list[str]) -> str:
    """The response's status from its deliveries' results (see the README's response contract)."""
    counted = [r for r in results if r != "skipped"]
    if not counted:
        return "ignored"
    if all(r == SENT for r in counted):
        return "sent"
    if any(r == SENT for r in counted):
        return "partial"
    return "queued" if any(r == QUEUED for r in counted) else "failed"


class Notifier:
    """Turns one webhook payload into cards for the matched owners."""

    def __init__(self, settings: Settings, owners: OwnersFile, outbox: Outbox, deliverer: Deliverer | None,
                 *, lease_owner: str, clock: Callable[[], float] = time.time, users: UsersFile | None = None):
        self.settings = settings
        self.owners = owners
        self.users = users
        self.outbox = outbox
        self.deliverer = deliverer
        self.lease_owner = lease_owner
        self.clock = clock
        self.inline_slots = threading.BoundedSemaphore(INLINE_SLOTS)
        # The last webhook the outbox could not record, until one is recorded again: /healthz shows it.
        self.write_error: dict | None = None

    def notify(self, payload: Any, headers: Mapping[str, str], started: float) -> dict:
        """Handle one delivery whose token and JSON have been checked; returns the response body."""
        event = parse_event(payload, headers.get("X-Gitlab-Event"))
        if isinstance(event, Ignored):
            return self._ignored(event.reason, headers, _named_in(payload))
        base = {"event": event.kind, "project": event.project.path}
        if event.kind not in self.settings.notify_events:
            return self._ignored(f"{event.kind} events are turned off (NOTIFY_EVENTS)", headers, base, event)
        key = idempotency_key(headers, event)
        if isinstance(event, PipelineEvent):
            pipeline = event
            # Before the quiet rules: a silenced failure still counts when its fix arrives.
            try:
                event = pipeline_to_notify(event, self.outbox, key)
            except sqlite3.DatabaseError as exc:
                if not storage_failure(exc):
                    raise
                return self._not_recorded(exc, key, [], base, [])
            if isinstance(event, Ignored):
                return self._ignored(event.reason, headers, base, pipeline)
        quiet = quiet_reason(event, self.settings.ignore_pushers, self._address_of)
        if quiet:
            return self._ignored(quiet, headers, base, event)
        matches = self._recipients(event)
        if not matches:
            return self._ignored(self.owners.current().why_nobody(event) + _sample_hint(event), headers, base, event)
        matches, skipped = self._skip_self(event, matches)
        if not matches:
            return {**self._ignored(f"only {event.actor.label or 'its author'} would be notified, and NOTIFY_SELF "
                                    "is false", headers, base, event), "deliveries": skipped}
        contents = {channel: render_content(event, self.settings.card_lang, max_bytes=CARD_LIMITS[channel])
                    for channel in dict.fromkeys(m.channel for m in matches)}
        if self.settings.dry_run:
            return self._dry_run(event, key, matches, contents, base, skipped, started)

        planned = [NewDelivery(m.channel, m.recipient, m.rule, contents[m.channel],
                               feishu_uuid(key, m.channel, m.recipient)) for m in matches]
        deadline = started + self.settings.delivery_deadline_seconds - DEADLINE_MARGIN
        inline = self.inline_slots.acquire(blocking=False)
        try:
            try:
                # Rows left to the retry worker are recorded unleased, so it may claim them at once.
                new, earlier = self.outbox.begin_event(
                    key, event.kind, event.project.path, planned, lease_owner=self.lease_owner,
                    lease_seconds=self.settings.delivery_deadline_seconds + LEASE_SLACK if inline else 0.0,
                    retry_window=RETRY_WINDOW, waiting=None if inline else BUSY,
                    timeout=min(LOCK_WAIT, deadline - self.clock()))
            except sqlite3.DatabaseError as exc:
                if not storage_failure(exc):
                    raise
                return self._not_recorded(exc, key, matches, base, skipped)
            self.write_error = None
            if not new:
                return self._repeat(key, earlier, base)
            if inline:
                outcomes = self.deliverer.deliver(new, deadline)
            else:
                outcomes = {row.id: Outcome(QUEUED, BUSY) for row in new}
                self.deliverer.on_due()
        finally:
            if inline:
                self.inline_slots.release()
        outcomes.update({row.id: Outcome(row.status, row.last_error) for row in earlier})
        by_recipient = {recipient_identity(row.channel, row.recipient): row for row in new + earlier}
        rows = [by_recipient[recipient_identity(d.channel, d.recipient)] for d in planned]
        deliveries = [_delivery_json(row, outcomes[row.id]) for row in rows] + skipped
        response = {"status": overall_status([d["result"] for d in deliveries]), **base, "deliveries": deliveries}
        if earlier:
            response["reason"] = ("repeat of an earlier delivery: cards only for recipients added since "
                                  "(the others' results are from the first one)")
        self._log(event, key, [_outcome_part(row, outcomes[row.id]) for row in new], started)
        return response

    def _recipients(self, event: Event) -> list[Match]:
        """Who hears about this event, each once, with the rule that chose them."""
        matches = self.owners.current().match(event)
        # Only an event owners.json routes: a project nobody owns, or an event its entries' filters leave out,
        # notifies nobody, its reviewers and whoever triggered it included.
        return with_people(matches, event, self.users.current()) if matches and self.users else matches

    def _skip_self(self, event: Event, matches: list[Match]) -> tuple[list[Match], list[dict]]:
        """With NOTIFY_SELF=false, the person who caused the event is left out, shown as skipped."""
        if self.settings.notify_self:
            return matches, []
        kept, mine = split_self(matches, event, self._address_of)
        if mine:
            log.info("not telling %s about their own %s (NOTIFY_SELF=false)", ", ".join(m.shown for m in mine),
                     event.kind)
        return kept, [{"to": m.shown, "rule": m.rule, "result": "skipped", "error": SELF_SKIPPED} for m in mine]

    def _address_of(self, username: str) -> str | None:
        """Where users.json says a GitLab user gets their cards, to know them when GitLab hides their email."""
        return self.users.current().recipient(username) if self.users else None

    def _ignored(self, reason: str, headers: Mapping[str, str], base: dict | None = None,
                 event: Event | None = None) -> dict:
        if event is None:             # not an event we parse: the header and key are all there is to say
            log.info("ignored %s (%s): %s", headers.get("X-Gitlab-Event", "?"), _key_for_log(headers), reason)
        else:                         # like the line of a notifying webhook, so "why no card?" is found the same way
            log.info("ignored %s %s %s by %s key=%s: %s", event.kind, event.project.path, _ref(event),
                     event.actor.label or "?", idempotency_key(headers, event), reason)
        return {"status": "ignored", "reason": reason, **(base or {}), "deliveries": []}

    def _dry_run(self, event: Event, key: str, matches: list[Match], contents: dict[str, str], base: dict,
                 skipped: list[dict], started: float) -> dict:
        for match in matches:
            log.info("dry run: would send to %s (%s) for %s: %s", match.shown, match.rule, key,
                     contents[match.channel])
        self._log(event, key, [f"{match.shown} ({match.rule}) dry_run" for match in matches], started)
        return {"status": "dry_run", "reason": "FEISHU_APP_ID is not set: cards were logged, not sent", **base,
                "deliveries": [{"to": m.shown, "rule": m.rule, "result": "dry_run"} for m in matches] + skipped}

    def _not_recorded(self, exc: sqlite3.Error, key: str, matches: list[Match], base: dict,
                      skipped: list[dict]) -> dict:
        """Nothing could be recorded: answer GitLab anyway (a 5xx would count towards disabling the hook)
        and say how to get the cards out."""
        where = f"DATA_DIR/{self.outbox.path.name}"
        if is_locked(exc):
            why = f"{where} stayed locked by another program (an sqlite3 shell or a backup tool in a transaction?)"
        else:
            why = f"{where} could not be written ({exc}: {why_unwritable(exc)})"
        error = (f"{why}: nothing was recorded or sent; once it is fixed, resend this delivery from GitLab "
                 "(Settings > Webhooks > Edit > Recent events)")
        log.error("%s for %s: %s (%s)", key, base["project"], error, self.outbox.path)
        self.write_error = {"at": iso_time(self.clock()), "error": error}
        return {"status": "failed", "reason": error, **base,
                "deliveries": [{"to": m.shown, "rule": m.rule, "result": "failed", "error": error}
                               for m in matches] + skipped}

    def _repeat(self, key: str, rows: list[Delivery], base: dict) -> dict:
        now = self.clock()
        in_flight = any(row.status == QUEUED and row.lease_until and row.lease_until > now for row in rows)
        deliveries = [_delivery_json(row, Outcome(row.status, row.last_error)) for row in rows]
        if in_flight:
            reason = "repeat of a delivery still in progress: no new card"
        elif any(row.status == QUEUED for row in rows):
            reason = "repeat of a delivery still in progress (waiting for a retry): no new card; results so far"
        else:
            reason = "repeat of an earlier delivery: no new card; results are from the first one"
        log.info("repeat %s for %s: %s", key, base["project"], reason)
        return {"status": overall_status([d["result"] for d in deliveries]), "reason": reason, **base,
                "deliveries": deliveries}

    def _log(self, event: Event, key: str, parts: list[str], started: float) -> None:
        """The one line per webhook: key, event, project, ref, who, then each recipient's rule and outcome."""
        log.info("%s %s %s by %s key=%s in %.0f ms -> %s", event.kind, event.project.path, _ref(event),
                 event.actor.label or "?", key, (self.clock() - started) * 1000, "; ".join(parts))


def _outcome_part(row: Delivery, outcome: Outcome) -> str:
    part = f"{shown(row)} ({row.rule}) {outcome.status} in {outcome.duration * 1000:.0f} ms"
    return part + (f": {outcome.error}" if outcome.error and outcome.status != SENT else "")


def _sample_hint(event: Event) -> str:
    """GitLab's Test button on a project without commits sends a made-up project; say so on Recent events."""
    if event.project.path == "gitlab/gitlab" and event.project.web_url.startswith("http://test.example.com/"):
        return ("; this is GitLab's built-in sample, which Test sends for a project without commits: push a "
                "commit, then press Test again")
    return ""


def _ref(event: Event) -> str:
    """A push's, tag's or pipeline's ref; a merge request's source and target branches."""
    if isinstance(event, MergeRequestEvent):
        return f"{event.source_branch} into {event.target_branch}"
    return getattr(event, "ref", "")


def _named_in(payload: Any) -> dict:
    """The event kind and project a payload names, if it does, for an answer that ignores it."""
    if not isinstance(payload, dict):
        return {}
    project = payload.get("project")
    named = {"event": payload.get("object_kind") or payload.get("event_name"),
             "project": project.get("path_with_namespace") if isinstance(project, dict) else None}
    return {name: value for name, value in named.items() if isinstance(value, str) and value}


def _delivery_json(row: Delivery, outcome: Outcome) -> dict:
    result = {"to": shown(row), "rule": row.rule, "result": outcome.status}
    if outcome.error and outcome.status != SENT:
        result["error"] = outcome.error
    return result


def _key_for_log(headers: Mapping[str, str]) -> str:
    return headers.get("Idempotency-Key") or headers.get("X-Gitlab-Event-UUID") or "no key"
