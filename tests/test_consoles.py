"""What reaches a console: its own encoding (GBK on a Chinese Windows), and never a crash on Chinese."""
from __future__ import annotations

import io
import logging
import sys

import pytest

from gitlab_feishu.logs import configure_logging


@pytest.fixture
def console(monkeypatch):
    """A stand-in for sys.stderr whose encoding is GBK (a PowerShell pipe or redirect on a Chinese Windows)."""
    def make(encoding: str) -> io.BytesIO:
        raw = io.BytesIO()
        monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding=encoding, write_through=True))
        return raw
    loggers = [logging.getLogger(name) for name in ("gitlab_feishu", "waitress")]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield make
    for logger, (handlers, level, propagate) in zip(loggers, saved):
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


@pytest.mark.parametrize(("encoding", "expected"), [
    ("gbk", "推送人 张三".encode("gbk")),                 # readable Chinese, in the console's own bytes
    ("cp437", rb"\u63a8\u9001\u4eba \u5f20\u4e09"),     # a console without Chinese: escaped, not a crash
])
def test_the_console_log_keeps_the_consoles_encoding(settings, console, encoding, expected):
    raw = console(encoding)
    configure_logging(settings, to_file=False)
    logging.getLogger("gitlab_feishu.test").warning("推送人 张三")
    assert expected in raw.getvalue()
