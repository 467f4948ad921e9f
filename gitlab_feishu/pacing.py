"""Pacing: keep every process's sends inside Feishu's quotas instead of hitting them and backing off.

Feishu allows an app 50 messages a second and 1,000 a minute (and as many email
lookups), one user 5 a second, and a group's custom bot 5 a second and 100 a minute. A sliding log of
recent sends, shared through SQLite by every process using the same DATA_DIR,
gives each send a turn only when all its windows have room. The windows are a
quarter of a second wider than Feishu's: a send may reach Feishu that much later
than it took its turn (a loaded host, network jitter) without tipping a burst
over the limit; with 0.1 s, a strict stand-in refused 2 of 1,100 cards.

When Feishu refuses a send for a quota all the same (another program using the same app, a user's other
bots), every send under that quota waits out Feishu's reset, not only the refused one.
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cutoff import Countdown
from .db import HELPER_LOCK_WAIT, HelperDatabase

log = logging.getLogger(__name__)

Window = tuple[int, float]               # at most `count` sends in any `seconds`

APP_MESSAGES: tuple[Window, ...] = ((50, 1.25), (1000, 62.0))
ONE_USER: tuple[Window, ...] = ((5, 1.25),)
ONE_BOT: tuple[Window, ...] = ((5, 1.25), (100, 62.0))
LOOKUPS: tuple[Window, ...] = ((50, 1.25), (1000, 62.0))     # batch_get_id has the app's own 50/s and 1,000/min
LOG_SECONDS = 62.0                       # the longest window: older entries are forgotten
# Entries stamped later than this past now are from before the clock was stepped back (NTP): counting
# them would hold every send back by the size of the step, an hour for an hour. A write waiting for the
# lock may log a send a few milliseconds ahead of another's `now`: that is well inside the slack.
CLOCK_SLACK = 1.0
MIN_HOLD = 1.0                           # Feishu's reset is in whole seconds: "0" is under one
MAX_HOLD = LOG_SECONDS                   # its longest window: a longer reset (a lie, a proxy's) is not believed


@dataclass(frozen=True)
class Quota:
    key: str
    windows: tuple[Window, ...]


def dm_quotas(open_id: str) -> list[Quota]:
    return [Quota("app", APP_MESSAGES), Quota(f"user:{open_id}", ONE_USER)]


def refused_quota(quotas: list[Quota], *, one_user: bool) -> Quota:
    """The quota Feishu refused a send for: one user's 5 a second (`one_user`), otherwise the app's or the
    group bot's."""
    return next(q for q in quotas if q.key.startswith("user:") is one_user)


def lookup_quotas() -> list[Quota]:
    return [Quota("lookup", LOOKUPS)]


def bot_quotas(webhook_url: str) -> list[Quota]:
    # The URL is a credential: the log keeps only a digest of it.
    return [Quota("bot:" + hashlib.sha256(webhook_url.encode("utf-8")).hexdigest()[:16], ONE_BOT)]


class Pacer:
    """A cross-process sliding-window limiter: `wait_turn` blocks until a send fits every quota (or its
    deadline)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.path = Path(path)
        self.clock = clock
        self.sleep = sleep
        # A pacing log that cannot be used lets each send go without a turn: better an occasional 429,
        # which is retried, than no card.
        self._db = HelperDatabase(self.path, (
            "CREATE TABLE IF NOT EXISTS sends (key TEXT NOT NULL, at REAL NOT NULL)",
            "CREATE INDEX IF NOT EXISTS sends_key_at ON sends (key, at)",
            "CREATE TABLE IF NOT EXISTS holds (key TEXT PRIMARY KEY, until REAL NOT NULL)"),
            log=log, meanwhile="sending without pacing meanwhile")

    def wait_turn(self, quotas: list[Quota], deadline: float) -> float:
        """Take a turn for one send under every quota, waiting until `deadline` at most. Returns 0.0 when a
        turn was taken, otherwise the seconds until one may be free, for the caller to come back then rather
        than at once. A pacing log that cannot be used (another program's lock, a damaged file) lets the send
        go without a turn."""
        countdown = Countdown(deadline, self.clock)
        while True:
            lock_wait = max(min(HELPER_LOCK_WAIT, countdown.left()), 0.0)
            wait = self._db.use(lambda: self.try_turn(quotas, lock_wait=lock_wait), 0.0)
            if wait == 0:
                return 0.0
            # A little jitter so the processes waiting on one window do not all wake together.
            wait += random.uniform(0, 0.02)
            if wait > countdown.left():
                return wait
            self.sleep(wait)

    def try_turn(self, quotas: list[Quota], *, lock_wait: float = HELPER_LOCK_WAIT) -> float:
        """Take a turn now and return 0, or return how long until one may be free."""
        now = self.clock()
        with self._db.write(timeout=lock_wait) as conn:
            wait = 0.0
            for quota in quotas:
                # Sends stamped ahead of now were made before the clock was stepped back: they count as made
                # now (ignored, a burst could go past Feishu's quota; as stamped, they would hold turns back by
                # the size of the step).
                conn.execute("UPDATE sends SET at = ? WHERE key = ? AND at > ?", (now, quota.key, now + CLOCK_SLACK))
                [until] = conn.execute("SELECT until FROM holds WHERE key = ? AND until <= ?",
                                       (quota.key, now + LOG_SECONDS + CLOCK_SLACK)).fetchone() or [now]
                wait = max(wait, until - now)
                for count, seconds in quota.windows:
                    rows = conn.execute("SELECT at FROM sends WHERE key = ? AND at > ? AND at <= ?"
                                        " ORDER BY at DESC LIMIT ?",
                                        (quota.key, now - seconds, now + CLOCK_SLACK, count)).fetchall()
                    if len(rows) >= count:
                        wait = max(wait, rows[-1][0] + seconds - now)
            if wait > 0:
                return wait
            conn.executemany("INSERT INTO sends (key, at) VALUES (?, ?)", [(q.key, now) for q in quotas])
            if random.random() < 0.01:
                conn.execute("DELETE FROM sends WHERE at < ?", (now - LOG_SECONDS,))
                conn.execute("DELETE FROM holds WHERE until < ?", (now,))
        return 0.0

    def hold(self, quota: Quota, seconds: float | None) -> None:
        """Feishu refused a send under `quota`: no send under it takes a turn, in any process, for `seconds`
        (Feishu's reset; at least a second, at most the longest window)."""
        now = self.clock()
        until = now + min(max(seconds or 0.0, MIN_HOLD), MAX_HOLD)

        def write() -> None:
            with self._db.write() as conn:
                # A longer hold stays; one from before the clock was stepped back does not.
                conn.execute("INSERT OR IGNORE INTO holds (key, until) VALUES (?, ?)", (quota.key, until))
                conn.execute("UPDATE holds SET until = CASE WHEN until > ? THEN ? ELSE max(until, ?) END"
                             " WHERE key = ?", (now + LOG_SECONDS, until, until, quota.key))
        self._db.use(write, None)
