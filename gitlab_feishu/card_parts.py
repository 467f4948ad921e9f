"""The parts every card is built from (cards.py, cards_events.py): user text escaped so it renders
literally, links checked and percent-encoded, labelled fields, a button, the card's frame. Pure.
"""
from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

from .events import Commit, Project

HEADER_CHARS = 40               # each name in the title, subtitle and summary
SUMMARY_CHARS = 100             # the chat-list preview is one short line
MAX_URL_CHARS = 2048            # a longer link is left out rather than sent


class Detail(NamedTuple):
    commits: int        # commits listed (failed jobs, for a pipeline)
    title_chars: int    # characters of each commit's first line
    text_chars: int     # characters of names, branch and project
    excerpt_chars: int  # characters of a merge request description or a tag message


# Characters that start markdown or tag syntax, written as entities as Feishu documents.
_ENTITIES = str.maketrans({c: f"&#{ord(c)};" for c in "&<>*_~`[]()#\\!+-=$\"':|"})   # "=": a heading underline
_WHITESPACE = re.compile(r"[\x00-\x20\x7f\x85\u2028\u2029]+")   # line breaks and controls: one space
_LIST_NUMBER = re.compile(r"^(\d+)\.")                           # "1." would start an ordered list
_MENTION = re.compile(r"<(?=\s*/?\s*at\b)", re.IGNORECASE)            # the "<" of an <at ...> or </at> tag
_URL_SAFE = "/:@!$&'*+,;=%?"        # kept in links; spaces, parentheses and non-ASCII are percent-encoded


def escape_markdown(text: str) -> str:
    """User text as inline markdown that renders literally (line breaks become spaces)."""
    text = _WHITESPACE.sub(" ", clean_text(text)).strip(" ")
    text = text.translate(_ENTITIES)
    return _LIST_NUMBER.sub(r"\1&#46;", text)


def commit_line(commit: Commit, detail: Detail) -> str:
    """A commit's short SHA, linked, its first line and its author in grey."""
    title = escape_markdown(cut(commit.title, detail.title_chars))
    author = escape_markdown(cut(commit.author.label, detail.text_chars))
    line = f"{link(commit.short_id, commit.url)} {title}"
    return f"{line} <font color='grey'>· {author}</font>" if author else line


def sha_link(web_url: str, sha: str) -> str:
    """A commit's short SHA linked to its page; "" when GitLab sent none (never a link to `-/commit/`)."""
    sha = sha.strip()
    url = f"{web_url}/-/commit/{quote(_clean(sha), safe='')}" if web_url and sha else ""
    return link(sha[:8], url)


def frame(colour: str, title: str, subtitle: str, summary: str, elements: list) -> dict:
    """The card around `elements`: its header (title, subtitle, colour) and the chat list's one-line summary."""
    return {
        "schema": "2.0",
        "config": {"summary": {"content": plain(cut(summary, SUMMARY_CHARS))}},
        "header": {
            "title": {"tag": "plain_text", "content": plain(title)},
            "subtitle": {"tag": "plain_text", "content": plain(subtitle)},
            "template": colour,
        },
        "body": {"elements": elements},
    }


def fields(pairs: list[tuple[str, str]]) -> list[dict]:
    """Labelled values two to a row (a label with no value is left out); each row is its own column_set so the
    columns line up."""
    pairs = [pair for pair in pairs if pair[1]]

    def cell(pair):
        content = [{"tag": "markdown", "content": f"<font color='grey'>{pair[0]}</font>\n{pair[1]}"}] if pair else []
        return {"tag": "column", "width": "weighted", "weight": 1, "elements": content}
    rows = [pairs[i:i + 2] for i in range(0, len(pairs), 2)]
    return [{"tag": "column_set", "horizontal_spacing": "large",
             "columns": [cell(row[0]), cell(row[1] if len(row) > 1 else None)]} for row in rows]


def note(text: str) -> dict:
    return {"tag": "markdown", "content": f"<font color='grey'>{text}</font>"}


def project_field(project: Project, labels: dict, detail: Detail) -> tuple[str, str]:
    """The project's display name, linked, over its path in grey."""
    name = link(cut(project.name, detail.text_chars), project.web_url)
    path = escape_markdown(cut(project.path, detail.text_chars))
    return labels["project"], f"{name}\n<font color='grey'>{path}</font>"


def button(text: str, url: str) -> list[dict]:
    """A primary button opening `url`, or nothing when the link is unusable."""
    url = _safe_url(url)
    if not url:
        return []
    return [{"tag": "button", "type": "primary", "text": {"tag": "plain_text", "content": text},
             "behaviors": [{"type": "open_url", "default_url": url}]}]


def link(text: str, url: str) -> str:
    """`[text](url)` with the text escaped, or just the text when the URL is unusable."""
    url = _safe_url(url)
    return f"[{escape_markdown(text)}]({url})" if url else escape_markdown(text)


def _safe_url(url: str) -> str:
    """An http(s) URL percent-encoded to sit inside a markdown link, or "" when it cannot."""
    try:
        parts = urlsplit(_clean(url).strip())
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not re.fullmatch(r"[\w.:@\[\]%-]+", parts.netloc):
        return ""
    encoded = urlunsplit((parts.scheme, parts.netloc, quote(parts.path, safe=_URL_SAFE),
                          quote(parts.query, safe=_URL_SAFE), quote(parts.fragment, safe=_URL_SAFE)))
    return encoded if len(encoded) <= MAX_URL_CHARS else ""


def plural(labels: dict, key: str, n: int) -> str:
    return labels[f"{key}_one" if n == 1 else f"{key}_many"].format(n=n)


def cut(text: str, limit: int) -> str:
    """`text` on one line, at most `limit` characters, ending in "…" when shortened."""
    text = " ".join(clean_text(text).split())
    return text if len(text) <= limit else head(text, limit - 1).rstrip() + "…"


# What continues the character before it: combining marks (a decomposed が is か + U+3099), the emoji
# joiner, variation selectors (also the ideographic ones after a rare CJK character), a subdivision flag's tag
# characters (🏴 England) and skin tones.
_CONTINUES = re.compile("[\u200d\ufe00-\ufe0f\U000e0020-\U000e007f\U000e0100-\U000e01ef\U0001f3fb-\U0001f3ff]")
_FLAG_HALF = re.compile("[\U0001f1e6-\U0001f1ff]")
_FLAG_RUN = re.compile("[\U0001f1e6-\U0001f1ff]+$")


def head(text: str, n: int) -> str:
    """At most the first `n` characters of `text`, never ending inside what a reader sees as one character:
    a base letter without its combining mark, an emoji sequence without its end, half a flag."""
    n = max(n, 0)
    if len(text) <= n:
        return text
    floor = max(n - 16, 0)          # a pile of combining marks (zalgo text) is cut anyway, not dropped whole
    while n > floor and (unicodedata.category(text[n]) in ("Mn", "Mc", "Me") or _CONTINUES.match(text[n])
                         or text[n - 1] == "\u200d"):
        n -= 1
    if n > 0 and _FLAG_HALF.match(text[n - 1]):
        run = n - len(_FLAG_RUN.sub("", text[:n]))
        n -= run % 2
    return text[:n]


def plain(text: str) -> str:
    """Text for plain_text fields: Feishu shows it as it is, but an `<at ...>` tag in it is broken up anyway
    (a zero-width space after "<"), so no client or preview can ever turn user text into a mention."""
    return _MENTION.sub("<\u200b", clean_text(text))


def _clean(text: str) -> str:
    """Replace lone surrogates (valid in JSON, not in UTF-8) so the card can be encoded."""
    return text.encode("utf-8", "replace").decode("utf-8")


# Controls that are not whitespace (ESC, BEL, C1) and the bidi embeddings, overrides and isolates: in user text
# an unclosed RIGHT-TO-LEFT OVERRIDE reverses what the card says after it (the author, "推送到 项目").
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str) -> str:
    """`_clean` for text shown on a card, without controls that would act on what follows it."""
    return _INVISIBLE.sub("", _clean(text))
