"""`.env` as Windows Notepad saves it: UTF-8, "Unicode" (UTF-16) or "ANSI" (GBK), read as KEY=value lines by
python-dotenv. settings.py turns them into the service's settings."""
from __future__ import annotations

import codecs
import io
import logging
import re
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

log = logging.getLogger(__name__)


class EnvFileError(ValueError):
    """`.env` cannot be read; the message names the file (and line) and says what to do."""


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=value lines of `.env`, however Notepad saved it: UTF-8, "Unicode" (UTF-16) or "ANSI" (GBK)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EnvFileError(f"{path} cannot be read: {exc.strerror}") from None
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    for encoding in ("utf-16",) if utf16 else ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise EnvFileError(f"{path} is not readable as UTF-8, UTF-16 or GBK text: open it in Notepad, "
                           "File > Save As, choose Encoding: UTF-8 and save")
    if encoding != "utf-8-sig":
        log.warning("%s was read as %s; if a value looks garbled, open it in Notepad, File > Save As, choose "
                    "Encoding: UTF-8 and save", path, "UTF-16" if utf16 else "GBK")
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # python-dotenv would skip this line and the next ones up to a closing quote, with only a warning
            # that names neither file nor setting: a lost GITLAB_WEBHOOK_SECRET would let anyone send. The line
            # itself is not quoted here: it may hold a secret.
            raise EnvFileError(f"{path}, line {binding.original.line}: cannot be read as NAME=value"
                               f"{_why_unreadable(binding.original.string)}")
        if binding.key is not None and binding.value is None:
            # "FEISHU_APP_SECRET:abc" sets nothing; the line is not quoted, as it may hold a secret.
            full_width = "＝" in binding.original.string     # an input method in full-width mode
            log.warning("%s, line %d: there is no '=' on this line, so it sets nothing; write NAME=value%s",
                        path, binding.original.line,
                        " (its ＝ is full-width: retype it with the input method in half-width mode)" if full_width
                        else "")
    # interpolate=False: a generated secret holding "${" is taken as written, not expanded to something else.
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text), interpolate=False).items() if v is not None}


def _why_unreadable(line: str) -> str:
    # A quoted Windows path ending in a backslash: python-dotenv reads \" and \' as escaped quotes, so the value
    # never closes (single quotes do not help).
    first = (line.splitlines() or [""])[0]                # an unclosed quote may run on into the next lines
    if re.search(r"""\\["']\s*(#.*)?$""", first):           # ... \" or \' at the end, a comment after it
        return ('; a quoted value ending in a backslash ("C:\\data\\") never closes: write a Windows path '
                "without quotes")
    return "; write NAME=value, with a value in quotes closed on the same line"
