"""Feishu Open Platform client: tenant token, email -> open_id lookup, card DMs.

HTTP only. Retrying, queueing and pacing belong to the callers; this module
says, through `FeishuError.retryable` (feishu_errors.py), whether a retry can help.
"""
from __future__ import annotations

import enum
import hashlib
import json
import logging
import time
from typing import Callable, Iterable, Literal

import requests

from . import cutoff
from .cutoff import CUTOFF
from .feishu_errors import TOKEN_INVALID, FeishuError, code_error, logged, no_answer_error, status_error
from .shared_cache import SharedCache
from .tenant_token import TenantToken

log = logging.getLogger(__name__)

UNKNOWN_EMAIL = "not found in Feishu or outside the app's contact scope"
LOOKUP_CHUNK = 50                                   # batch_get_id takes at most 50 emails

class NotCached(enum.Enum):
    """Answer of `cached_open_id` when only a lookup can tell."""
    NOT_CACHED = "not cached"


NOT_CACHED = NotCached.NOT_CACHED


class FeishuClient:
    """Thread-safe client for one Feishu (or Lark) custom app."""

    def __init__(self, base_url: str, app_id: str, app_secret: str, *, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic, connect_timeout: float = 3.05, read_timeout: float = 10.0,
                 open_id_ttl: float = 6 * 3600, unknown_ttl: float = 300, shared: SharedCache | None = None):
        self._base_url = base_url.rstrip("/")
        self._app_id = app_id
        self._app_secret = app_secret
        self._session = session or _pooled_session(self._base_url)
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._open_id_ttl = open_id_ttl
        self._unknown_ttl = unknown_ttl
        self._open_ids: dict[str, tuple[str | None, float]] = {}  # email.lower() -> (open_id or None, expires at)
        self._shared = shared          # the same answers, for the other processes
        # Shared answers belong to one app on one platform (open_ids differ per app); the secret's
        # digest in the token's key: after a change of FEISHU_APP_SECRET no process uses the old token.
        self._scope = f"{self._base_url}|{app_id}"
        digest = hashlib.sha256(app_secret.encode("utf-8")).hexdigest()[:16]
        self._token = TenantToken(self._request_token, clock=clock, remaining=self._remaining, shared=shared,
                                  key=f"token:{self._scope}:{digest}",
                                  on_answer=lambda error: self.on_token_answer(error))
        self._urls: dict[tuple[str, tuple], str] = {}   # (path, params) -> URL, encoded once
        # Told what every token fetch got (None: a token, this process's or another's), so the self-check sees
        # a secret reset in the console, and that it works again in every process.
        self.on_token_answer: Callable[[FeishuError | None], None] = lambda error: None

    def __repr__(self) -> str:
        return f"FeishuClient({self._base_url!r}, app_id={self._app_id!r})"

    def tenant_token(self, budget: float | None = None) -> str:
        """The cached tenant_access_token, fetched once (for all threads) when missing or near expiry."""
        return self._token.get(self._deadline(budget))

    def cached_open_id(self, email: str) -> str | None | Literal[NotCached.NOT_CACHED]:
        """The cached open_id, None if cached as unknown to Feishu, or NOT_CACHED; never calls Feishu."""
        open_id, expires_at = self._open_ids.get(email.lower(), (None, 0.0))
        return open_id if self._clock() < expires_at else NOT_CACHED

    def forget_open_id(self, email: str) -> None:
        """Drop what is cached for `email` (Feishu refused the open_id, or it may know the email now)."""
        open_id, _ = self._open_ids.pop(email.lower(), (None, 0.0))
        if self._shared:
            self._shared.forget(self._open_id_key(email), open_id)

    def check_credentials(self, budget: float | None = None) -> str:
        """Fetch a tenant token from Feishu whatever is cached, unless a process of this app (the same id and
        secret) fetched one within the last minute: workers starting a moment apart mostly ask once. Says
        which; a FeishuError says what is wrong."""
        return self._token.check(self._deadline(budget))

    def resolve_open_ids(self, emails: Iterable[str], budget: float | None = None, *, recheck_unknown: bool = False,
                         before_lookup: Callable[[], None] | None = None) -> dict[str, str | None]:
        """Map each email to its open_id, or None when Feishu does not know it (see UNKNOWN_EMAIL).

        `recheck_unknown` asks Feishu again about emails cached as unknown (a retry after someone
        fixed the account: `--retry-failed`). `before_lookup` is called before each call to Feishu (a turn under
        the lookup quota), never when this process's or the shared cache answers every email.
        """
        deadline = self._deadline(budget)
        emails = list(emails)
        if recheck_unknown:
            for email in emails:
                if self.cached_open_id(email) is None:
                    self.forget_open_id(email)
        missing = list({e.lower(): e for e in emails if self.cached_open_id(e) is NOT_CACHED}.values())
        if missing and self._shared:
            now = self._clock()
            by_key = {self._open_id_key(e): e.lower() for e in missing}
            for key, (open_id, left) in self._shared.get(by_key).items():
                if open_id or not recheck_unknown:
                    self._open_ids[by_key[key]] = (open_id, now + left)
            missing = [e for e in missing if self.cached_open_id(e) is NOT_CACHED]
        for start in range(0, len(missing), LOOKUP_CHUNK):
            if before_lookup is not None:
                before_lookup()
            self._look_up(missing[start:start + LOOKUP_CHUNK], deadline)
        return {e: self._open_ids[e.lower()][0] for e in emails}

    def send_card(self, open_id: str, content: str, uuid: str, budget: float | None = None) -> str:
        """DM an interactive card (`content` is the card JSON as a string); returns Feishu's message_id."""
        body = {"receive_id": open_id, "msg_type": "interactive", "content": content, "uuid": uuid}
        payload = self._authed_post("sending the card", "/open-apis/im/v1/messages", body,
                                    self._deadline(budget), {"receive_id_type": "open_id"})
        message_id = (payload.get("data") or {}).get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise self._unexpected("sending the card", "no message_id in Feishu's answer")
        return message_id

    def _look_up(self, emails: list[str], deadline: float | None) -> None:
        body = {"emails": emails, "include_resigned": False}
        payload = self._authed_post("looking up open_ids by email", "/open-apis/contact/v3/users/batch_get_id",
                                    body, deadline, {"user_id_type": "open_id"})
        found = {item["email"].lower(): item["user_id"]
                 for item in (payload.get("data") or {}).get("user_list") or []
                 if isinstance(item, dict) and item.get("email") and item.get("user_id")}
        now = self._clock()
        learned = {}
        for email in emails:
            open_id = found.get(email.lower())
            ttl = self._open_id_ttl if open_id else self._unknown_ttl
            self._open_ids[email.lower()] = (open_id, now + ttl)
            learned[self._open_id_key(email)] = (open_id, ttl)
        if self._shared:
            self._shared.put(learned)

    def _open_id_key(self, email: str) -> str:
        return f"open_id:{self._scope}:{email.lower()}"

    def _request_token(self, deadline: float | None) -> tuple[str, float]:
        what = "getting a tenant_access_token"
        payload = self._post(what, "/open-apis/auth/v3/tenant_access_token/internal",
                             {"app_id": self._app_id, "app_secret": self._app_secret}, deadline)
        token, expire = payload.get("tenant_access_token"), payload.get("expire")
        if not isinstance(token, str) or not token or not isinstance(expire, (int, float)):
            raise self._unexpected(what, "no tenant_access_token or expire in Feishu's answer")
        return token, expire

    def _authed_post(self, what: str, path: str, body: dict, deadline: float | None, params: dict) -> dict:
        token = self._token.get(deadline)
        try:
            return self._post(what, path, body, deadline, params=params, token=token)
        except FeishuError as exc:
            if exc.code not in TOKEN_INVALID:
                raise
        self._token.forget(token)
        return self._post(what, path, body, deadline, params=params, token=self._token.get(deadline))

    def _post(self, what: str, path: str, body: dict, deadline: float | None, *,
              params: dict | None = None, token: str = "") -> dict:
        remaining = self._remaining(deadline, what)
        timeout = (self._connect_timeout, self._read_timeout) if remaining is None else \
            (min(self._connect_timeout, remaining), min(self._read_timeout, remaining))
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = requests.PreparedRequest()
        request.prepare_method("POST")
        request.url = self._url(path, params)
        request.prepare_headers(headers)
        # ensure_ascii=False: Chinese stays 3 bytes a character instead of a 6-byte \u escape.
        request.prepare_body(json.dumps(body, ensure_ascii=False).encode("utf-8"), None)
        may_have = " (it may have gone through: retry with the same uuid)" if "uuid" in body else ""
        failure = None
        started = self._clock()
        with CUTOFF.after(remaining) as call:
            try:
                # Straight to the session's adapter: no cookies, redirects or hooks to merge on every call
                # (a quarter of requests' cost per card); the proxies were read when the session was made.
                rsp = self._session.get_adapter(request.url).send(request, timeout=timeout,
                                                                  proxies=self._session.proxies,
                                                                  verify=self._session.verify)
                rsp.content           # the whole answer, inside the cutoff
            except requests.RequestException as exc:
                failure = exc
        error = no_answer_error(what, failure, cut=call.cut, may_have=may_have)
        if error:
            raise error
        try:
            payload = rsp.json()
        except ValueError:
            payload = None
        code = payload.get("code") if isinstance(payload, dict) else None
        log.debug("%s: HTTP %s, code %s, %.0f ms, log id %s", what, rsp.status_code, code,
                  (self._clock() - started) * 1000, rsp.headers.get("x-tt-logid", "-"))
        if code == 0 and rsp.ok:
            return payload
        if not isinstance(code, int) or code == 0:
            raise logged(status_error(what, rsp))
        raise logged(code_error(what, rsp, payload))

    def _url(self, path: str, params: dict | None) -> str:
        # Parsing and encoding a URL is a tenth of a card's CPU in requests; the endpoints are few.
        key = (path, tuple(sorted((params or {}).items())))
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = requests.Request("POST", self._base_url + path, params=params).prepare().url
        return url

    def _deadline(self, budget: float | None) -> float | None:
        return None if budget is None else self._clock() + budget

    def _remaining(self, deadline: float | None, what: str) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise FeishuError(f"{what}: no time left before the deadline", retryable=True)
        return remaining

    @staticmethod
    def _unexpected(what: str, detail: str) -> FeishuError:
        # A 2xx we cannot read may still mean success; a retry is safe because sends carry a uuid.
        return logged(FeishuError(f"{what}: {detail}", retryable=True,
                                   hint="retry later; if it persists, check FEISHU_BASE_URL"))


def _pooled_session(base_url: str) -> requests.Session:
    session = cutoff.session(pool_maxsize=64)       # many delivery threads share it
    # What requests takes from the environment for Feishu's URL (HTTPS_PROXY and NO_PROXY; the CA bundle in
    # REQUESTS_CA_BUNDLE, for a network that re-signs HTTPS), asked of requests once: it would otherwise
    # walk the whole environment on every call, about a millisecond of CPU a card.
    found = session.merge_environment_settings(base_url, {}, None, None, None)
    session.trust_env = False
    session.proxies.update(found["proxies"])
    session.verify = found["verify"]
    return session
