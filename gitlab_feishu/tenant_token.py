"""The tenant_access_token of one app: one fetch for every thread (and, through DATA_DIR, every process),
refreshed before it ends, and a failed fetch shared with the threads that waited for it."""
from __future__ import annotations

import copy
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from .feishu_errors import FeishuError
from .pacing import MAX_HOLD
from .shared_cache import SharedCache

WHAT = "getting a tenant_access_token"
TOKEN_MIN_LEFT = 60.0          # a shared token with less left is fetched afresh
CHECK_SHARED_FOR = 60.0        # seconds a token fetch also answers other processes' checks


class TenantToken:
    """Thread-safe. `fetch(deadline)` asks Feishu: (token, seconds it lives) or a FeishuError; `remaining(deadline,
    what)` is the time left before a deadline (None: no deadline), raising when there is none."""

    def __init__(self, fetch: Callable[[float | None], tuple[str, float]], *, clock: Callable[[], float],
                 remaining: Callable[[float | None, str], float | None], shared: SharedCache | None, key: str,
                 on_answer: Callable[[FeishuError | None], None]):
        self._fetch_from_feishu = fetch
        self._clock = clock
        self._remaining = remaining
        self._shared = shared
        self._key = key
        self._checked_key = "checked:" + key
        self._on_answer = on_answer    # told what every fetch got (None: a token, this process's or another's)
        self._token: tuple[str, float] = ("", 0.0)  # (token, refresh at); replaced whole, so reads need no lock
        self._lock = threading.Lock()
        self._fetches = 0              # fetches ended, so a thread that waited for one knows whether it failed
        self._failure: tuple[FeishuError, float] | None = None      # the last fetch's error, refused until

    def get(self, deadline: float | None) -> str:
        """The cached token, fetched once (for all threads) when missing or near expiry."""
        token, refresh_at = self._token
        if token and self._clock() < refresh_at:
            return token
        # Holding the lock through the HTTP call makes concurrent cold callers share one token request, and its
        # failure: a token endpoint refusing for a quota was otherwise asked again by every waiting thread.
        fetches = self._fetches
        with self._turn(deadline):
            token, refresh_at = self._token
            if token and self._clock() < refresh_at:
                return token
            if self._shared:
                token, left = self._shared.get([self._key]).get(self._key, ("", 0.0))
                if token and left > TOKEN_MIN_LEFT:
                    self._keep(token, left)
                    self._on_answer(None)          # another process of this app id and secret got it
                    return token
            if self._failure is not None:
                self._share_failure(*self._failure, waited=self._fetches != fetches)
            return self._fetch(deadline)

    def check(self, deadline: float | None) -> str:
        """Fetch a token from Feishu whatever is cached, unless a process of this app (the same id and secret)
        fetched one within CHECK_SHARED_FOR: workers starting a moment apart mostly ask once. Says which; a
        FeishuError says what is wrong."""
        with self._turn(deadline):
            checked = self._shared.get([self._checked_key]) if self._shared else {}
            if checked and checked[self._checked_key][0] != str(os.getpid()):
                return "tenant token fetched by another process moments ago"
            self._fetch(deadline)
            return "tenant token fetched"

    def forget(self, stale: str) -> None:
        """Feishu refused `stale`: the next caller fetches a new one (unless another thread did already)."""
        with self._lock:
            if self._token[0] == stale:
                self._token = ("", 0.0)
            if self._shared:
                self._shared.forget(self._key, stale)

    def _share_failure(self, error: FeishuError, refused_until: float, *, waited: bool) -> None:
        """Raise the last fetch's error to a thread that waited for it, or while Feishu's quota reset lasts."""
        left = refused_until - self._clock()
        if waited or left > 0:
            shared = copy.copy(error)
            shared.retry_after = max(left, 0.0) if error.rate_limited else error.retry_after
            raise shared

    @contextmanager
    def _turn(self, deadline: float | None) -> Iterator[None]:
        remaining = self._remaining(deadline, WHAT)
        if not self._lock.acquire(timeout=-1 if remaining is None else remaining):
            raise FeishuError(f"{WHAT}: no time left before the deadline", retryable=True)
        try:
            yield
        finally:
            self._lock.release()

    def _fetch(self, deadline: float | None) -> str:
        self._failure = None
        try:
            token, expire = self._fetch_from_feishu(deadline)
        except FeishuError as exc:
            # Only Feishu's own answer is shared: a timeout or "no time left" came of this caller's deadline, and
            # a waiting caller may have more time. A quota's reset is believed as far as the pacer believes it.
            if exc.http_status is not None:
                hold = min(exc.retry_after or 0.0, MAX_HOLD) if exc.rate_limited else 0.0
                self._failure = (exc, self._clock() + hold)
            self._on_answer(exc)
            raise
        finally:
            self._fetches += 1
        self._on_answer(None)
        self._keep(token, expire)
        if self._shared:
            self._shared.put({self._key: (token, expire), self._checked_key: (str(os.getpid()), CHECK_SHARED_FOR)})
        return token

    def _keep(self, token: str, expire: float) -> None:
        # `expire` is the token's remaining lifetime; refresh a little before it ends.
        self._token = (token, self._clock() + expire - min(300.0, expire / 2))
