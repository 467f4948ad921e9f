"""Logging: UTF-8 everywhere, to the console and (under waitress) a rotating file."""
from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time

from .settings import ConfigError, Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(process)d] %(message)s"


def configure_logging(settings: Settings, *, to_file: bool) -> None:
    """Set up the `gitlab_feishu` loggers once, before the app is built.

    A rotating file is only safe with one writing process, so it is used by
    `python webhook_server.py` (waitress); under gunicorn logs go to the
    console, where systemd's journal collects them.
    """
    for stream in (sys.stdout, sys.stderr):
        # Keep the console's own encoding (a GBK pipe in PowerShell shows GBK, not UTF-8 mojibake); what it
        # cannot show is escaped instead of crashing. The log file below is UTF-8 whatever the console.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if to_file:
        try:
            settings.log_dir.mkdir(parents=True, exist_ok=True)
            handlers.append(RotatingFile(
                settings.log_dir / "webhook_server.log", maxBytes=10 * 1024 * 1024, backupCount=5,
                encoding="utf-8", errors="backslashreplace"))   # a lone surrogate is written escaped, not refused
        except OSError as exc:
            raise ConfigError(f"LOG_DIR={settings.log_dir}: {exc.filename} cannot be written ({exc.strerror}): "
                              "the service's user must be able to write that folder") from None
    formatter = OneLineFormatter(FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
    # waitress's own warnings ("Task queue depth is 40": every thread busy) belong in the same file.
    for name in ("gitlab_feishu", "waitress"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(getattr(logging, settings.log_level))
        logger.propagate = False


class OneLineFormatter(logging.Formatter):
    """Every record on one line: text from callers (a path, a pusher's name) cannot forge a line of its own.
    A traceback still follows on lines of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _CONTROL.sub(_escape_control, super().formatMessage(record))


# Everything a terminal or an editor may act on: line breaks of any kind (\v, \f, \x1c-\x1e, NEL, U+2028/9
# end a line for splitlines() and many viewers), escape sequences (ESC [2K erases the line on screen) and bidi
# overrides (an unclosed U+202E shows the rest of the line backwards).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape_control(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


class RotatingFile(logging.handlers.RotatingFileHandler):
    """A rotating log that survives a file it cannot move. On Windows a viewer that holds the log open
    (PowerShell's `Get-Content -Wait`, some tail tools, a virus scanner) makes the rename fail; the standard
    handler has by then shifted the old files along, so it drops every record and pushes out one old file
    per record until the viewer lets go. This one moves the log aside first, in one step, and only then shifts
    the old files; when it cannot, it keeps writing to the log and tries again a minute later."""

    RETRY_SECONDS = 60.0
    _retry_at = 0.0

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return time.monotonic() >= self._retry_at and bool(super().shouldRollover(record))

    def doRollover(self) -> None:
        if self.stream:
            self.stream.close()
            self.stream = None
        aside = self.baseFilename + ".rotating"
        try:
            # A rotation cut short (a crash, a held file) left its file aside: it goes in first, the log later.
            if not os.path.exists(aside):
                os.replace(self.baseFilename, aside)
            self._shift_in(aside)
        except OSError:
            self._retry_at = time.monotonic() + self.RETRY_SECONDS
        finally:
            self.stream = self._open()

    def _shift_in(self, aside: str) -> None:
        """Shift the old files along and make `aside` the newest of them; when one is held open, undo the
        shift (bar the oldest, which was going anyway) and leave `aside` for the next try."""
        shifted: list[tuple[str, str]] = []
        try:
            for n in range(self.backupCount - 1, 0, -1):
                older, newer = f"{self.baseFilename}.{n}", f"{self.baseFilename}.{n + 1}"
                if os.path.exists(older):
                    os.replace(older, newer)
                    shifted.append((older, newer))
            os.replace(aside, f"{self.baseFilename}.1")
        except OSError:
            for older, newer in reversed(shifted):
                try:
                    os.replace(newer, older)
                except OSError:
                    break                     # the rest stay shifted: a gap in the numbers, nothing overwritten
            raise
