"""Feishu's errors: one table of codes (retry or not, and what a person should do), and FeishuError.

Feishu reports most errors as HTTP 4xx with a JSON `code`; the table decides
from the code, and from the HTTP status when there is no code.
"""
from __future__ import annotations

import logging
import re
from typing import Callable

import requests

logger = logging.getLogger("gitlab_feishu.feishu")

_CREDENTIALS = ("check FEISHU_APP_ID and FEISHU_APP_SECRET against the app's 凭证与基础信息 "
                "(Credentials & Basic Info) page in the Feishu developer console")
_PUBLISH = "and publish a new version of the app"
_BAD_ID = ("Feishu refused a parameter, most often the open_id (open_ids differ per app): an owner written as "
           "ou_... in owners.json, users.json or ADMIN_EMAILS must be the open_id this app sees, or write their "
           "email instead (an email is looked up once more before this is reported); otherwise `ext=` in the "
           "message names the parameter")
_TOKEN_REJECTED = ("Feishu rejected the tenant_access_token (expired or revoked): a fresh one is fetched and the "
                   "call tried again; if this repeats, check that the app is enabled in the Feishu developer console")
_BAD_CARD = "Feishu refused the card (bad card JSON or over the 30 KB limit): see the sub-code in the message"

# Feishu refused the tenant token: refresh it and retry once. 99991661 "Need a token" (the Go SDK refreshes on
# it too), 99991663/99991664 invalid, 99991668 "Invalid access token for authorization" (documented for user
# tokens, but seen in the wild for an expired or revoked tenant token; a refresh is one bounded retry),
# 99991671 format, 99991677 expired.
TOKEN_INVALID = frozenset({99991661, 99991663, 99991664, 99991668, 99991671, 99991677})

# Feishu refused the app id or secret itself: put right in .env, which takes a restart.
WRONG_CREDENTIALS = frozenset({10003, 10014, 10015, 99991543})

# Feishu's rate limits: the app's (99991400, HTTP 429) and one user's 5 a second (230020).
USER_RATE_LIMITED = 230020
RATE_LIMITS = frozenset({99991400, USER_RATE_LIMITED})

# code -> (retryable, hint). Codes not listed are permanent (see _UNKNOWN_CODE).
ERRORS: dict[int, tuple[bool, str]] = {
    **{code: (True, _TOKEN_REJECTED) for code in TOKEN_INVALID},
    99991400: (True, "the app hit Feishu's rate limit: retry after x-ogw-ratelimit-reset seconds"),
    USER_RATE_LIMITED: (True, "too many messages to this user (Feishu allows 5 per second): retry in a moment"),
    230049: (True, "Feishu is still sending this message: retry later with the same uuid"),
    18121: (True, "Feishu is still processing the same request: retry later with the same uuid"),
    10003: (False, f"the app_id is wrong or the app does not exist: {_CREDENTIALS}"),
    10014: (False, f"the app secret is wrong: {_CREDENTIALS}"),
    10015: (False, f"the app secret is wrong: {_CREDENTIALS}"),
    99991543: (False, f"the app_id or app secret is wrong: {_CREDENTIALS}"),
    99991672: (False, "the app lacks a permission: add {scopes} under 权限管理 (Permissions & Scopes) in the "
                      f"Feishu developer console {_PUBLISH}"),
    230013: (False, "the user is outside the app's availability range (or has left the company): add them "
                    f"under 可用范围 (Availability) in the Feishu developer console {_PUBLISH}"),
    230006: (False, "the app's bot capability is off: enable 机器人 (Bot) under 应用能力 (Features) in the "
                    f"Feishu developer console {_PUBLISH}"),
    230001: (False, _BAD_ID),
    230034: (False, _BAD_ID),
    230099: (False, _BAD_CARD),
    200621: (False, _BAD_CARD),
    230025: (False, "the card is over Feishu's 30 KB limit: shorten it"),
    230053: (False, "the user has stopped receiving messages from this bot"),
    230029: (False, "the user has left the company"),
    230035: (False, "the app may not message this user (muted, blocked or a tenant policy)"),
    230027: (False, "the app lacks a permission or the user's authorization for this message"),
    230038: (False, "the user belongs to another Feishu organisation, and cross-tenant DMs are not allowed"),
    99992361: (False, "this open_id belongs to another Feishu app (open_ids differ per app): write the person's "
                      "email in owners.json/users.json/ADMIN_EMAILS, or the open_id this app sees"),
    99991401: (False, "the app's IP allow-list (安全设置 > IP 白名单, Security Settings) does not include this "
                      "server's outgoing IP: add it in the Feishu developer console"),
    99991403: (False, "the tenant's monthly API call quota for custom apps is used up: ask a Feishu admin to "
                      "upgrade the plan; after it resets, `--retry-failed` sends the failed cards"),
    99991662: (False, f"the app is disabled (停用): enable it in the Feishu developer console {_PUBLISH}"),
    99991201: (False, "Feishu does not know this API path: check FEISHU_BASE_URL (https://open.feishu.cn, or "
                      "https://open.larksuite.com for Lark, without /open-apis)"),
    230028: (False, "the tenant's data-loss prevention refused the message (it holds a plain email address or "
                    "phone number, e.g. a commit author GitLab names only by email): ask a Feishu admin"),
}
_UNKNOWN_CODE = ("look the code up in Feishu's error code docs: "
                 "https://open.feishu.cn/document/server-docs/api-call-guide/generic-error-code")


class FeishuError(Exception):
    """A failed Feishu call: what failed, Feishu's code and log id, and what to do about it."""

    def __init__(self, message: str, *, code: int | None = None, http_status: int | None = None, log_id: str = "",
                 retryable: bool = False, retry_after: float | None = None, rate_limited: bool = False,
                 hint: str = ""):
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status
        self.log_id = log_id
        self.retryable = retryable
        self.retry_after = retry_after
        self.rate_limited = rate_limited      # refused for a quota: the sends under it should pause
        self.hint = hint

    def __str__(self) -> str:
        log_id = f" (log id {self.log_id})" if self.log_id else ""
        hint = f": {self.hint}" if self.hint else ""
        return f"{self.message}{log_id}{hint}"


def code_error(what: str, rsp: requests.Response, payload: dict) -> FeishuError:
    """The error for an answer that carries Feishu's JSON `code`."""
    code, msg = payload["code"], " ".join(str(payload.get("msg", "")).split())
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    log_id = str(error.get("log_id") or rsp.headers.get("X-Tt-Logid", ""))
    if code in ERRORS:
        retryable, hint = ERRORS[code]
        hint = hint.replace("{scopes}", missing_scopes(msg))
    elif rsp.status_code == 429 or rsp.status_code >= 500:
        retryable, hint = True, f"Feishu answered HTTP {rsp.status_code}: retry later"
    else:
        retryable, hint = False, _UNKNOWN_CODE
    retry_after_ = retry_after(rsp) if retryable else None
    if code == USER_RATE_LIMITED and retry_after_ is None:
        retry_after_ = 1.0
    return FeishuError(f"{what}: Feishu {code}" + (f": {msg}" if msg else ""), code=code, http_status=rsp.status_code,
                       log_id=log_id, retryable=retryable, retry_after=retry_after_,
                       rate_limited=code in RATE_LIMITS or rsp.status_code == 429, hint=hint)


def status_error(what: str, rsp: requests.Response) -> FeishuError:
    """The error for an answer without a usable `code` (a gateway page, an empty body)."""
    status = rsp.status_code
    retryable = rsp.ok or status == 429 or status >= 500
    hint = "retry later" if retryable else \
        "check FEISHU_BASE_URL (https://open.feishu.cn, or https://open.larksuite.com for Lark)"
    return FeishuError(f"{what}: Feishu answered HTTP {status} without an error code", http_status=status,
                       log_id=rsp.headers.get("X-Tt-Logid", ""), retryable=retryable,
                       retry_after=retry_after(rsp) if status == 429 else None, rate_limited=status == 429,
                       hint=hint)


def no_answer_error(what: str, failure: requests.RequestException | None, *, cut: bool, may_have: str,
                    detail: Callable[[str], str] = lambda text: text) -> FeishuError | None:
    """Why a call got no usable answer (None when it got one): cut off at the deadline, timed out, or
    Feishu unreachable. `may_have` says what a retry risks when the request may have gone through."""
    if cut:          # the socket was shut mid-answer: what came, if anything, is not all of it
        return logged(FeishuError(f"{what}: no whole answer before the deadline{may_have}", retryable=True))
    if isinstance(failure, requests.Timeout):
        read = isinstance(failure, requests.ReadTimeout)
        return logged(FeishuError(f"{what}: {type(failure).__name__}{may_have if read else ''}", retryable=True))
    if failure is not None:
        return logged(FeishuError(f"{what}: cannot reach Feishu ({type(failure).__name__}: "
                                  f"{detail(' '.join(str(failure).split()))})", retryable=True))
    return None


def retry_after(rsp: requests.Response) -> float | None:
    """Seconds until Feishu's rate limit resets (x-ogw-ratelimit-reset), or None."""
    try:
        return max(0.0, float(rsp.headers["x-ogw-ratelimit-reset"]))
    except (KeyError, ValueError):
        return None


SCOPE_JOINERS = {"en": (" or ", " and "), "zh": (" 或 ", " 和 ")}   # (any of them, all of them)


def missing_scopes(msg: str, lang: str = "en") -> str:
    """The scopes a 99991672 msg names, any of which will do ("Access denied. One of the following scopes is
    required: [a, b]. ..."); without a list, both scopes the service uses (email lookup and sending)."""
    any_of, all_of = SCOPE_JOINERS[lang]
    listed = re.search(r"\[([^\]]+)\]", msg)
    if listed:
        return any_of.join(scope.strip() for scope in listed.group(1).split(","))
    return all_of.join(("contact:user.id:readonly", "im:message:send_as_bot"))


def logged(error: FeishuError) -> FeishuError:
    """Log a Feishu error once, as it is raised."""
    # str(error) carries code, msg, log id and hint; tokens and secrets never enter it.
    logger.warning("%s", error)
    return error
