"""`python webhook_server.py [--outbox | --retry-failed | --match PATH | --wire-hooks]`: serve, or look, or set up."""
from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import signal
import socket
import sqlite3
import sys
from typing import Callable

from .gitlab import MAX_BODY_BYTES
from .hookplan import HOOK_PATH, desired_hook
from .reports import retry_failed, show_match, show_outbox
from .setting_values import EVENT_KINDS, os_text
from .settings import ConfigError, Settings

log = logging.getLogger("gitlab_feishu.cli")

WAITRESS_THREADS = 32          # webhooks served at once; each may wait on Feishu for a round trip
SELF_CHECK_WAIT = 2.0          # the banner waits this long for the Feishu credentials check
PORT_PROBE_SECONDS = 0.5       # a listener on this machine accepts at once; Windows takes ~2 s to refuse
# Windows reports a taken port as WSAEADDRINUSE (10048), not EADDRINUSE; WSAEACCES (10013) when another
# account's program holds it exclusively, or Windows reserves it (Hyper-V, WSL and Docker reserve ranges).
_ADDRESS_IN_USE = {errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE),
                   getattr(errno, "WSAEACCES", errno.EADDRINUSE)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webhook_server.py",
                                     description="GitLab webhooks to Feishu cards for each project's owners.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--outbox", action="store_true", help="list queued and failed deliveries, and why")
    action.add_argument("--retry-failed", action="store_true", help="put failed deliveries back in the queue")
    action.add_argument("--match", metavar="PROJECT_PATH", help="explain who an event in this project would notify")
    action.add_argument("--wire-hooks", action="store_true",
                        help="create or update the GitLab webhook of every project owners.json names")
    parser.add_argument("--name", help="with --match: the project's display name (default: its last path segment)")
    parser.add_argument("--branch", help="with --match: the branch pushed to, or a merge request's target branch")
    parser.add_argument("--event", choices=EVENT_KINDS, default="push", help="with --match: the event (default push)")
    parser.add_argument("--default-branch", default="main",
                        help="with --match: the project's default branch, for :default and :protected (default main)")
    parser.add_argument("--protected", choices=("yes", "no"),
                        help="with --match: whether GitLab protects the branch (the payload's ref_protected or "
                             "protected_ref), for :protected; default: only the default branch counts")
    wiring_mode = parser.add_mutually_exclusive_group()
    wiring_mode.add_argument("--dry-run", action="store_true", help="with --wire-hooks: show, change nothing")
    wiring_mode.add_argument("--check", action="store_true",
                             help="with --wire-hooks: report each project's hook and whether GitLab disabled it")
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        if isinstance(value, str):
            setattr(args, name, os_text(value))      # a C locale hands Chinese over as surrogate escapes
    if (args.dry_run or args.check) and not args.wire_hooks:
        parser.error("--dry-run and --check go with --wire-hooks")
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")   # a console that cannot show Chinese must not crash
    try:
        settings = Settings.from_env()
        if args.outbox:
            return _printed(lambda: show_outbox(settings))
        if args.retry_failed:
            return retry_failed(settings)
        if args.match:
            return _printed(lambda: show_match(settings, args.match, args.name, branch=args.branch, event=args.event,
                                               default_branch=args.default_branch,
                                               protected=None if args.protected is None else args.protected == "yes"))
        if args.wire_hooks:
            from .wiring import wire_hooks

            return wire_hooks(settings, dry_run=args.dry_run, check_only=args.check)
        return serve(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.OperationalError as exc:
        from .db import is_locked

        if not is_locked(exc):
            raise
        print(f"error: {settings.data_dir / 'outbox.sqlite3'} is locked by another program (an sqlite3 shell or "
              "a backup tool in a transaction?); close it and try again", file=sys.stderr)
        return 1


def _printed(report: Callable[[], int]) -> int:
    """Run a report for the console. Piped into `head` or `more`, which may close early, the reader has what
    it wanted: no traceback for that (Python's advice: point stdout at devnull so the exit flush is quiet)."""
    try:
        code = report()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


def serve(settings: Settings) -> int:
    """Serve with waitress, which runs on Windows and Linux alike."""
    import waitress
    from waitress import wasyncore

    from .app import create_app, stop_background
    from .watched import check_files
    from .logs import configure_logging
    from .waitress_channel import listeners, take_over

    configure_logging(settings, to_file=True)
    check_files(settings)
    app = create_app(settings)
    try:
        # Bound before waiting for the self-check: deliveries meanwhile wait in the backlog, not refused.
        # clear_untrusted_proxy_headers=False: waitress would drop X-Forwarded-For before the app sees it;
        # the app itself believes it only from TRUSTED_PROXIES (access.py). waitress reads a whole body
        # before the app can refuse it, so it stops at GitLab's limit itself; and idle connections, which
        # anyone can open, are dropped after 20 s and may number 400 (Windows' select() takes 512).
        refuse_a_port_windows_would_share(settings.host, settings.port)
        # waitress answers a HOST it cannot resolve with a ValueError, as it does a bad keyword: asked first here.
        socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # HOST=:: means every address, IPv4's too, as under gunicorn: waitress alone would take IPv6 only.
        where = {"listen": f"0.0.0.0:{settings.port} [::]:{settings.port}"} if settings.host == "::" else \
            {"host": settings.host, "port": settings.port}
        server = waitress.create_server(
            app, **where, threads=WAITRESS_THREADS, ident="gitlab-feishu",
            channel_timeout=20, connection_limit=400, max_request_body_size=MAX_BODY_BYTES + 1,
            clear_untrusted_proxy_headers=False)
        take_over(server, settings.allowed_sources, settings.trusted_proxies)
    except (socket.gaierror, UnicodeError):      # a HOST that is no address and no name this machine resolves
        print(f"error: HOST={settings.host!r} is not an address of this machine: write 0.0.0.0 (every address), "
              "127.0.0.1 (behind a proxy) or one of this machine's IPs", file=sys.stderr)
        return 2
    except OSError as exc:
        hint = (f": another program, or this service already running, uses port {settings.port} (or Windows "
                "reserves it: netsh interface ipv4 show excludedportrange protocol=tcp); stop it or set PORT in .env "
                "to a free port") if exc.errno in _ADDRESS_IN_USE else ""
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc}{hint}", file=sys.stderr)
        return 1
    print("\n".join(_banner(settings, app)), flush=True)
    # `kill`, `systemctl stop`, `docker stop`: finish the webhooks in flight and answer GitLab, as Ctrl+C does.
    # waitress's own wait is 5 s; a DELIVERY_DEADLINE_SECONDS of up to 8 needs as long as the deadline.
    signal.signal(signal.SIGTERM, _interrupt)
    finish_in_flight = functools.partial(server.task_dispatcher.shutdown,
                                         timeout=settings.delivery_deadline_seconds + 1)

    def stop(*args, **kwargs):
        # New connections are refused at once, as under gunicorn, not taken into the backlog while the webhooks
        # in flight finish and then reset: GitLab would wait seconds to learn the delivery failed.
        for listener in listeners(server):
            # The socket only: a listener's own close() also closes waitress's wake-up pipe, which each request
            # still in flight writes to when it ends (an error, or a byte into a file opened meanwhile).
            wasyncore.dispatcher.close(listener)
        return finish_in_flight()
    server.task_dispatcher.shutdown = stop
    try:
        server.run()                  # returns after Ctrl+C or SIGTERM, once the requests in flight are done
        stop_background(app)
    except KeyboardInterrupt:         # a second Ctrl+C or SIGTERM: stop now; the rows keep their lease
        stop_background(app, wait=False)
        print("stopped without waiting for the webhooks or the retry round under way; what they had not sent "
              "goes out after the next start", file=sys.stderr)
    return 0


def refuse_a_port_windows_would_share(host: str, port: int) -> None:
    """Raise OSError if something on Windows accepts connections on host:port already. waitress sets
    SO_REUSEADDR, which there lets a second program bind a port in use (a second start_server.bat beside the
    Windows service) and share its connections without a word. A probe bound with SO_EXCLUSIVEADDRUSE would
    also refuse a restart while the last run's connections linger in TIME_WAIT, so this one connects instead.
    Elsewhere SO_REUSEADDR never allows that, and waitress's own bind says so."""
    if sys.platform != "win32":
        return
    # HOST=:: binds 0.0.0.0 too (serve), so a program on either family's port would be shared.
    targets = {"": ("127.0.0.1",), "0.0.0.0": ("127.0.0.1",), "::": ("::1", "127.0.0.1")}.get(host, (host,))
    for target in targets:
        try:
            with socket.create_connection((target, port), timeout=PORT_PROBE_SECONDS):
                pass
        except OSError:
            continue         # refused, or no answer: nothing listens here that a bind could share
        raise OSError(errno.EADDRINUSE, f"a program already accepts connections on port {port}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _banner(settings: Settings, app) -> list[str]:
    owners = app.extensions["gitlab_feishu"].owners
    credentials = app.extensions["gitlab_feishu"].credentials
    if credentials is None:
        feishu_state = "not checked: dry run"
    elif credentials.wait(SELF_CHECK_WAIT):
        feishu_state = credentials.describe()
    else:
        feishu_state = "unknown: still checking (the log and /healthz will say)"
    return [
        "GitLab -> Feishu notifier",
        f"  mode:    {'dry-run (FEISHU_APP_ID not set: cards are logged, not sent)' if settings.dry_run else 'live'}",
        f"  owners:  {os_text(str(settings.owners_file))} ({len(owners.current())} entries)",
        f"  webhook: {webhook_url(settings)}  (GitLab: Settings > Webhooks > URL)",
        f"  secret:  {_secret_state(settings)}",
        f"  logs:    {os_text(str(settings.log_dir / 'webhook_server.log'))}",
        f"  feishu:  credentials {feishu_state}",
        f"  sources: {_networks(settings.allowed_sources) or 'anyone (ALLOWED_SOURCES not set)'}"
        + (f" (trusted proxies: {_networks(settings.trusted_proxies)})" if settings.trusted_proxies else ""),
        f"  alerts:  {_alerts_state(settings)}",
    ]


def _alerts_state(settings: Settings) -> str:
    if not settings.admin_emails:
        return "off (ADMIN_EMAILS not set)"
    return "off in dry-run" if settings.dry_run else ", ".join(settings.admin_emails)


def _secret_state(settings: Settings) -> str:
    signed = " (and GITLAB_SIGNING_TOKEN: signatures verified)" if settings.gitlab_signing_token else ""
    if settings.gitlab_webhook_secret:
        return "set" + signed
    if signed:
        return "not set; deliveries must carry a valid GitLab 19 signature (GITLAB_SIGNING_TOKEN)"
    return "NOT SET - anyone who can reach this port can send"


def webhook_url(settings: Settings) -> str:
    """The URL to paste into GitLab: PUBLIC_URL when set, else this machine's address on its network."""
    if settings.public_url:
        return desired_hook(settings.public_url, settings.notify_events).url
    host = _lan_address() if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}{HOOK_PATH}"


def _lan_address() -> str:
    """The address other machines reach this one at (the route's source address; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _networks(networks) -> str:
    return ", ".join(str(n.network_address if n.num_addresses == 1 else n) for n in networks)
