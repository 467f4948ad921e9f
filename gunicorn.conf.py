"""gunicorn settings for Linux production: `gunicorn -c gunicorn.conf.py webhook_server:app`.

Sized for a 2-core server: the work is waiting on Feishu, not computing, so
two processes with many threads each. HOST and PORT come from the service's
own settings (environment or .env); command-line flags override this file.
"""
import sys

from gitlab_feishu.settings import ConfigError, Settings

try:
    _settings = Settings.from_env()
except ConfigError as exc:
    sys.exit(f"error: {exc}")      # one line, not gunicorn's traceback of this file

bind = f"{_settings.host}:{_settings.port}"
workers = 2                    # one per core
worker_class = "gthread"
threads = 32                   # webhooks in flight per process, each waiting about one Feishu round trip
timeout = 30                   # well above DELIVERY_DEADLINE_SECONDS: a worker is only killed if truly stuck
graceful_timeout = 30
keepalive = 5
backlog = 512
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
preload_app = False            # each worker starts its own retry thread after the fork


def on_starting(server):
    # With --preload the app, its threads and its SQLite connections would be made once in the
    # master and copied into each worker by fork, where the threads no longer run.
    if server.cfg.preload_app:
        sys.exit("error: do not run this service with --preload (preload_app): each worker must build "
                 "the app itself, after the fork")
