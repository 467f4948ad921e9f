"""GitLab push webhooks to Feishu (Lark) cards for each project's owners.

    python webhook_server.py                      serve with waitress (Windows and Linux)
    gunicorn -c gunicorn.conf.py webhook_server:app   serve on Linux in production
    python webhook_server.py --help               the maintenance commands

Settings come from the environment and `.env`; see README.md.
"""
import sys

from gitlab_feishu.app import create_app
from gitlab_feishu.cli import main

__all__ = ["app", "create_app", "main"]


def load_app():
    """The app for `gunicorn webhook_server:app`, configured from the environment."""
    import logging

    from gitlab_feishu.logs import configure_logging
    from gitlab_feishu.settings import ConfigError, Settings, serving

    try:
        try:
            settings, broken = Settings.from_env(), None
        except ConfigError as exc:
            # .env broken since gunicorn's master read it (see settings.serving): run on what the master has.
            settings, broken = serving(), exc
            if settings is None:
                raise
        configure_logging(settings, to_file=False)
        if broken:
            logging.getLogger("gitlab_feishu").error("%s; this worker runs with the settings the service started "
                                                     "with until .env is fixed", broken)
        return create_app(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None   # gunicorn's "worker failed to boot": stop, don't respawn


def __getattr__(name):
    # `app` is built on first access, so importing this module (tests, tools) has no side effects.
    if name == "app":
        globals()["app"] = load_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
