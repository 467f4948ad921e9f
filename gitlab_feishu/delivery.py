"""Delivering recorded cards: resolve owners, send, retry within a deadline, record the outcome.

The same code serves the webhook request (a short deadline, inside GitLab's
10 s) and the retry worker (a longer one). Every outcome is written to the
outbox by the task that produced it, so a send that finishes after GitLab was
answered still lands in the right state.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Callable

from .chats import BotClient
from .cutoff import Countdown
from .feishu import UNKNOWN_EMAIL, FeishuClient
from .feishu_errors import USER_RATE_LIMITED, FeishuError
from .outbox import Outbox
from .pacing import MAX_HOLD, Pacer, Quota, bot_quotas, dm_quotas, lookup_quotas, refused_quota
from .rows import FAILED, QUEUED, SENT, Delivery, feishu_uuid, is_open_id, needs_lookup, shown

log = logging.getLogger(__name__)

MAX_BACKOFF = 600.0            # retries settle at one every 10 minutes
INLINE_BACKOFF = 0.2           # first pause between inline retries
INLINE_TURN_WAIT = 1.5         # a webhook waits this long for a turn under the quotas (wider than a
                               # per-second window, so a sixth card to one person still goes inline)
STALE_OPEN_ID = frozenset({230001, 230034})   # Feishu refuses the receive_id (or another parameter)


class TurnWait(FeishuError):
    """No turn under Feishu's quotas came in time: nothing reached Feishu, so no round is counted."""

    def __init__(self, wait: float):
        super().__init__("waiting for a turn under Feishu's rate limits", retryable=True, retry_after=wait)


@dataclass(frozen=True)
class Outcome:
    status: str                # sent | queued | failed
    error: str | None = None
    duration: float = 0.0      # seconds from the start of deliver() (the email lookup included) to this outcome


def _tried(failure: FeishuError | str) -> int:
    """Attempts a lookup failure counts: none when it only waited for a turn."""
    return 0 if isinstance(failure, TurnWait) else 1


def backoff(rounds: int, base: float) -> float:
    """Seconds before the next retry after `rounds` failed rounds: base, 2*base, 4*base ... capped."""
    return min(base * 2 ** max(rounds - 1, 0), MAX_BACKOFF)


class Deliverer:
    """Sends recorded deliveries to Feishu and records what happened."""

    def __init__(self, outbox: Outbox, feishu: FeishuClient, *, pool: ThreadPoolExecutor, retry_base: float,
                 pacer: Pacer | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 on_failed: Callable[[Delivery, FeishuError | str], None] | None = None,
                 chats: BotClient | None = None, chat_secret: Callable[[str], str | None] = lambda url: None,
                 chat_pool: ThreadPoolExecutor | None = None):
        self.outbox = outbox
        self.feishu = feishu
        self.chats = chats or BotClient()
        self.chat_secret = chat_secret       # looked up at each send, so fixing owners.json fixes a retry
        self.pool = pool
        # Group posts, which may outlast the webhook (see _send), on threads of their own: a slow bot must not
        # hold the threads that owners' DMs need.
        self.chat_pool = chat_pool or pool
        self._posting: set[int] = set()      # rows whose group post is under way
        self._answered_queued: set[int] = set()   # rows a webhook reported queued while their try went on
        self.retry_base = retry_base
        self.pacer = pacer
        self.clock = clock
        self.sleep = sleep
        # Told about every delivery marked failed for good (admin alerts).
        self.on_failed: Callable[[Delivery, FeishuError | str], None] = on_failed or (lambda row, error: None)
        self.on_due: Callable[[], None] = lambda: None   # told when a row is queued due at once

    def deliver(self, rows: list[Delivery], deadline: float, *, retry_inline: bool = True) -> dict[int, Outcome]:
        """Attempt each row until `deadline`; rows still in flight then are reported queued.

        The webhook request retries transient errors inline while its deadline
        allows; the retry worker makes one attempt a round and leaves the
        pauses to the outbox's backoff, so a recovered Feishu is used at once.
        """
        started = self.clock()
        countdown = Countdown(deadline, self.clock)

        def due() -> float:
            # The deadline on the wall clock as it reads now: stepped back (NTP) since, `deadline` would be later.
            return self.clock() + countdown.left()

        def timed(outcome: Outcome) -> Outcome:
            return replace(outcome, duration=self.clock() - started)

        def attempt(row: Delivery, open_id: str) -> Outcome:
            return timed(self._attempt(row, open_id, due(), retry_inline))

        def submit(row: Delivery, open_id: str) -> Future:
            return (self.chat_pool if row.channel == "chat" else self.pool).submit(attempt, row, open_id)

        lookups = [row for row in rows if needs_lookup(row)]
        if len(rows) == 1 and rows[0].channel == "dm":       # the common case: no thread hop
            [row] = rows
            open_ids, failures = self._resolve(lookups, due(), retry_inline)
            if row.id in failures:
                return {row.id: timed(self._record_failure(row, failures[row.id], attempts=_tried(failures[row.id])))}
            return {row.id: attempt(row, open_ids.get(row.id, row.recipient))}
        # Rows that need no lookup go at once; the others as soon as it has answered.
        futures = {submit(row, row.recipient): row for row in rows if not needs_lookup(row)}
        open_ids, failures = self._resolve(lookups, due(), retry_inline)
        outcomes = {row.id: timed(self._record_failure(row, failures[row.id], attempts=_tried(failures[row.id])))
                    for row in lookups if row.id in failures}
        futures.update({submit(row, open_ids[row.id]): row for row in lookups if row.id in open_ids})
        done, _ = wait(futures, timeout=max(countdown.left(), 0))
        late = {future: row.id for future, row in futures.items() if future not in done}
        self._answered_queued.update(late.values())
        # One that ended in between has discarded its id already: it must not stay in the set for good.
        self._answered_queued.difference_update(row_id for future, row_id in late.items() if future.done())
        for future, row in futures.items():
            if future in done:
                outcomes[row.id] = future.result()
            elif row.id in self._posting:
                outcomes[row.id] = timed(Outcome(QUEUED, "the group's bot had not answered when the deadline came; "
                                                         "its answer is recorded when it comes"))
            else:
                outcomes[row.id] = timed(Outcome(QUEUED, "still sending when the deadline came; "
                                                         "retrying in the background"))
        return outcomes

    def _resolve(self, rows: list[Delivery], deadline: float,
                 retry_inline: bool) -> tuple[dict[int, str], dict[int, FeishuError | str]]:
        """Map each row (a DM to an email) to an open_id: one lookup call for all uncached emails,
        retried like a send while the deadline allows."""
        emails = sorted({row.recipient for row in rows})
        if not emails:
            return {}, {}
        attempts, countdown, refused = 0, Countdown(deadline, self.clock), None
        turn = self._lookup_turns(deadline, retry_inline)
        while True:
            try:
                # The retry worker asks again about emails Feishu did not know: the account may be fixed.
                found = self.feishu.resolve_open_ids(emails, budget=countdown.left(),
                                                     recheck_unknown=not retry_inline, before_lookup=turn)
                break
            except TurnWait as exc:      # it waited for a turn already: queued for when one may be free
                if refused is not None:  # after Feishu refused a try: that is the error to show, and a round
                    refused = copy.copy(refused)
                    refused.retry_after = exc.retry_after
                return {}, {row.id: refused or exc for row in rows if row.recipient in emails}
            except FeishuError as exc:
                attempts, refused = attempts + 1, exc
                if exc.rate_limited and self.pacer is not None:
                    self.pacer.hold(lookup_quotas()[0], exc.retry_after)
                if not self._paused_for_retry(exc, attempts, countdown.left(), retry_inline):
                    return {}, {row.id: exc for row in rows if row.recipient in emails}
        open_ids: dict[int, str] = {}
        failures: dict[int, FeishuError | str] = {}
        for row in rows:
            if row.recipient in emails:
                if found.get(row.recipient):
                    open_ids[row.id] = found[row.recipient]
                else:
                    failures[row.id] = UNKNOWN_EMAIL
        return open_ids, failures

    def _lookup_turns(self, deadline: float, retry_inline: bool) -> Callable[[], None] | None:
        """What resolve_open_ids calls before each call to Feishu, never when a cache answers: a turn under
        the lookup quota (a burst to many new owners)."""
        if self.pacer is None:
            return None
        return lambda: self._take_turn(lookup_quotas(), deadline, retry_inline)

    def _take_turn(self, quotas: list[Quota], deadline: float, retry_inline: bool) -> None:
        """Wait for a turn under `quotas`: a webhook briefly, then it leaves the card to the paced worker;
        raise TurnWait, due when a turn may be free, if none comes in time."""
        turn_by = min(deadline, self.clock() + INLINE_TURN_WAIT) if retry_inline else deadline
        wait = self.pacer.wait_turn(quotas, turn_by)
        if wait:
            raise TurnWait(wait)

    def _attempt(self, row: Delivery, open_id: str, deadline: float, retry_inline: bool) -> Outcome:
        """Send one card, retrying transient errors while the deadline allows (when asked to)."""
        try:
            return self._try(row, open_id, deadline, retry_inline)
        finally:
            self._answered_queued.discard(row.id)

    def _try(self, row: Delivery, open_id: str, deadline: float, retry_inline: bool) -> Outcome:
        attempts = 0
        error: FeishuError | None = None
        looked_up_again = False
        countdown = Countdown(deadline, self.clock)
        # A retry round must not end with a group post under way (see _send; a stopping process waits for the
        # round only): the worker starts one only while the whole of it still fits in the round.
        start_by = deadline - self.chats.longest_post if row.channel == "chat" and not retry_inline else deadline
        starting = Countdown(start_by, self.clock)
        while True:
            if starting.left() <= 0:
                break
            quotas = bot_quotas(row.recipient) if row.channel == "chat" else dm_quotas(open_id)
            if self.pacer is not None:
                try:
                    self._take_turn(quotas, start_by, retry_inline)
                except TurnWait as waited:
                    # Come back when a turn may be free, not at once: a window that is full for longer than
                    # the retry worker's round (a minute's quota) would otherwise be claimed and put back
                    # in a tight loop, each time writing the outbox and the log.
                    error = error or waited
                    break
            budget = countdown.left()
            attempts += 1
            try:
                message_id = self._send(row, open_id, budget)
            except FeishuError as exc:
                error = exc
                if exc.rate_limited and self.pacer is not None:
                    self.pacer.hold(refused_quota(quotas, one_user=exc.code == USER_RATE_LIMITED), exc.retry_after)
                if exc.code in STALE_OPEN_ID and not looked_up_again and row.channel == "dm" \
                        and not is_open_id(row.recipient):
                    # The cached open_id may be stale (cached before the app or the user changed): look
                    # the email up once more. 230001 also covers other bad parameters: then this costs
                    # one lookup before the row fails for good.
                    looked_up_again = True
                    fresh = self._look_up_again(row.recipient, countdown.left(), deadline, retry_inline)
                    if fresh and fresh != open_id:
                        open_id = fresh
                        continue
                if not self._paused_for_retry(exc, attempts, countdown.left(), retry_inline):
                    break
                continue
            except Exception as exc:    # a bug must not leave the row leased forever
                log.exception("unexpected error sending delivery %s", row.id)
                error = FeishuError(f"unexpected error: {exc}", retryable=True)
                break
            self.outbox.finish(row.id, SENT, attempts=attempts, message_id=message_id)
            # Greppable by the webhook's key, as queued and failed are, when its own line could not say it.
            if not retry_inline:
                log.info("delivery to %s for %s sent on retry", shown(row), row.event_key)
            elif row.id in self._answered_queued:
                log.info("delivery to %s for %s sent after GitLab was answered", shown(row), row.event_key)
            return Outcome(SENT)
        if error is None and start_by < deadline:      # a round with no posting thread free in time
            error = FeishuError(row.last_error or "no thread free to post in time for this retry round",
                                retryable=True)
        if error is None:
            error = FeishuError("no time left before the deadline", retryable=True)
        return self._record_failure(row, error, attempts=attempts)

    def _paused_for_retry(self, error: FeishuError, attempts: int, left: float, retry_inline: bool) -> bool:
        """Pause before another inline try when the error is transient and the `left` seconds allow it."""
        if not (error.retryable and retry_inline):
            return False
        # Feishu's reset is in whole seconds, so "0" (under a second left) comes too: never less than the
        # backoff, or a run of them would hammer Feishu thousands of times within one webhook's deadline.
        pause = max(error.retry_after or 0.0, INLINE_BACKOFF * 2 ** (attempts - 1))
        if pause >= left:
            return False
        self.sleep(pause)
        return True

    def _look_up_again(self, email: str, budget: float, deadline: float, retry_inline: bool) -> str | None:
        self.feishu.forget_open_id(email)
        try:
            return self.feishu.resolve_open_ids([email], budget=budget,
                                                before_lookup=self._lookup_turns(deadline, retry_inline))[email]
        except FeishuError:
            return None

    def _send(self, row: Delivery, open_id: str, budget: float) -> str | None:
        """One HTTP attempt: a DM through the app, or a post through the group's bot (no message id)."""
        if row.channel == "chat":
            # A bot has no uuid to make a second post harmless: a post under way is not cut off at the deadline
            # (the retry would show the card twice), but runs its course on a pool thread (deliver() sends chat
            # rows there), bounded by the client's own timeouts, which the row's lease outlasts (LEASE_SLACK).
            secret = self.chat_secret(row.recipient)
            self._posting.add(row.id)
            try:
                self.chats.post_card(row.recipient, secret, json.loads(row.content))
            finally:
                self._posting.discard(row.id)
            return None
        # A row addressed by email sends under the uuid of the open_id it resolved to, so a person whom
        # owners.json or users.json names once by email and once by open_id gets the card once.
        uuid = row.uuid if is_open_id(row.recipient) else feishu_uuid(row.event_key, "dm", open_id)
        return self.feishu.send_card(open_id, row.content, uuid, budget=budget)

    def _record_failure(self, row: Delivery, error: FeishuError | str, *, attempts: int) -> Outcome:
        """Mark a row failed for good, or queue it for the retry worker."""
        if isinstance(error, str) or not error.retryable:
            return self._fail(row, error, str(error), attempts)
        now = self.clock()
        give_up_at = row.give_up_at
        if now >= give_up_at:
            if now - row.next_attempt_at <= 2 * MAX_BACKOFF:
                return self._fail(row, error, f"gave up after retrying until the retry window closed; "
                                              f"last error: {error}", attempts)
            # Overdue far beyond any backoff when its window closed: this service was stopped or asleep (a VM
            # resumed), and its first try since may meet a network not up yet. The window reopens for the
            # longest backoff, kept in the row, so a round that only waits for a turn does not use it up.
            give_up_at = now + MAX_BACKOFF
        next_at = now + backoff(row.rounds + 1, self.retry_base) if attempts else now
        if error.retry_after is not None:       # Feishu's rate-limit reset, at most the longest backoff
            # A quota's reset is believed as far as the pacer's hold believes it (Feishu's longest window is a
            # minute): a reset of 3600 must not keep this card back for ten minutes while every other card under
            # the same quota goes after the hold.
            cap = MAX_HOLD if error.rate_limited else MAX_BACKOFF
            next_at = max(next_at, now + min(error.retry_after, cap))
        next_at = min(next_at, give_up_at)          # one last try as the window closes
        self.outbox.finish(row.id, QUEUED, attempts=attempts, error=str(error), next_attempt_at=next_at,
                           give_up_at=give_up_at if give_up_at != row.give_up_at else None)
        if next_at <= now:
            self.on_due()
        log.warning("delivery to %s for %s queued for retry in %.3g s: %s", shown(row), row.event_key,
                    next_at - now, error)
        return Outcome(QUEUED, str(error))

    def _fail(self, row: Delivery, error: FeishuError | str, message: str, attempts: int) -> Outcome:
        self.outbox.finish(row.id, FAILED, attempts=attempts, error=message)
        log.error("delivery to %s for %s failed for good: %s", shown(row), row.event_key, message)
        self.on_failed(row, error)
        return Outcome(FAILED, message)
