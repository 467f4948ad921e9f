"""Group chats: posting cards to Feishu (Lark) custom-bot webhooks.

A custom bot posts into its own group through a webhook URL whose last part
is a token: anyone holding the URL can post there, so it is a credential and
is only ever shown masked (`chat:…/hook/abcd…`). Bots need no app token and
no lookup, but have their own rules: the card goes as an object under
"card", the body is at most 20 KB, a bot with signing on wants a timestamp
and an HMAC sign, and success is the body's `code`, not the HTTP status.
Bots take no `uuid`, so a retry after an ambiguous failure can post twice.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import time
from typing import Callable
from urllib.parse import urlsplit

import requests

from . import cutoff
from .cutoff import CUTOFF
# The URL's token and the secret never enter a message (see _scrub).
from .feishu_errors import FeishuError, logged, no_answer_error, retry_after

HOOK_PATH = "/open-apis/bot/v2/hook/"
FEISHU_HOSTS = ("open.feishu.cn", "open.larksuite.com", "open.larkoffice.com")
MAX_BODY_BYTES = 20 * 1024          # a group bot's limit on the whole request body
ENVELOPE_BYTES = 256                # msg_type, timestamp and sign around the card, with room to spare
MAX_CARD_BYTES = MAX_BODY_BYTES - ENVELOPE_BYTES

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_BOT_SETTINGS = "the group's settings > 群机器人 (Bots) > the bot"
_UNKNOWN_CODE = ("look the code up in Feishu's custom bot guide: "
                 "https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot")

# code -> (retryable, hint). Codes not listed are permanent.
ERRORS: dict[int, tuple[bool, str]] = {
    11232: (True, "the group bot's rate limit (5 a second, 100 a minute; busiest on the hour and half hour): "
                  "retry in a moment"),
    19001: (False, f"the webhook URL is not valid (mistyped, or the bot was removed): copy it again from "
                   f"{_BOT_SETTINGS} into owners.json"),
    19002: (False, "Feishu refused the message (bad card JSON)"),
    19021: (False, "signature check failed: the bot has 签名校验 (signature verification) on, so owners.json must "
                   'list it as {"url": ..., "secret": ...} with the secret from ' + _BOT_SETTINGS +
                   "; also check this server's clock (Feishu allows 1 hour)"),
    19022: (False, f"the bot's IP allow-list (IP 白名单) does not include this server: add its public IP in "
                   f"{_BOT_SETTINGS}, or use signature verification instead"),
    19024: (False, "the bot wants a custom keyword (自定义关键词) the card does not contain: remove the keywords "
                   f"in {_BOT_SETTINGS} and use signature verification instead"),
    9499: (False, "Feishu refused the request body (not valid JSON, or over 20 KB)"),
}


def bot_url_problem(url: str) -> str | None:
    """What is wrong with a custom-bot webhook URL, or None when it looks right.

    Any host is accepted (Feishu, Lark, the open.larkoffice.com alias, a
    private deployment), over https; plain http only to this machine (a test
    server). The path must be the bot hook's.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        parts, host = None, ""
    if parts is None or not host or parts.scheme not in ("http", "https"):
        return "is not an https URL"
    if parts.scheme == "http" and not _is_loopback(host):
        return "is not an https URL (the card and the bot's token would cross the network in clear text)"
    token = parts.path[len(HOOK_PATH):] if parts.path.startswith(HOOK_PATH) else ""
    if not _TOKEN.fullmatch(token) or parts.query or parts.fragment:
        return f"is not a custom-bot webhook URL (https://{FEISHU_HOSTS[0]}{HOOK_PATH}<token>)"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:                       # a name, 127.evil.example say
        return False


def mask_chat_url(url: str) -> str:
    """How a group chat is shown in responses, logs and messages: its URL's token stays secret."""
    _, found, token = url.partition(HOOK_PATH)
    return f"chat:…/hook/{token[:4]}…" if found else "chat:…"


def quoted_value(text: str) -> str:
    """A value from a hand-edited file as an error message quotes it: a URL only by its host, a bot's
    by its masked token (the path of a webhook URL is its credential, and messages reach logs and /healthz)."""
    if "/hook/" in text:                     # a bot's, whatever is wrong with the rest of it
        return mask_chat_url(text)
    if "://" not in text:
        return json.dumps(text, ensure_ascii=False)
    try:
        parts = urlsplit(text.strip())
        return f"{parts.scheme}://{parts.hostname or ''}/…"
    except ValueError:
        return "a URL"


def gen_sign(timestamp: int, secret: str) -> str:
    """Feishu's bot signature: HMAC-SHA256 keyed with "timestamp\\nsecret" over an empty message, base64."""
    key = f"{timestamp}\n{secret}".encode("utf-8")
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


class BotClient:
    """Posts cards to group bots; thread-safe, one pooled session, explicit timeouts."""

    def __init__(self, *, session: requests.Session | None = None, clock: Callable[[], float] = time.time,
                 connect_timeout: float = 3.05, read_timeout: float = 10.0):
        self._session = session or cutoff.session(pool_maxsize=32)
        self._clock = clock            # wall time: the sign's timestamp must be within Feishu's hour
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    @property
    def longest_post(self) -> float:
        """Seconds a post may take at most when given no budget: its connect and read timeouts together."""
        return self._connect_timeout + self._read_timeout

    def post_card(self, url: str, secret: str | None, card: dict, budget: float | None = None) -> None:
        """Post `card` to the bot at `url`, signed when `secret` is given; FeishuError says what went wrong.

        Without a budget the whole post is bounded by `longest_post` (a read timeout bounds each read only)."""
        what = f"posting the card to {mask_chat_url(url)}"
        body: dict = {"msg_type": "interactive", "card": card}
        if secret:
            timestamp = int(self._clock())
            body = {"timestamp": str(timestamp), "sign": gen_sign(timestamp, secret), **body}
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(data) > MAX_BODY_BYTES:
            raise FeishuError(f"{what}: the body is {len(data)} bytes, over the group bot's 20 KB limit",
                              hint="a bug: chat cards are rendered to fit; please report it")
        if budget is not None and budget <= 0:
            raise FeishuError(f"{what}: no time left before the deadline", retryable=True)
        timeout = (self._connect_timeout, self._read_timeout) if budget is None else \
            (min(self._connect_timeout, budget), min(self._read_timeout, budget))
        posted = " (it may have been posted: a retry can show the card twice in the group)"
        failure = None
        with CUTOFF.after(self.longest_post if budget is None else budget) as call:
            try:
                # No redirects: a card goes to the bot's URL or nowhere (a redirect could aim it anywhere).
                rsp = self._session.post(url, data=data, timeout=timeout, allow_redirects=False,
                                         headers={"Content-Type": "application/json; charset=utf-8"})
            except requests.RequestException as exc:
                failure = exc
            except ValueError as exc:      # a URL requests cannot use (a host label over 63 characters)
                raise FeishuError(f"{what}: the webhook URL cannot be used ({type(exc).__name__}): copy it "
                                  f"again from {_BOT_SETTINGS} into owners.json") from None
        error = no_answer_error(what, failure, cut=call.cut, may_have=posted, detail=lambda text: _scrub(text, url))
        if error:
            raise error
        _check(what, url, rsp)


def _check(what: str, url: str, rsp: requests.Response) -> None:
    """Success is `code` 0 in the body, whatever the HTTP status; anything else raises."""
    try:
        payload = rsp.json()
    except ValueError:
        payload = None
    # "StatusCode" is the legacy name of the same field; current answers carry both.
    code = payload.get("code", payload.get("StatusCode")) if isinstance(payload, dict) else None
    if code == 0:
        return
    status = rsp.status_code
    log_id = rsp.headers.get("X-Tt-Logid", "")
    if not isinstance(code, int) or isinstance(code, bool):
        retryable = status == 429 or status >= 500
        raise logged(FeishuError(f"{what}: Feishu answered HTTP {status} without an error code",
                                  http_status=status, log_id=log_id, retryable=retryable,
                                  retry_after=retry_after(rsp) if retryable else None, rate_limited=status == 429,
                                  hint="retry later" if retryable else "check the webhook URL in owners.json"))
    msg = _scrub(" ".join(str(payload.get("msg", "")).split()), url)
    rate_limited = code == 11232 or status == 429
    if code == 9499 and "too many" in msg.lower():
        # Seen from bots in a burst (ccfos/nightingale#1437): 9499 with "too many request" is a rate limit.
        (retryable, hint), rate_limited = ERRORS[11232], True
    elif code in ERRORS:
        retryable, hint = ERRORS[code]
    elif status == 429 or status >= 500:
        retryable, hint = True, f"Feishu answered HTTP {status}: retry later"
    else:
        retryable, hint = False, _UNKNOWN_CODE
    raise logged(FeishuError(f"{what}: Feishu {code}: {msg}", code=code, http_status=status, log_id=log_id,
                              retryable=retryable, retry_after=retry_after(rsp) if retryable else None,
                              rate_limited=rate_limited, hint=hint))


def _scrub(text: str, url: str) -> str:
    """`text` with the URL's token masked: requests' messages and Feishu's own quote it."""
    token = url.partition(HOOK_PATH)[2]
    return text.replace(token, token[:4] + "…") if token else text
