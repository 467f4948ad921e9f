"""Start-up self-check: do the Feishu app credentials work?

In live mode each process fetches a tenant token in a background thread (unless
another one did a moment ago, see FeishuClient.check_credentials), so a
Feishu that is down or slow never delays start-up. The answer goes to the log,
the waitress banner and /healthz. When Feishu cannot be reached the answer is
"unknown" and the check is repeated (10 s, doubling up to 5 minutes) until
the credentials work. A refusal is checked again the same way: some are put
right in the Feishu console (a disabled app) without a
restart; wrong credentials in .env take one.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from .feishu import FeishuClient
from .feishu_errors import WRONG_CREDENTIALS, FeishuError

log = logging.getLogger(__name__)

CHECK_BUDGET = 5.0          # seconds one check may take: connect and read timeouts included
FIRST_RETRY = 10.0
MAX_RETRY = 300.0

OK, REJECTED, ERROR, UNKNOWN = "ok", "rejected", "error", "unknown"
_LOG_LEVELS = {OK: logging.INFO, REJECTED: logging.ERROR, ERROR: logging.ERROR, UNKNOWN: logging.WARNING}


class CredentialCheck:
    """Fetches a tenant token and remembers what Feishu said about the app's credentials."""

    def __init__(self, feishu: FeishuClient, *, budget: float = CHECK_BUDGET):
        self.feishu = feishu
        self.budget = budget
        self._state = (UNKNOWN, "not checked yet")      # replaced whole, so readers need no lock
        self._verdict: tuple[str, int | None] | None = None   # the last answer's (kind, Feishu's code)
        self._checked = threading.Event()               # set after the first check, whatever its answer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return self._state[0]

    @property
    def refused(self) -> bool:
        """Feishu refused the credentials (or answered a token request with nonsense): nothing can be sent."""
        return self.kind in (REJECTED, ERROR)

    def describe(self) -> str:
        """One line for /healthz and the banner, e.g. "rejected: 10014 app secret invalid: check ..."."""
        kind, detail = self._state
        return f"{kind}: {detail}"

    def check(self) -> bool:
        """Ask Feishu once; True when the answer is definite (the credentials work, or are refused)."""
        try:
            detail = self.feishu.check_credentials(budget=self.budget)
        except FeishuError as exc:
            self._set(*_judge(exc), code=exc.code)
        else:
            self._set(OK, detail)
        self._checked.set()
        return self.kind != UNKNOWN

    def heard(self, error: FeishuError | None) -> None:
        """What a token fetch for a card got (FeishuClient.on_token_answer): an App Secret reset in the Feishu
        console, or put right again, shows here between checks."""
        if error is None:
            if self.kind != OK:
                self._set(OK, "tenant token fetched")
        elif not error.retryable:
            self._set(*_judge(error), code=error.code)
        # A retryable error (Feishu unreachable, the webhook's deadline spent) says nothing about the credentials,
        # and no background check is left running to put "unknown" right: the last verdict stands.

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="feishu-self-check", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first answer; True if there is one."""
        return self._checked.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.budget + 1)

    def _run(self) -> None:
        self.check_until_ok(self._stop.wait)

    def check_until_ok(self, wait: Callable[[float], bool]) -> None:
        """Check, then again after FIRST_RETRY, doubling up to MAX_RETRY, until the credentials work or
        `wait` says to stop. A refusal is checked again too (an app re-enabled in the console needs no
        restart, and /healthz must not stay degraded after it), unless it is the app id
        or secret itself."""
        delay = FIRST_RETRY
        self.check()
        while self.kind != OK and self._verdict[1] not in WRONG_CREDENTIALS and not wait(delay):
            self.check()
            delay = min(delay * 2, MAX_RETRY)

    def _set(self, kind: str, detail: str, *, code: int | None = None) -> None:
        self._state = (kind, detail)
        # The same verdict again (the same code, with another log id) is no news for the log.
        news, self._verdict = (kind, code) != self._verdict, (kind, code)
        log.log(_LOG_LEVELS[kind] if news else logging.DEBUG, "Feishu credentials %s", self.describe())


def _judge(exc: FeishuError) -> tuple[str, str]:
    """What a failed token fetch says about the credentials."""
    if exc.retryable:
        detail = str(exc).split(": ", 1)[-1]               # drop "getting a tenant_access_token: "
        return UNKNOWN, f"Feishu unreachable ({detail}); checking again in the background"
    if exc.code is not None:
        msg = exc.message.partition(f"Feishu {exc.code}: ")[2]
        return REJECTED, f"{exc.code} {msg}: {exc.hint}" if exc.hint else f"{exc.code} {msg}"
    return ERROR, str(exc)
