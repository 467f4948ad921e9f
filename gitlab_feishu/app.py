"""The Flask application: HTTP checks in front of the notification pipeline.

GitLab counts every non-2xx answer and every timeout toward disabling the
hook, so only a too-large body (413), a wrong token (401) and a body that is
not JSON or was cut short (400) get an error status; everything else is a 200
with a status.
"""
from __future__ import annotations

import logging
import re
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping

from flask import Flask, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from .access import protect
from .alerts import Alerter
from .chats import BotClient
from .db import storage_failure, why_unwritable
from .watched import FileWatcher, iso_time
from .delivery import Deliverer
from .feishu import FeishuClient
from .gitlab import MAX_BODY_BYTES, decode_payload, signature_problem, token_matches
from .logs import configure_logging
from .outbox import Outbox
from .owners import OwnersFile
from .pacing import Pacer
from .selfcheck import CredentialCheck
from .service import Notifier
from .settings import ConfigError, Settings, serving
from .shared_cache import SharedCache
from .users import UsersFile
from .worker import RetryWorker, process_owner

log = logging.getLogger(__name__)

_SLASHES = re.compile("/{2,}")
TOO_LARGE = "body larger than GitLab's 25 MB limit"
CUT_SHORT = "the body ended before its Content-Length: the client went away or went silent"
BAD_CHUNKS = "the chunked body is malformed (Transfer-Encoding: chunked)"
# A hook URL without the path is the usual mistake; werkzeug's own words would not say what the path is.
NO_SUCH_PATH = "no such path: GitLab's hook URL ends with /gitlab-webhook (POST); /healthz answers GET"
DELIVERY_THREADS = 32          # concurrent sends per process: many owners, or many webhooks at once
POSTING_THREADS = 16           # concurrent group posts per process (a bot takes 5 a second)


@dataclass(frozen=True)
class Service:
    """What one process of the service is made of (`app.extensions["gitlab_feishu"]`); threads None when off."""
    settings: Settings
    owners: OwnersFile
    users: UsersFile
    outbox: Outbox
    notifier: Notifier
    worker: RetryWorker | None          # None in dry-run, like the credentials check
    credentials: CredentialCheck | None
    watcher: FileWatcher

    def stop(self) -> None:
        """Stop every background thread and wait for it (each a no-op when never started)."""
        for thread in (self.worker, self.credentials, self.watcher):
            if thread is not None:
                thread.stop()


def create_app(settings: Settings | Mapping[str, str] | None = None, *, clock: Callable[[], float] = time.time,
               background: bool = True) -> Flask:
    """Build the service. Without arguments, settings come from the environment and `.env`;
    a mapping of setting names (`{"FEISHU_APP_ID": ...}`) stands for the environment alone.

    `background` starts this process's threads: the retry worker, the credentials self-check and the
    owners/users file watcher (tests that drive these by hand leave it off).
    """
    if settings is None:
        settings = Settings.from_env()
    elif isinstance(settings, Mapping):
        settings = Settings.from_mapping(settings)
    owners = OwnersFile(settings.owners_file, last_good=settings.data_dir / "last-good-owners.json")
    users = UsersFile(settings.users_file, last_good=settings.data_dir / "last-good-users.json")
    watcher = FileWatcher([owners, users])
    lease_owner = process_owner()
    deliverer = worker = credentials = None
    # In dry-run too: it remembers the pipelines, so a success that fixes a failure says so.
    outbox = Outbox(settings.data_dir / "outbox.sqlite3", clock=clock)
    if settings.dry_run:
        log.warning("FEISHU_APP_ID is not set: dry run, cards are written to the log and not sent")
    else:
        feishu = FeishuClient(settings.feishu_base_url, settings.feishu_app_id, settings.feishu_app_secret,
                              shared=SharedCache(settings.data_dir / "feishu_cache.sqlite3"))
        alerter = Alerter(settings, outbox, lease_owner=lease_owner, clock=clock) if settings.admin_emails else None
        pool = ThreadPoolExecutor(max_workers=DELIVERY_THREADS, thread_name_prefix="deliver")
        # An injected clock that can sleep (tests' FakeClock moves itself instead) does so for every wait.
        sleep = getattr(clock, "sleep", time.sleep)
        pacer = Pacer(settings.data_dir / "pacing.sqlite3", clock=clock, sleep=sleep) if settings.feishu_pacing \
            else None
        if pacer is None:
            log.warning("FEISHU_PACING=off: cards are sent without taking turns under Feishu's rate limits; a burst "
                        "will meet 429s (meant only for capacity runs against a fake without quotas)")
        deliverer = Deliverer(outbox, feishu, pool=pool, retry_base=settings.retry_base_seconds, pacer=pacer,
                              clock=clock, sleep=sleep, on_failed=alerter.delivery_failed if alerter else None,
                              chats=BotClient(), chat_secret=lambda url: owners.current().chat_secret(url),
                              chat_pool=ThreadPoolExecutor(max_workers=POSTING_THREADS, thread_name_prefix="post"))
        worker = RetryWorker(outbox, deliverer, retry_base=settings.retry_base_seconds, clock=clock,
                             owner=lease_owner, watch_queue=alerter.watch_queue if alerter else None)
        deliverer.on_due = worker.wake
        credentials = CredentialCheck(feishu)
        feishu.on_token_answer = credentials.heard
        if background:
            worker.start()
            credentials.start()
    if background:
        watcher.start()
    if not settings.gitlab_webhook_secret and not settings.gitlab_signing_token:
        log.warning("GITLAB_WEBHOOK_SECRET is not set: anyone who can reach this service can make it send cards")
    notifier = Notifier(settings, owners, outbox, deliverer, lease_owner=lease_owner, clock=clock, users=users)

    app = Flask(__name__)
    app.json.ensure_ascii = False      # Chinese stays readable on GitLab's Recent events page
    app.json.sort_keys = False
    # One byte over the limit lets a chunked body (no Content-Length) show that it is too large.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    app.extensions["gitlab_feishu"] = Service(settings, owners, users, outbox, notifier, worker, credentials, watcher)
    app.wsgi_app = one_slash(app.wsgi_app)
    protect(app, settings)

    # strict_slashes=False: a hook URL ending in "/gitlab-webhook/" is delivered too, not answered 404.
    @app.post("/gitlab-webhook", strict_slashes=False)
    def gitlab_webhook():
        started = clock()
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _refused(413, TOO_LARGE)
        if settings.gitlab_webhook_secret and not token_matches(request.headers.get("X-Gitlab-Token"),
                                                                settings.gitlab_webhook_secret):
            return _refused(401, "missing or wrong X-Gitlab-Token: set the hook's Secret token to GITLAB_WEBHOOK_SECRET")
        try:
            body = request.get_data(cache=False)
        except Exception as exc:
            # gunicorn parses a chunked body while the app reads it, and raises its own parse errors here
            # (InvalidChunkSize, ChunkMissingTerminator, ...): the sender's mistake, not an internal error.
            if not type(exc).__module__.startswith("gunicorn.http"):
                raise
            return _refused(400, BAD_CHUNKS)
        if len(body) > MAX_BODY_BYTES:
            return _refused(413, TOO_LARGE)
        if len(body) < (request.content_length or 0):     # gunicorn hands over what came before the client left
            return _refused(400, CUT_SHORT)
        if settings.gitlab_signing_token and (problem := signature_problem(settings.gitlab_signing_token,
                                                                           request.headers, body, clock())):
            return _refused(401, problem)
        try:
            payload = decode_payload(body)
        except (ValueError, RecursionError):
            return _refused(400, "body is not JSON")
        return jsonify(notifier.notify(payload, request.headers, started))

    @app.get("/healthz")
    def healthz():
        write_error = notifier.write_error
        try:
            counts, last_sent_at = outbox.counts(), outbox.last_sent_at()
        except sqlite3.DatabaseError as exc:
            if not storage_failure(exc):
                raise
            counts, last_sent_at = None, None
            write_error = {"at": iso_time(clock()), "error": f"DATA_DIR/{outbox.path.name} cannot be read ({exc}: "
                                                             f"{why_unwritable(exc)}); see README, Troubleshooting"}
        return jsonify({
            "status": "degraded" if write_error or (credentials and credentials.refused) else "ok",
            "mode": "dry-run" if settings.dry_run else "live",
            "owners": owners.state(),
            "users": users.state(),
            "outbox": counts,
            "outbox_write_error": write_error,
            "feishu_credentials": credentials.describe() if credentials else "not checked: dry run",
            "last_delivery_at": iso_time(last_sent_at),
        })

    @app.errorhandler(ClientDisconnected)
    def body_cut_short(exc: ClientDisconnected):
        # A read that failed (gthread_worker cuts off a silent client); werkzeug's own words ("The browser
        # (or proxy) sent a request ...") would not say what happened.
        return _refused(400, CUT_SHORT)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _refused(exc.code or 500, NO_SUCH_PATH if exc.code == 404 else exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("unexpected error handling %s %s", request.method, request.path)
        if request.endpoint == "gitlab_webhook":
            # A 5xx would count toward GitLab disabling the hook; the log has the traceback.
            return jsonify({"status": "failed", "reason": "internal error; see the service log", "deliveries": []})
        return _error(500, "internal error; see the service log")

    return app


def one_slash(wsgi_app):
    """WSGI: repeated slashes in a path count as one. werkzeug answers them with a 308 redirect, which GitLab
    counts as a delivery without following it: a hook URL written "https://host/" + "/gitlab-webhook" lost every
    event while the hook looked healthy."""
    def app(environ, start_response):
        environ["PATH_INFO"] = _SLASHES.sub("/", environ.get("PATH_INFO", ""))
        return wsgi_app(environ, start_response)
    return app


def gunicorn_app() -> Flask:
    """The app `gunicorn webhook_server:app` serves: on the settings gunicorn.conf.py read in the master
    (settings.serving), so every worker, a replacement or a reload's, runs on what the master checked; on
    the environment's when gunicorn runs without that file."""
    try:
        settings = serving() or Settings.from_env()
        configure_logging(settings, to_file=False)
        return create_app(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None   # gunicorn's "worker failed to boot": stop, don't respawn


def stop_background(app: object, *, wait: bool = True) -> None:
    """Stop the process's retry thread, letting a round in flight finish (`wait`), before Python shuts down the
    delivery threads under it: stopping with deliveries queued logged an ERROR with a traceback. (The other
    threads hold nothing that must finish.)"""
    service = getattr(app, "extensions", {}).get("gitlab_feishu")
    if service is not None and service.worker is not None:
        service.worker.stop(wait=wait)


def _error(status: int, reason: str):
    return jsonify({"status": "error", "reason": reason}), status


def _refused(status: int, reason: str):
    """An error answer, logged: the service's own log shows a wrong hook URL or body, whatever serves it
    (waitress keeps no access log)."""
    log.warning("refused %s %s from %s: %d %s", request.method, request.path, request.remote_addr, status, reason)
    return _error(status, reason)
