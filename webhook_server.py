"""GitLab push webhooks to Feishu (Lark) cards for each project's owners.

    python webhook_server.py                      serve with waitress (Windows and Linux)
    gunicorn -c gunicorn.conf.py webhook_server:app   serve on Linux in production
    python webhook_server.py --help               the maintenance commands

Settings come from the environment and `.env`; see README.md.
"""
import sys

from gitlab_feishu.app import create_app, gunicorn_app
from gitlab_feishu.cli import main

__all__ = ["create_app", "main"]     # and `app`, built on first access (below)


def __getattr__(name):
    # `app` is built on first access, so importing this module (tests, tools) has no side effects.
    if name == "app":
        globals()["app"] = gunicorn_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
