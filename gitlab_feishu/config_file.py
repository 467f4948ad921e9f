"""Hand-edited JSON files (owners.json, users.json): reading and checking them safely.

People edit these files in Windows Notepad, with a Chinese input method, while
the service runs. So a file is decoded whatever Notepad saved it as (or
refused with what to do), and every mistake names the file, line and key;
`watched.WatchedFile` reloads them and keeps the last good version while an
edit is broken.
"""
from __future__ import annotations

import codecs
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

from .settings import ConfigError

_JSON_SPACE = " \t\r\n"
_RESAVE = "open it in Notepad, File > Save As, choose Encoding: UTF-8 and save"
_FULL_WIDTH_PUNCTUATION = "“”‘’，：｛｝［］"   # what a Chinese input method types instead of JSON's ASCII



class UnreadableFile(ConfigError):
    """The file is there but could not be read just now (an editor or a virus scanner holding it)."""


def read_config_text(path: Path, missing_hint: str, log: logging.Logger) -> tuple[str, list[str]]:
    """The file's text and any encoding warnings (also logged); a ConfigError says what to fix."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: {missing_hint}") from None
    except OSError as exc:
        raise UnreadableFile(f"{path} cannot be read: {exc.strerror}") from None
    text, warnings = _decode(data, path)
    for warning in warnings:
        log.warning("%s", warning)
    return text, warnings


def object_members(text: str, path: Path, example: str) -> Iterator[tuple[str, Any, int, str, int]]:
    """(key, value, line, where, value offset) for each member of the JSON object in `text`, in file order.

    `where` ("FILE, line N: key "K"") starts the caller's own error messages; the value's offset
    lets `members_at` walk an object value for its own line numbers. A ConfigError
    names the file and line when the text is empty, not JSON, not an object, or repeats a key;
    `example` shows what the object should look like.
    """
    if not text.strip():
        raise ConfigError(f"{path} is empty: it must be a JSON object such as {example}")
    try:
        top = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}, {_json_error(text, exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested far too deeply to be this file; it must be a JSON object such as "
                          f"{example}") from None
    if not isinstance(top, dict):
        raise ConfigError(f"{path}, line 1: the top level must be a JSON object such as {example}, "
                          f"not {describe(top)}")
    first_line: dict[str, int] = {}
    for key, value, line, value_at in members_at(text, 0):
        where = f"{path}, line {line}: key {json.dumps(key, ensure_ascii=False)}"
        if key in first_line:
            raise ConfigError(f"{where} appears twice (first on line {first_line[key]}); "
                              "JSON would keep only the last one, so merge the two into one entry")
        first_line[key] = line
        yield key, value, line, where, value_at


def describe(value: Any) -> str:
    """What a JSON value is, for an error message: "a list", "null", "the number 5"."""
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    return names.get(type(value), f"the number {value}" if isinstance(value, (int, float)) else "that")


def _decode(data: bytes, path: Path) -> tuple[str, list[str]]:
    """UTF-8 (BOM or not) is normal; UTF-16 with a BOM or a plausible GBK file is accepted with a warning."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), [f"{path} was decoded as UTF-16 (Notepad's \"Unicode\"); "
                                           f"to keep it portable, {_RESAVE}"]
        except UnicodeDecodeError:
            raise ConfigError(f"{path} starts like UTF-16 but is not valid UTF-16; {_RESAVE}") from None
    if b"\x00" in data:                          # UTF-16 without its byte-order mark, which UTF-8 would read
        raise ConfigError(f"{path} holds NUL bytes, as UTF-16 without a byte-order mark does; {_RESAVE}")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        utf8_error = exc
    line = data.count(b"\n", 0, utf8_error.start) + 1
    not_utf8 = f"{path} is not UTF-8 (byte 0x{data[utf8_error.start]:02x} on line {line})"
    try:
        # An old Notepad "ANSI" save on a Chinese Windows; trusted only when it also parses as JSON.
        text = data.decode("gb18030")
        json.loads(text)
    except json.JSONDecodeError as exc:
        # Readable as GBK but with a typo: say where, or the person re-saves and still has the typo.
        raise ConfigError(f"{not_utf8}; read as GBK (an \"ANSI\" save), {_json_error(text, exc)}; {_RESAVE}") \
            from None
    except (ValueError, RecursionError):
        raise ConfigError(f"{not_utf8} nor readable as GBK; {_RESAVE}") from None
    if any("\ue000" <= char <= "\uf8ff" for char in text):
        # Private-use characters: GBK bytes never make them, another encoding's (Big5's) often do.
        raise ConfigError(f"{not_utf8} nor GBK (read as GBK it holds characters no text has: Big5 or another "
                          f"encoding?); {_RESAVE}")
    return text, [f"{path} was decoded as GBK (an \"ANSI\" save); to avoid garbled names, {_RESAVE}"]


def members_at(text: str, start: int) -> Iterator[tuple[str, Any, int, int]]:
    """(key, value, line of the key, offset of the value) for each member of the object at `start`.

    `text` is valid JSON (json.loads accepted it), so this walk needs no error handling.
    """
    decoder = json.JSONDecoder()

    def skip(pos: int) -> int:
        while text[pos] in _JSON_SPACE:
            pos += 1
        return pos

    pos = skip(skip(start) + 1)                   # past "{"
    while text[pos] != "}":
        key, end = decoder.raw_decode(text, pos)
        value_at = skip(skip(end) + 1)            # past ":"
        value, end = decoder.raw_decode(text, value_at)
        yield key, value, text.count("\n", 0, pos) + 1, value_at
        pos = skip(end)
        if text[pos] == ",":
            pos = skip(pos + 1)


def element_lines(text: str, start: int) -> list[int]:
    """The line of each element of the JSON array at `start` (valid JSON, as for members_at)."""
    decoder, lines, pos = json.JSONDecoder(), [], start + 1
    while True:
        while text[pos] in _JSON_SPACE or text[pos] == ",":
            pos += 1
        if text[pos] == "]":
            return lines
        lines.append(text.count("\n", 0, pos) + 1)
        pos = decoder.raw_decode(text, pos)[1]


def _json_error(text: str, exc: json.JSONDecodeError) -> str:
    """Where the JSON broke, named at the comma to fix: the decoder notices a comma too many only at the
    bracket after it, and a missing one only at the start of the next entry, often a line later."""
    before = text[:exc.pos].rstrip(_JSON_SPACE)
    if before.endswith(",") and text[exc.pos:exc.pos + 1] in ("}", "]"):
        return _at_line(text, len(before) - 1, "a comma after the last entry; remove it")
    if exc.pos >= len(text.rstrip(_JSON_SPACE)):
        return f"line {exc.lineno}: not valid JSON: the file ends too soon (saved halfway?): {_plain(exc.msg)}"
    if exc.msg.startswith("Expecting ',' delimiter") and "\n" in text[len(before):exc.pos]:
        return _at_line(text, len(before) - 1, "a comma is missing at the end of this line")
    return f"line {exc.lineno} column {exc.colno}: not valid JSON: {_plain(exc.msg)}{_syntax_hint(text, exc.pos)}"


# json's messages that end in "at", made for "... at: line L column C (char N)": the position is already in front.
_PLAIN_MESSAGES = {
    "Unterminated string starting at": 'a quoted string starts here and never ends: a closing double quote (") is'
                                       " missing",
    "Invalid control character at": 'a line break or tab inside a quoted string: a closing double quote (") is'
                                    " missing before it",
}


def _plain(msg: str) -> str:
    return _PLAIN_MESSAGES.get(msg, msg[:-3] if msg.endswith(" at") else msg)


def _at_line(text: str, pos: int, problem: str) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    end = end if end >= 0 else len(text)
    shown = _HOOK_TOKEN.sub(r"\1\2…", _without_secrets(text, start, end).strip())
    shown = shown if len(shown) <= 60 else shown[:59] + "…"
    return f"line {text.count(chr(10), 0, pos) + 1} ({shown}): not valid JSON: {problem}"


# A group bot's webhook token and signing secret are credentials: the line quoted in an error (which reaches the
# log and /healthz) shows neither, as chats.mask_chat_url shows a bot elsewhere. JSON may write "/" as "\/" and
# put "\"" inside a string, and any character as \uXXXX; a secret's value may sit on another line than its key,
# or run past a missing quote.
_SLASH = r"(?:\\?/|\\u002f)"
_HOOK_TOKEN = re.compile(rf"({_SLASH}hook{_SLASH})([^\"\s\\]{{0,4}})[^\"\s]*", re.IGNORECASE)
_SECRET_KEY = "".join(rf"(?:{c}|\\u{ord(c):04x}|\\u{ord(c.upper()):04x})" for c in "secret")
_SECRET_VALUE = re.compile(rf"\"{_SECRET_KEY}\"\s*:\s*\"((?:[^\"\\\n]|\\.)*)", re.IGNORECASE)


def _without_secrets(text: str, start: int, end: int) -> str:
    """text[start:end] with the value of every "secret" key in `text` that reaches into it written as "…"."""
    line = text[start:end]
    for found in reversed([m for m in _SECRET_VALUE.finditer(text) if m.end(1) > start and m.start(1) < end]):
        a, b = max(found.start(1), start) - start, min(found.end(1), end) - start
        line = line[:a] + "…" + line[b:]
    return line


def _syntax_hint(text: str, pos: int) -> str:
    nearby = text[max(pos - 1, 0):pos + 1]
    if any(ch in _FULL_WIDTH_PUNCTUATION for ch in nearby):
        return " (use ASCII quotes \" , : instead of the Chinese “ ” ， ：)"
    if text.startswith(("//", "#", "/*"), pos):
        return " (JSON has no comments: remove this one)"
    return " (check for a missing or extra comma and for double quotes around every key and email)"
