"""Admin alerts: one Feishu card to ADMIN_EMAILS when something needs a person.

Two things raise an alert: a delivery that failed for good (an unknown email,
a user outside the app's availability range, a missing permission, a refused
card ...) and a queue that stayed above ALERT_QUEUE_THRESHOLD for
BACKLOG_SECONDS. Each has a problem key: the Feishu code, plus the recipient
when only that person is affected (a missing permission or a refused card
affects everyone, and is one problem). A problem is alerted at most once an
hour: the alert is an outbox event keyed by problem and hour, so the outbox's
idempotency holds the rule across processes and restarts, and the retry
worker sends (and retries) it like any delivery. A failed alert never raises
another one.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlsplit

from .alert_texts import APP_ACTIONS, LABELS, PERSON_ACTIONS, RETRY_HINT, TEXTS
from .card_parts import escape_markdown
from .cards import card_content
from .feishu_errors import FeishuError, missing_scopes
from .outbox import Outbox
from .rows import Delivery, NewDelivery, feishu_uuid, person_key, shown
from .service import RETRY_WINDOW
from .settings import Settings
from .users import ROLES

log = logging.getLogger(__name__)

ALERT_PREFIX = "alert:"
ALERT_PERIOD = 3600.0          # one alert per problem per hour
BACKLOG_SECONDS = 300.0        # how long the queue must stay above the threshold
DETAIL_CHARS = 1000            # of the error line shown on the card

CARD_CODES = frozenset({230099, 230025, 200621})
# A person who left (230029) or is in another organisation (230038) is fixed by naming someone else in
# owners.json or users.json: --retry-failed would send the stored rows to the same person again.
GONE_CODES = frozenset({230029, 230038})
# A group's custom bot refusing a post for its own settings: a removed bot or a wrong URL, a signature, an IP
# allow-list, a keyword (chats.py says which).
BOT_SETTINGS_CODES = frozenset({19001, 19021, 19022, 19024})
# The link a 99991672 message ends with: the console page that requests the missing scopes in one click.
SCOPE_REQUEST = re.compile(r"https://[^\s\"'<>，。]+/app/[^\s\"'<>/，。]+/auth\?[^\s\"'<>，。]+")


@dataclass(frozen=True)
class Problem:
    key: str                   # what makes two failures the same problem, e.g. "230013:zhangsan@example.com"
    kind: str                  # a key of TEXTS
    values: dict               # placeholders of its texts
    detail: str = ""           # the error line: Feishu code, message, log id (and hint, when the card has none)
    project: str = ""
    button_url: str = ""       # a page that fixes it (Feishu's own scope request link), else the app's console
    resend_helps: bool = True  # whether --retry-failed, after the fix, gets the failed cards out


def classify(row: Delivery, error: FeishuError | str, project: str = "") -> Problem:
    """The problem behind a delivery that failed for good."""
    recipient = shown(row)           # a group bot's URL is a credential: never in a card or a key
    # The key names a person as Feishu tells people apart: an email's case makes no one else (the card keeps
    # it as written). An open_id's case does, as does a masked chat token's.
    who = person_key(recipient) if row.channel == "dm" else recipient
    if isinstance(error, str):
        return Problem(f"unknown-email:{who}", "unknown_email", {"recipient": recipient, "file": _listed_in(row)},
                       error, project)
    detail = str(error)
    if error.retryable:                                     # it was retried until the retry window closed
        return Problem("expired", "expired", {}, detail, project)
    code = error.code if error.code is not None else f"HTTP {error.http_status}"
    values = {"recipient": recipient, "code": code}
    # The kinds below say what to do in the card's language: the detail keeps Feishu's words, not the hint.
    said = error.message + (f" (log id {error.log_id})" if error.log_id else "")
    if row.channel == "chat" and error.code in BOT_SETTINGS_CODES:     # fixed in the group and owners.json
        return Problem(f"chat:{code}:{recipient}", "chat", values, said, project)
    if error.code == 230013:
        return Problem(f"230013:{who}", "availability", values, said, project)
    if error.code == 99991672:                              # every delivery is affected, not the recipient alone
        scopes = {"code": code, "scopes": missing_scopes(error.message), "scopes_zh": missing_scopes(error.message, "zh")}
        link = SCOPE_REQUEST.search(error.message)
        return Problem(f"99991672:{scopes['scopes']}", "permission", scopes, said, project, link[0] if link else "")
    if error.code in CARD_CODES:
        return Problem(f"card:{code}", "card", {"code": code}, said, project, resend_helps=False)
    if error.code in APP_ACTIONS:                           # every delivery is affected: one problem
        actions = APP_ACTIONS[error.code]
        return Problem(f"{code}:*", "app", {"code": code, "action_zh": actions["zh"], "action_en": actions["en"]},
                       said, project)
    if error.code in PERSON_ACTIONS:
        actions = PERSON_ACTIONS[error.code]
        return Problem(f"{code}:{who}", "person",
                       {**values, "action_zh": actions["zh"], "action_en": actions["en"]}, said, project,
                       resend_helps=error.code not in GONE_CODES)
    scope = "*" if error.code is None else who             # an HTTP status alone: not this recipient's doing
    return Problem(f"{code}:{scope}", "other", values, detail, project)


def _listed_in(row: Delivery) -> str:
    """The file that named a recipient: users.json for a person the event concerns, else owners.json."""
    return "users.json" if row.rule.split(":", 1)[0] in ROLES else "owners.json"


def render_alert(problem: Problem, lang: str, console_url: str) -> dict:
    """The alert card (card JSON 2.0): what is wrong, what to do, and the details."""
    labels = LABELS[lang]
    title, wrong, action = TEXTS[problem.kind][lang]
    title = title.format(**problem.values)                 # plain_text: shown as is
    values = {name: escape_markdown(str(value)) for name, value in problem.values.items()}
    wrong, action = wrong.format(**values), action.format(**values)
    lines = [f"**{labels['problem']}**  {wrong}", f"**{labels['action']}**  {action}"]
    if problem.resend_helps and problem.kind != "backlog":
        lines.append(RETRY_HINT[lang])
    for label, value in ((labels["project"], problem.project), (labels["recipient"], problem.values.get("recipient"))):
        if value:
            lines.append(f"<font color='grey'>{label}</font>  {escape_markdown(value)}")
    elements = [{"tag": "markdown", "content": "\n".join(lines)}]
    if problem.detail:
        elements += [{"tag": "hr"}, {"tag": "markdown", "content": f"<font color='grey'>{labels['error']}</font>\n"
                                                                   f"{escape_markdown(problem.detail[:DETAIL_CHARS])}"}]
    # Feishu's own link when it points into this app's page of the same console; a group's bot is fixed in the
    # group, not there.
    url = problem.button_url if _inside(problem.button_url, console_url) else console_url
    if problem.kind != "chat":
        elements.append({"tag": "button", "type": "primary", "text": {"tag": "plain_text", "content": labels["console"]},
                         "behaviors": [{"type": "open_url", "default_url": url}]})
    return {
        "schema": "2.0",
        "config": {"summary": {"content": labels["summary"].format(title=title)[:100]}},
        "header": {"title": {"tag": "plain_text", "content": title},
                   "template": "orange" if problem.kind == "backlog" else "red"},
        "body": {"elements": elements},
    }


def _inside(link: str, console_url: str) -> bool:
    """Whether `link` opens a page of this app in the console at `console_url` (scheme, host, /app/<id>/)."""
    try:
        there, here = urlsplit(link), urlsplit(console_url)
    except ValueError:              # a host that NFKC turns into another (a full-width ／ or ＠)
        return False
    # A browser resolves "..", "%2e%2e" and a backslash (read as "/") before it opens the link: a path with
    # any of them may leave the app's pages however it starts.
    dotted = any(unquote(step).lower() in (".", "..") for step in there.path.split("/"))
    return (there.scheme, there.netloc) == (here.scheme, here.netloc) and "\\" not in there.path and \
        not dotted and there.path.startswith(here.path.rstrip("/") + "/")


class Alerter:
    """Raises admin alerts into the outbox; the retry worker delivers them."""

    def __init__(self, settings: Settings, outbox: Outbox, *, lease_owner: str,
                 clock: Callable[[], float] = time.time):
        self.admins = settings.admin_emails
        self.lang = settings.card_lang
        self.threshold = settings.alert_queue_threshold
        self.console_url = f"{settings.feishu_base_url}/app/{settings.feishu_app_id}"
        self.outbox = outbox
        self.lease_owner = lease_owner
        self.clock = clock
        self._backlog_since: float | None = None

    def delivery_failed(self, row: Delivery, error: FeishuError | str) -> None:
        """Deliverer hook: a delivery was marked failed for good."""
        if row.event_key.startswith(ALERT_PREFIX):
            return                       # an alert that cannot be delivered must not raise another alert
        try:
            summary = self.outbox.event_summary(row.event_key)
            self.raise_alert(classify(row, error, summary[1] if summary else ""))
        except Exception:                # an alert must never break the delivery that triggered it
            log.exception("could not raise an admin alert for delivery %s", row.id)

    def watch_queue(self, queued: int) -> None:
        """RetryWorker hook, called now and then with the number of queued deliveries."""
        now = self.clock()
        if queued <= self.threshold:
            self._backlog_since = None
            return
        if self._backlog_since is None:
            self._backlog_since = now
        if now - self._backlog_since >= BACKLOG_SECONDS:
            values = {"queued": queued, "threshold": self.threshold, "minutes": int(BACKLOG_SECONDS // 60)}
            try:
                self.raise_alert(Problem("queue-backlog", "backlog", values))
            except Exception:
                log.exception("could not raise the queue backlog alert")

    def raise_alert(self, problem: Problem) -> bool:
        """Queue one alert card to every admin unless this problem was alerted within the hour."""
        now = self.clock()
        hour = int(now // ALERT_PERIOD)
        # Keys name clock hours; the previous hour's alert also counts while it is less than an hour old.
        earlier = self.outbox.event_rows(f"{ALERT_PREFIX}{problem.key}:{hour - 1}")
        if earlier and earlier[0].created_at > now - ALERT_PERIOD:
            return False
        key = f"{ALERT_PREFIX}{problem.key}:{hour}"
        content = card_content(render_alert(problem, self.lang, self.console_url))
        planned = [NewDelivery("dm", admin, f"admin alert: {problem.kind}", content, feishu_uuid(key, "dm", admin))
                   for admin in self.admins]
        # Not leased (lease_seconds=0): the retry worker picks it up within a second, off the request's path.
        new, _ = self.outbox.begin_event(key, "alert", problem.key, planned, lease_owner=self.lease_owner,
                                         lease_seconds=0, retry_window=RETRY_WINDOW)
        if new:
            log.warning("admin alert for %s to %s: %s", problem.key, ", ".join(self.admins), problem.detail or
                        TEXTS[problem.kind]["en"][0].format(**problem.values))
        return bool(new)
