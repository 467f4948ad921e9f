"""gunicorn settings for Linux production: `gunicorn -c gunicorn.conf.py webhook_server:app`.

Sized for a 2-core server: the work is waiting on Feishu, not computing, so
a few processes with many threads each. HOST and PORT come from the service's
own settings (environment or .env); command-line flags override this file.
The choices below were measured with bench/bench.py (README, Performance).
"""
import errno
import os
import socket
import sys

import gunicorn

# A USR2 upgrade re-executes `python .../gunicorn/__main__.py`, which puts gunicorn's own folder first on
# sys.path: its `http` package then hides the standard library's, and no worker could import Flask or
# requests (benoitc/gunicorn#3281). This file runs in the master before any worker is forked.
_GUNICORN_DIR = os.path.dirname(os.path.abspath(gunicorn.__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _GUNICORN_DIR]
for _name in [name for name in sys.modules if name == "http" or name.startswith("http.")]:
    if os.path.abspath(getattr(sys.modules[_name], "__file__", None) or "").startswith(_GUNICORN_DIR + os.sep):
        del sys.modules[_name]

from gitlab_feishu.watched import check_files  # noqa: E402  (after the sys.path repair above)
from gitlab_feishu.settings import ConfigError, Settings, serve_with, serving, serving_bind

# Read here for `bind` (gunicorn's -e/raw_env values are not in the environment yet: they set no address; use
# --bind). The workers' settings are read again once they are (on_starting, on_reload), and kept by the master
# for the workers (settings.serving).
try:
    _settings = Settings.from_env()
except ConfigError as exc:
    if serving() is None:
        sys.exit(f"error: {exc}")      # one line, not gunicorn's traceback of this file
    bind = serving_bind()              # a reload with a broken .env: on_reload says so; the address stays
else:
    # An IPv6 address goes in brackets, or gunicorn reads its last group as the port.
    bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
# Two per core: a process's threads take turns on its GIL, and with four processes the turns are
# short (45 MB each). Two workers reach the same webhooks/s since connections are spread evenly (before,
# 2-3% fewer), but four hold twice the threads for a burst or an outage, when each waits up to the deadline.
workers = 4
# gthread, with workers taking turns at new connections and a 10 s deadline on each request's arrival.
worker_class = "gitlab_feishu.gthread_worker.ServiceThreadWorker"
threads = 32                   # webhooks in flight per process, each waiting about one Feishu round trip
timeout = 30                   # well above DELIVERY_DEADLINE_SECONDS: a worker is only killed if truly stuck
graceful_timeout = 30
keepalive = 5
backlog = 512
# No reuse_port: a socket per worker spreads kept-alive connections more evenly (about 3% more
# webhooks/s), but a reload (HUP) then resets the connections queued at the old workers' sockets, and
# GitLab counts each as a failed delivery.
reuse_port = False
# gunicorn's access log on the console (systemd's journal), beside the service's own line per webhook:
# it also shows what never reaches the app's routes (a hook URL without /gitlab-webhook, scanners).
# It costs about 3% of webhooks/s (bench/bench.py); `--access-logfile /dev/null` turns it off.
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
preload_app = False            # each worker starts its own retry thread after the fork
# gunicorn derives the scheme from X-Forwarded-Proto/-Ssl/-Protocol when the peer is 127.0.0.1 (its own
# forwarded_allow_ips, whatever TRUSTED_PROXIES says), and answers 400 "Contradictory scheme headers" before the
# app when they disagree: behind the README's nginx any caller could add X-Forwarded-Ssl: off and get that 400,
# unlogged by the service, instead of ALLOWED_SOURCES' 403. The service never uses the scheme.
secure_scheme_headers = {}
# gunicorn 25.1+ opens a control socket under $HOME/.gunicorn; the service user's home in the README's
# systemd unit is not writable, so every start logged an ERROR for a feature this service does not use.
control_socket_disable = True


def on_starting(server):
    # With --preload the app, its threads and its SQLite connections would be made once in the
    # master and copied into each worker by fork, where the threads no longer run.
    if server.cfg.preload_app:
        sys.exit("error: do not run this service with --preload (preload_app): each worker must build "
                 "the app itself, after the fork")
    # Here, once, before any worker: a worker that cannot start makes gunicorn stop with tracebacks. A worker
    # started later (one replacing a dead worker, a reload) routes by the last good version instead.
    try:
        settings = Settings.from_env()
        check_files(settings)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    serve_with(settings, bind)
    if os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS"):
        return         # listening sockets handed over (USR2 upgrade, systemd): the port is ours already
    for address in server.cfg.address:
        if isinstance(address, tuple):
            exit_if_the_port_is_taken(*address[:2])


def on_reload(server):
    # HUP: the new workers run on .env as it is now, unless an edit broke it; exiting would stop the service.
    try:
        serve_with(Settings.from_env(), bind)
    except ConfigError as exc:
        print(f"error: {exc}; the reload keeps the settings the service ran with until .env is fixed",
              file=sys.stderr, flush=True)


def worker_exit(server, worker):
    # In the worker, after its last request and before Python shuts down. (gunicorn calls it in the master
    # too, for a worker that never started there: no app, and no Flask to import into the master.)
    app = getattr(worker, "wsgi", None)
    if app is not None:
        from gitlab_feishu.app import stop_background
        stop_background(app)


def exit_if_the_port_is_taken(host: str, port: int) -> None:
    """Exit with one line if something listens on host:port already, this service included (gunicorn
    itself would retry for five seconds, then print "Connection in use" and "Can't connect")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET       # as gunicorn picks it: a name is IPv4
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as gunicorn binds: TIME_WAIT is no user
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EACCES:
                sys.exit(f"error: cannot listen on {host}:{port}: {exc}: a port under 1024 needs root; set PORT in "
                         ".env to 1024 or above (and put a proxy on port 80 or 443 in front)")
            if exc.errno != errno.EADDRINUSE:
                sys.exit(f"error: cannot listen on {host}:{port}: {exc}: set HOST in .env to an address of this "
                         "machine (0.0.0.0 for all of them)")
            sys.exit(f"error: cannot listen on {host}:{port}: {exc}: another program, or this service already "
                     f"running, uses port {port}; stop it or set PORT in .env to a free port")
