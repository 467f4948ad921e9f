"""A fake Feishu (Lark) Open Platform: a real HTTP server on 127.0.0.1 for end-to-end tests and the benchmark.

It is strict on purpose: documented codes, HTTP statuses and headers, bearer tokens, query parameters,
card JSON 2.0 and (when asked) the quotas, so a bug in our client shows up here rather than in production.
Other processes drive it through GET /_fake/state and POST /_fake/control, or run it as
`python -m tests.fake_feishu --port N [--rtt 0.05] [--quotas] [--auto-users]`.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import math
import secrets
import socket
import socketserver
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

from tests.card_schema import CardError, validate_card

CARD_LIMIT = 30 * 1024      # UTF-8 bytes of a message's `content` string (230025)
BOT_BODY_LIMIT = 20 * 1024  # bytes of a group-bot request body
UUID_TTL = 3600             # Feishu sends at most one message per uuid per hour
REISSUE_BELOW = 1800        # a token with less than 30 min left is replaced by a new one
KINDS = ("token", "batch_get_id", "send", "bot", "other")
DELIVERY_KINDS = ("send", "bot")
APP_QUOTA_KINDS = ("send", "batch_get_id")  # 50/s and 1000/min per app, each
RATE_LIMIT_CODES = frozenset({99991400, 230020, 11232})
RECEIVE_ID_TYPES = frozenset({"open_id", "union_id", "user_id", "email", "chat_id"})


class Refusal(Exception):
    """Feishu refusing a request: its code (None for a gateway page), message, HTTP status and headers."""

    def __init__(self, code: int | None, msg: str = "", status: int = 400, headers: dict | None = None,
                 *, plain: bool = False, error: dict | None = None):
        super().__init__(msg)
        self.code, self.msg, self.status, self.headers = code, msg, status, headers or {}
        self.plain, self.error = plain, error or {}  # plain: the body is exactly {"code", "msg"}


def field_error(field: str, description: str) -> Refusal:
    return Refusal(99992402, "field validation failed",
                   error={"field_violations": [{"field": field, "description": description}]})


def invalid_param(detail: str) -> Refusal:
    return Refusal(230001, f"Your request contains an invalid request parameter, ext={detail}.")


def require(ok, detail: str, sub_code: int = 200621) -> None:
    """Refuse a card the way Feishu does (230099, the card error's own code in `msg`) unless `ok`."""
    if not ok:
        raise Refusal(230099, f"Failed to create card content, ext=ErrCode: {sub_code}; ErrMsg: {detail};")


def gen_sign(timestamp: int | str, secret: str) -> str:
    """A group custom bot's signature: HMAC-SHA256 keyed with "timestamp\nsecret" over nothing, base64."""
    key = f"{timestamp}\n{secret}".encode("utf-8")
    return base64.b64encode(hmac.new(key, b"", digestmod=hashlib.sha256).digest()).decode()


def check_card(card: dict) -> None:
    """Refuse what Feishu refuses in a card: JSON 2.0 strictly (card_schema.py), the legacy 1.0 loosely."""
    if card.get("schema", "1.0") == "1.0":
        check_card_v1(card)
        return
    try:
        validate_card(card)
    except CardError as exc:
        require(False, str(exc), exc.sub_code)


def check_card_v1(card: dict) -> None:
    """Card JSON 1.0 ignores unknown properties and still takes `action` and `note`; it needs elements."""
    elements = card.get("elements", card.get("i18n_elements"))
    require(isinstance(elements, (list, dict)), "a 1.0 card needs elements (or i18n_elements)")
    if "header" in card:
        require(isinstance(card["header"], dict), "header must be an object")
        title = card["header"].get("title")
        require(isinstance(title, dict) and title.get("tag") in ("plain_text", "lark_md")
                and isinstance(title.get("content"), str), "header.title must be {tag: plain_text|lark_md, content: str}")


class RateWindow:
    """A sliding-window log: at most `limit` events in any `span` seconds (memory bounded by `limit`)."""

    def __init__(self, limit: int, span: float):
        self.limit, self.span, self._times = limit, span, deque()

    def wait(self, now: float) -> float:
        """Seconds until one more event fits (0.0 when it fits now)."""
        while self._times and self._times[0] <= now - self.span:
            self._times.popleft()
        return self._times[0] + self.span - now if len(self._times) >= self.limit else 0.0

    def record(self, now: float) -> None:
        self._times.append(now)


class Request:
    """One HTTP request as the endpoints see it."""

    def __init__(self, method: str, target: str, headers, body: bytes, received_at: float | None = None):
        split = urlsplit(target)
        self.method, self.path, self.query = method, split.path, dict(parse_qsl(split.query))
        self.headers, self.body = headers, body
        self.received_at = time.monotonic() if received_at is None else received_at
        self.kind = ""            # which endpoint it reached (KINDS), once routed

    def json(self) -> dict:
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            raise Refusal(9499, "Bad Request: Content-Type must be application/json; charset=utf-8")
        try:
            body = json.loads(self.body.decode("utf-8"))
        except (ValueError, RecursionError):
            raise Refusal(9499, "Bad Request: fail to parse the body as UTF-8 JSON") from None
        if not isinstance(body, dict):
            raise Refusal(9499, "Bad Request: the body must be a JSON object")
        return body


class FakeFeishu:
    """The fake platform: state, fault injection and the endpoints; start() serves it over HTTP."""

    def __init__(self, *, app_id: str = "cli_test_app", app_secret: str = "test-secret", rtt: float = 0.0,
                 quotas: bool = False, token_ttl: int = 7200, host: str = "127.0.0.1", port: int = 0,
                 auto_users: bool = False, clock: Callable[[], float] = time.time):
        self.app_id, self.app_secret, self.token_ttl = app_id, app_secret, token_ttl
        self.host, self.port, self.quotas, self.url = host, port, quotas, ""
        self._rtt, self._auto_users, self._clock = rtt, auto_users, clock
        self._lock = threading.Lock()
        self._log_ids = itertools.count()
        self._users: dict[str, dict] = {}        # open_id -> {"email", "available", "chat_id"}
        self._by_email: dict[str, str] = {}      # lower-cased email -> open_id
        self._by_chat: dict[str, str] = {}       # p2p chat_id -> open_id
        self._bots: dict[str, str | None] = {}   # webhook token -> signing secret
        self._tokens: dict[str, float] = {}      # token -> expiry
        self._current_token: str | None = None
        self._server: _Server | None = None
        self._answering = 0
        # Contents already checked: a card's verdict depends on its content alone, and checking the same card
        # again on every send was a fifth of the fake's CPU in the benchmark, on cores the servers share.
        self._valid_cards: set[str] = set()
        self.reset()

    def start(self) -> "FakeFeishu":
        self._server = _Server((self.host, self.port), _Handler)
        self._server.fake = self
        self.url = f"http://{self.host}:{self._server.server_address[1]}"
        # A short poll interval keeps stop() fast; the accept loop itself is select()-driven.
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None

    def __enter__(self) -> "FakeFeishu":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_user(self, email: str, open_id: str | None = None, *, available: bool = True) -> str:
        """Add a directory entry; return its open_id. Sends to an unavailable user fail with 230013."""
        open_id = open_id or "ou_" + secrets.token_hex(16)
        chat_id = "oc_" + hashlib.md5(open_id.encode()).hexdigest()
        with self._lock:
            self._users[open_id] = {"email": email, "available": available, "chat_id": chat_id}
            self._by_email[email.lower()] = open_id
            self._by_chat[chat_id] = open_id
        return open_id

    def add_bot(self, token: str, secret: str | None = None) -> str:
        """Add a group custom-bot webhook (signed when `secret` is given); return its URL."""
        if not self.url:
            raise RuntimeError("start() the fake before adding bots: their URL names its port")
        with self._lock:
            self._bots[token] = secret
        return f"{self.url}/open-apis/bot/v2/hook/{token}"

    def _copy(self, name: str) -> list[dict]:
        # Cards are kept as the JSON text that came in and parsed when asked for: a long benchmark
        # run would otherwise fill the heap with tracked objects, and the fake's own garbage
        # collections would show up as latency.
        with self._lock:
            records = list(getattr(self, name))
        return [{**record, "card": json.loads(record["content"])} if "content" in record else record
                for record in records]

    messages = property(lambda self: self._copy("_messages"), doc="Every DM created, oldest first.")
    bot_messages = property(lambda self: self._copy("_bot_messages"), doc="Every group-bot post accepted.")
    requests = property(lambda self: self._copy("_requests"), doc="Every API request received (not /_fake/*).")
    refused = property(lambda self: self._refused, doc="Requests answered with an error, of any kind.")
    rate_limited = property(lambda self: self._rate_limited, doc="Requests refused by a quota.")

    def calls(self, kind: str) -> int:
        return self._counts[kind]

    def state(self, *, summary: bool = False) -> dict:
        """What /_fake/state answers: every card delivered (DMs and group posts, in order) and the counters.

        With `summary` (/_fake/state?summary=1) only the counters and how many cards were delivered.
        """
        with self._lock:
            if summary:
                return {"delivered": len(self._messages) + len(self._bot_messages),
                        "counts": {kind: self._counts[kind] for kind in KINDS},
                        "refused": self._refused, "rate_limited": self._rate_limited}
            dms = [{"card": json.loads(m["content"]), "to_email": m["to_email"], "to_chat": None, "uuid": m["uuid"],
                    "receive_id": m["receive_id"], "message_id": m["message_id"], "at": m["at"]}
                   for m in self._messages]
            posts = [{"card": json.loads(b["content"]), "to_email": None, "to_chat": b["token"], "uuid": None,
                      "receive_id": None, "at": b["at"]} for b in self._bot_messages]
            return {"messages": sorted(dms + posts, key=lambda m: m["at"]),
                    "counts": {kind: self._counts[kind] for kind in KINDS},
                    "refused": self._refused, "rate_limited": self._rate_limited}

    def fail_next(self, kind: str, *, status: int, code: int | None = None, times: int = 1,
                  headers: dict | None = None, msg: str = "") -> None:
        """Answer the next `times` requests of `kind` with this instead of processing them."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        with self._lock:
            self._faults[kind].append([Refusal(code, msg, status, headers, plain=True), times])

    def trickle(self, kind: str, seconds: float | None) -> None:
        """Answers to `kind` come a few bytes at a time over `seconds`: each read is quick, so no socket
        timeout fires, yet the whole answer takes that long (a slow link, or a proxy feeding it slowly)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self._trickles[kind] = seconds or 0.0

    def trickle_seconds(self, kind: str) -> float:
        return self._trickles.get(kind, 0.0)

    def hang_sends(self, seconds: float | None) -> None:
        """Deliveries sleep this long, then are processed anyway (a client's read timeout posts nothing back)."""
        self._hang = seconds or 0.0

    def set_down(self, down: bool) -> None:
        """While down, every delivery answers a gateway 503 page and creates nothing."""
        self._down = down

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._current_token = None

    def set_rtt(self, seconds: float) -> None:
        self._rtt = seconds

    def set_auto_users(self, on: bool) -> None:
        """Resolve any email to a deterministic open_id (for the benchmark)."""
        self._auto_users = on

    def reset(self) -> None:
        """Forget messages, requests, counters, faults, uuids and quota windows; keep users, bots and tokens."""
        with self._lock:
            self._messages, self._bot_messages, self._requests = [], [], []
            self._counts, self._refused, self._rate_limited = Counter(), 0, 0
            self._faults = {kind: deque() for kind in KINDS}
            self._hang, self._down = 0.0, False
            self._trickles: dict[str, float] = {}
            self._uuids: OrderedDict[str, dict] = OrderedDict()
            self._app_windows = {kind: (RateWindow(50, 1), RateWindow(1000, 60)) for kind in APP_QUOTA_KINDS}
            self._user_windows: dict[str, RateWindow] = {}
            self._bot_windows: dict[str, tuple[RateWindow, RateWindow]] = {}

    def control(self, commands: dict) -> dict:
        """Apply /_fake/control commands: the same operations as the methods above."""
        if not isinstance(commands, dict):
            raise ValueError("the control body must be a JSON object")
        actions = {"add_user": lambda a: {"open_id": self.add_user(**a)},
                   "add_bot": lambda a: {"bot_url": self.add_bot(**a)},
                   "fail_next": lambda a: self.fail_next(**a), "hang_sends": self.hang_sends,
                   "trickle": lambda a: self.trickle(**a),
                   "down": lambda a: self.set_down(bool(a)), "rtt": lambda a: self.set_rtt(float(a)),
                   "revoke_tokens": lambda a: a and self.revoke_tokens(), "reset": lambda a: a and self.reset(),
                   "auto_users": lambda a: self.set_auto_users(bool(a))}
        result = {"ok": True}
        for name, argument in commands.items():
            if name not in actions:
                raise ValueError(f"unknown control {name!r}; known: {sorted(actions)}")
            result.update(actions[name](argument) or {})
        return result

    def answering(self) -> int:
        """How many API requests are being answered right now (a hung send counts until it is done)."""
        return self._answering

    def answer(self, req: Request) -> tuple[int, dict | bytes, dict]:
        """Answer one request: HTTP status, JSON payload (or a raw page) and headers."""
        with self._lock:
            self._answering += 1
        try:
            return self._answer(req)
        finally:
            with self._lock:
                self._answering -= 1

    def _answer(self, req: Request) -> tuple[int, dict | bytes, dict]:
        if req.path.startswith("/_fake/"):
            return self._answer_control(req)
        kind, endpoint = self._route(req)
        req.kind = kind
        log_id = time.strftime("%Y%m%d%H%M%S") + "%020X" % next(self._log_ids)
        try:
            self._inject_faults(kind)
            status, payload, headers = 200, endpoint(req), {}
        except Refusal as refusal:
            status, payload, headers = self._refusal_answer(kind, refusal, log_id)
        headers["X-Tt-Logid"] = log_id
        code = payload.get("code") if isinstance(payload, dict) else None
        with self._lock:
            self._requests.append({"method": req.method, "path": req.path, "query": req.query, "kind": kind,
                                   "status": status, "code": code, "at": self._clock()})
            self._counts[kind] += 1
            self._refused += status >= 400 or bool(code)
            self._rate_limited += status == 429 or code in RATE_LIMIT_CODES
        # The injected round trip includes the fake's own work, from the moment the request line
        # arrived: the fake adds no latency of its own.
        remaining = self._rtt - (time.monotonic() - req.received_at)
        if remaining > 0:
            time.sleep(remaining)
        return status, payload, headers

    def _answer_control(self, req: Request) -> tuple[int, dict, dict]:
        if (req.method, req.path) == ("GET", "/_fake/state"):
            return 200, self.state(summary=req.query.get("summary") == "1"), {}
        if (req.method, req.path) == ("POST", "/_fake/control"):
            try:
                return 200, self.control(json.loads(req.body or b"{}")), {}
            except (ValueError, TypeError) as exc:
                return 400, {"error": str(exc)}, {}
        return 404, {"error": "the fake serves GET /_fake/state and POST /_fake/control"}, {}

    def _route(self, req: Request) -> tuple[str, Callable[[Request], dict]]:
        routes = {"/open-apis/auth/v3/tenant_access_token/internal": ("token", self._issue_token),
                  "/open-apis/contact/v3/users/batch_get_id": ("batch_get_id", self._batch_get_id),
                  "/open-apis/im/v1/messages": ("send", self._send_message)}
        kind, endpoint = routes.get(req.path, ("other", None))
        if req.path.startswith("/open-apis/bot/v2/hook/"):
            kind, endpoint = "bot", self._post_to_bot
        if endpoint is None or req.method != "POST":
            return kind, _not_found
        return kind, endpoint

    def _inject_faults(self, kind: str) -> None:
        with self._lock:
            queue = self._faults[kind]
            if queue:
                fault = queue[0]
                fault[1] -= 1
                if fault[1] <= 0:
                    queue.popleft()
                raise fault[0]
        if self._down and kind in DELIVERY_KINDS:
            raise Refusal(None, status=503)

    @staticmethod
    def _refusal_answer(kind: str, refusal: Refusal, log_id: str) -> tuple[int, dict | bytes, dict]:
        if refusal.code is None:  # a gateway's HTML page, no Feishu code
            phrase = BaseHTTPRequestHandler.responses.get(refusal.status, ("",))[0]
            return refusal.status, f"<html><body><h1>{refusal.status} {phrase}</h1></body></html>".encode(), \
                dict(refusal.headers)
        status, body = refusal.status, {"code": refusal.code, "msg": refusal.msg}
        if refusal.plain or kind == "token":
            pass
        elif kind == "bot":  # group bots answer HTTP 200 and say what went wrong in `code`
            status, body["data"] = 200, {}
        else:
            body["error"] = {"log_id": log_id, **refusal.error}
        return status, body, dict(refusal.headers)

    def _admit(self, windows, refusal: Callable[[RateWindow, float], Refusal]) -> None:
        now = self._clock()
        with self._lock:
            for window in windows:
                wait = window.wait(now)
                if wait:
                    raise refusal(window, wait)
            for window in windows:
                window.record(now)

    def _admit_app(self, kind: str) -> None:
        if self.quotas:
            self._admit(self._app_windows[kind], lambda window, wait: Refusal(
                99991400, "request trigger frequency limit", 429, plain=True,
                headers={"x-ogw-ratelimit-limit": str(window.limit),
                         "x-ogw-ratelimit-reset": str(max(1, math.ceil(wait)))}))

    def _authorize(self, req: Request) -> None:
        scheme, _, token = req.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token.strip():
            raise Refusal(99991661, "Missing access token for authorization. Please make a request with token "
                                    "attached.")
        if not token.startswith(("t-", "u-")):
            raise Refusal(99991671, "Invalid token format: a tenant_access_token starts with t-")
        expiry = self._tokens.get(token)
        if expiry is None or expiry <= self._clock():
            raise Refusal(99991663, "Invalid access token for authorization. Please make a request with token "
                                    "attached.")

    def _lookup(self, email: str) -> str | None:
        open_id = self._by_email.get(email.lower())
        if open_id is None and self._auto_users:
            open_id = self.add_user(email, "ou_" + hashlib.md5(email.lower().encode()).hexdigest())
        return open_id

    def _issue_token(self, req: Request) -> dict:
        body = req.json()
        if body.get("app_id") != self.app_id:
            raise Refusal(10003, "invalid param", status=200)
        if body.get("app_secret") != self.app_secret:
            raise Refusal(10014, "app secret invalid", status=200)
        now = self._clock()
        with self._lock:
            left = self._tokens.get(self._current_token, now) - now
            if left >= REISSUE_BELOW:
                return {"code": 0, "msg": "ok", "tenant_access_token": self._current_token, "expire": int(left)}
            token = "t-" + secrets.token_hex(20)
            self._tokens = {t: expiry for t, expiry in self._tokens.items() if expiry > now}  # old ones stay valid
            self._tokens[token], self._current_token = now + self.token_ttl, token
        return {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": self.token_ttl}

    def _batch_get_id(self, req: Request) -> dict:
        self._authorize(req)
        self._admit_app("batch_get_id")
        if req.query.get("user_id_type") != "open_id":
            raise field_error("user_id_type", "the fake resolves open_id only: pass user_id_type=open_id")
        emails = req.json().get("emails")
        if not isinstance(emails, list) or not emails or not all(isinstance(e, str) for e in emails):
            raise field_error("emails", "emails must be a non-empty list of strings")
        if len(emails) > 50:
            raise field_error("emails", "the max len is 50")
        status = dict(is_frozen=False, is_resigned=False, is_activated=True, is_exited=False, is_unjoin=False)
        user_list = []
        for email in emails:  # unknown emails stay in the list, without user_id
            open_id = self._lookup(email)
            user_list.append({"user_id": open_id, "email": email, "status": status} if open_id
                             else {"email": email})
        return {"code": 0, "msg": "success", "data": {"user_list": user_list}}

    def _remember_valid(self, content: str) -> None:
        with self._lock:
            if len(self._valid_cards) >= 1024:
                self._valid_cards.clear()
            self._valid_cards.add(content)

    def _send_message(self, req: Request) -> dict:
        self._authorize(req)
        self._admit_app("send")
        if self._hang:
            time.sleep(self._hang)
        receive_id_type = req.query.get("receive_id_type")
        if receive_id_type is None:
            raise field_error("receive_id_type", "receive_id_type is required")
        if receive_id_type not in RECEIVE_ID_TYPES:
            raise invalid_param("invalid receive_id_type")
        body = req.json()
        receive_id, msg_type, content, uuid = (body.get(k) for k in ("receive_id", "msg_type", "content", "uuid"))
        for name, value in (("receive_id", receive_id), ("msg_type", msg_type), ("content", content)):
            if not isinstance(value, str) or not value:
                raise field_error(name, f"{name} is required and must be a string")
        if msg_type != "interactive":
            raise invalid_param("the fake models msg_type interactive only")
        if uuid is not None and (not isinstance(uuid, str) or len(uuid) > 50):
            raise invalid_param("invalid uuid")
        if len(content.encode("utf-8")) > CARD_LIMIT:
            raise Refusal(230025, "The message is too long: the content of a card must not exceed 30 KB.")
        if content not in self._valid_cards:
            try:
                card = json.loads(content)
            except (ValueError, RecursionError):
                card = None
            require(isinstance(card, dict), "content is not the JSON of a card object")
            check_card(card)
            self._remember_valid(content)
        if receive_id_type == "email":
            open_id = self._lookup(receive_id)
        elif receive_id_type == "chat_id":
            open_id = self._by_chat.get(receive_id)
        else:  # the fake's directory holds no user_id or union_id: those never match
            open_id = receive_id if receive_id_type == "open_id" else None
        user = self._users.get(open_id)
        if user is None:
            raise invalid_param("invalid receive_id")
        if not user["available"]:
            raise Refusal(230013, "Bot has NO availability to this user.")
        if self.quotas:
            self._admit([self._user_windows.setdefault(open_id, RateWindow(5, 1))], lambda window, wait: Refusal(
                230020, "This operation triggers the frequency limit."))
        now = self._clock()
        with self._lock:
            while self._uuids and next(iter(self._uuids.values()))["at"] <= now - UUID_TTL:
                self._uuids.popitem(last=False)
            message = self._uuids.get(uuid)
            if message is None:  # a repeated uuid within the hour creates nothing and answers the original
                message = {"message_id": "om_" + secrets.token_hex(16), "receive_id": receive_id,
                           "receive_id_type": receive_id_type, "to_email": user["email"], "uuid": uuid,
                           "msg_type": msg_type, "content": content, "at": now}
                self._messages.append(message)
                if uuid:
                    self._uuids[uuid] = message
        created = str(int(message["at"] * 1000))
        return {"code": 0, "msg": "success", "data": {
            "message_id": message["message_id"], "chat_id": user["chat_id"], "msg_type": "interactive",
            "create_time": created, "update_time": created, "deleted": False, "updated": False,
            "sender": {"id": self.app_id, "id_type": "app_id", "sender_type": "app", "tenant_key": "fake_tenant"},
            "body": {"content": message["content"]}, "mentions": [], "upper_message_id": ""}}

    def _post_to_bot(self, req: Request) -> dict:
        token = req.path.rsplit("/", 1)[1]
        if token not in self._bots:
            raise Refusal(19001, "param invalid: incoming webhook access token invalid")
        if len(req.body) > BOT_BODY_LIMIT:
            raise Refusal(9499, "Bad Request: the request body exceeds the 20 KB limit")
        body = req.json()
        secret, now = self._bots[token], self._clock()
        if secret is not None:
            timestamp, sign = body.get("timestamp"), body.get("sign")
            try:
                fresh = abs(now - int(timestamp)) <= 3600
            except (TypeError, ValueError):
                fresh = False
            if not fresh or not isinstance(sign, str) or not hmac.compare_digest(sign, gen_sign(timestamp, secret)):
                raise Refusal(19021, "sign match fail or timestamp is not within one hour from current time")
        if self.quotas:
            windows = self._bot_windows.setdefault(token, (RateWindow(5, 1), RateWindow(100, 60)))
            self._admit(windows, lambda window, wait: Refusal(
                11232, f"frequency limited psm[lark.oapi.app_platform_runtime]appID[{token}]"))
        if self._hang:
            time.sleep(self._hang)
        if body.get("msg_type") != "interactive":
            raise Refusal(19002, "params error, msg_type need (the fake models interactive only)")
        if not isinstance(body.get("card"), dict):
            raise Refusal(19002, "params error, unknown card value: card must be an object")
        check_card(body["card"])
        with self._lock:
            self._bot_messages.append({"token": token, "content": json.dumps(body["card"], ensure_ascii=False),
                                       "body": body, "at": now})
        return {"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}


def _not_found(req: Request) -> dict:
    raise Refusal(None, status=404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # listen backlog: a load generator opens dozens of connections at once

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's own adds a reverse DNS lookup (getfqdn)
        self.server_name, self.server_port = self.server_address[:2]
        self.connections: set[socket.socket] = set()

    def close_connections(self) -> None:
        """Cut kept-alive connections too, so a stopped fake really stops answering."""
        for connection in self.connections.copy():
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is no error
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # TCP_NODELAY: Nagle against delayed ACK costs ~40 ms per kept-alive call

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def parse_request(self) -> bool:
        self.received_at = time.monotonic()      # the request line is in; headers are parsed next
        return super().parse_request()

    def serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or "chunked" in self.headers.get("Transfer-Encoding", ""):
            self.close_connection = True
            return self.write(411, {"error": "send a Content-Length"}, {})
        request = Request(self.command, self.path, self.headers, self.rfile.read(length), self.received_at)
        answer = self.server.fake.answer(request)
        self.write(*answer, spread_over=self.server.fake.trickle_seconds(request.kind))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = serve

    def write(self, status: int, payload: dict | bytes, headers: dict, spread_over: float = 0.0) -> None:
        """Send the whole response in one write (status line, headers and body), or in pieces over
        `spread_over` seconds (trickle)."""
        if isinstance(payload, bytes):
            body, content_type = payload, "text/html"
        else:
            body, content_type = json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8"
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in headers.items())]
        if self.close_connection:
            lines.append("Connection: close")
        data = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body
        pieces = 20 if spread_over else 1
        size = -(-len(data) // pieces)
        try:
            for start in range(0, len(data), size):
                self.wfile.write(data[start:start + size])
                if spread_over:
                    self.wfile.flush()
                    time.sleep(spread_over / pieces)
        except OSError:  # the client gave up waiting (a hung send): what it asked for was still done
            self.close_connection = True

    def log_message(self, format, *args) -> None:
        pass  # hundreds of requests a second in the benchmark: no access log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_feishu", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rtt", type=float, default=0.0, help="seconds every API request waits (network RTT)")
    parser.add_argument("--quotas", action="store_true", help="enforce Feishu's rate limits")
    parser.add_argument("--auto-users", action="store_true", help="resolve any email to a deterministic open_id")
    args = parser.parse_args(argv)
    fake = FakeFeishu(host=args.host, port=args.port, rtt=args.rtt, quotas=args.quotas,
                      auto_users=args.auto_users).start()
    print(fake.url, flush=True)
    try:
        threading.Event().wait()  # serve until killed
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
