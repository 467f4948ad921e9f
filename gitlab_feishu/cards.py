"""Feishu interactive cards (card JSON 2.0) for GitLab events.

Pure: an event in, a card dict out. Every piece of user text (commit
messages, names, branch and project names) is escaped so it renders
literally, every link is checked and percent-encoded, and the card is trimmed
until its `content` string fits Feishu's size limit.
"""
from __future__ import annotations

import json
import re
from typing import NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

from .card_labels import LABELS, LANGUAGES
from .events import Commit, Event, Project, PushEvent

MAX_CARD_BYTES = 30 * 1024      # Feishu's limit on the `content` string, as UTF-8 bytes
MAX_URL_CHARS = 2048            # a longer link is left out rather than sent
HEADER_CHARS = 40               # each name in the title, subtitle and summary
SUMMARY_CHARS = 100             # the chat-list preview is one short line


class _Detail(NamedTuple):
    commits: int        # commits listed (failed jobs, for a pipeline)
    title_chars: int    # characters of each commit's first line
    text_chars: int     # characters of names, branch and project
    excerpt_chars: int  # characters of a merge request description or a tag message


# From most to least detail; a card is rendered with the first step that fits.
# 72 characters is git's customary subject length; longer ones wrap badly on a phone.
_STEPS = (_Detail(5, 72, 80, 200), _Detail(5, 40, 80, 120), _Detail(3, 40, 60, 80), _Detail(1, 40, 40, 40),
          _Detail(0, 0, 30, 0))

# Characters that start markdown or tag syntax, written as entities as Feishu documents.
_ENTITIES = str.maketrans({c: f"&#{ord(c)};" for c in "&<>*_~`[]()#\\!+-=$\"':|"})   # "=": a heading underline
_WHITESPACE = re.compile(r"[\x00-\x20\x7f\x85\u2028\u2029]+")   # line breaks and controls: one space
_LIST_NUMBER = re.compile(r"^(\d+)\.")                           # "1." would start an ordered list
_MENTION = re.compile(r"<(?=\s*/?\s*at\b)", re.IGNORECASE)            # the "<" of an <at ...> or </at> tag
_URL_SAFE = "/:@!$&'*+,;=%?"        # kept in links; spaces, parentheses and non-ASCII are percent-encoded


def render_card(event: Event, lang: str = "zh", *, max_bytes: int = MAX_CARD_BYTES) -> dict:
    """The card for an event, with as much detail as fits in `max_bytes` of content."""
    return _fitting_card(event, lang, max_bytes)[0]


def render_content(event: Event, lang: str = "zh", *, max_bytes: int = MAX_CARD_BYTES) -> str:
    """`render_card`'s card as the `content` string sent to Feishu, serialised once."""
    return _fitting_card(event, lang, max_bytes)[1]


def _fitting_card(event: Event, lang: str, max_bytes: int) -> tuple[dict, str]:
    labels = LABELS.get(lang)
    if labels is None:
        raise ValueError(f"unknown card language {lang!r}; use one of {', '.join(LANGUAGES)}")
    render = _renderers()[type(event)]
    for detail in _STEPS:
        card = render(event, labels, detail)
        content = card_content(card)
        if len(content.encode("utf-8")) <= max_bytes:
            return card, content
    raise ValueError(f"a card for {event.project.path} does not fit in {max_bytes} bytes")


def card_content(card: dict) -> str:
    """The compact JSON string sent to Feishu as the message `content`."""
    return json.dumps(card, ensure_ascii=False, separators=(",", ":"))


def escape_markdown(text: str) -> str:
    """User text as inline markdown that renders literally (line breaks become spaces)."""
    text = _WHITESPACE.sub(" ", _clean_text(text)).strip(" ")
    text = text.translate(_ENTITIES)
    return _LIST_NUMBER.sub(r"\1&#46;", text)


# --- push -------------------------------------------------------------------

def _push_card(event: PushEvent, labels: dict, detail: _Detail) -> dict:
    actor = _cut(event.actor.label, detail.text_chars)
    branch = _cut(event.branch, detail.text_chars)
    # Title and summary name the pusher briefly; the pusher field adds the username.
    names = {"actor": _cut(event.actor.name, HEADER_CHARS) or _cut(actor, HEADER_CHARS) or labels["someone"],
             "project": _cut(event.project.name, HEADER_CHARS), "branch": _cut(branch, HEADER_CHARS)}
    kind, colour, button = _push_kind(event)
    commits = _plural(labels, "commits", event.total_commits) if event.total_commits else labels["no_commits"]
    web_url = event.project.web_url

    if event.deleted:
        branch_value = f"~~{escape_markdown(branch)}~~" if branch else ""
        last = (labels["last_head"], _sha_link(web_url, event.before))
    else:
        branch_value = _link(branch, event.branch_url)
        last = ((labels["commits"], str(event.total_commits)) if event.total_commits
                else (labels["head"], _sha_link(web_url, event.after)))
    elements = _fields([_project_field(event.project, labels, detail), (labels["branch"], branch_value),
                        (labels["pusher"], escape_markdown(actor) or labels["unknown_person"]), last])
    if event.commits and not event.deleted:
        elements += [{"tag": "hr"}, _commit_list(event, labels, detail)]
    elif kind == "push" and not event.total_commits:
        elements += [{"tag": "hr"}, _note(labels["rewind"])]
    elements += _button(labels[button], event.change_url)

    subtitle = f"{names['branch']} · {commits}" if kind == "push" else names["branch"]
    summary = labels[f"{kind}_summary"].format(commits=commits, **names)
    return _card(colour, labels[f"{kind}_title"].format(**names), subtitle, summary, elements)


def _push_kind(event: PushEvent) -> tuple[str, str, str]:
    """What the push did: its wording, header colour and button label."""
    if event.deleted:
        return "delete", "red", "view_branches"
    if event.created:
        return "create", "green", "view_branch"
    if not event.total_commits:    # the branch moved to a commit it already had, e.g. a force-push rewind
        return "push", "orange", "view_changes"
    single = len(event.commits) == 1 and event.change_url == event.commits[0].url
    return "push", "blue", "view_commit" if single else "view_changes"


def _commit_list(event: PushEvent, labels: dict, detail: _Detail) -> dict:
    """The newest commits first, with how many more there are."""
    shown = list(reversed(event.commits))[:detail.commits]
    lines = [f"**{labels['recent']}**"] + [_commit_line(c, detail) for c in shown]
    more = event.total_commits - len(shown)
    if more > 0:
        lines.append(f"<font color='grey'>{_plural(labels, 'more', more)}</font>")
    return {"tag": "markdown", "content": "\n".join(lines)}


def _commit_line(commit: Commit, detail: _Detail) -> str:
    title = escape_markdown(_cut(commit.title, detail.title_chars))
    author = escape_markdown(_cut(commit.author.label, detail.text_chars))
    line = f"{_link(commit.short_id, commit.url)} {title}"
    return f"{line} <font color='grey'>· {author}</font>" if author else line


def _sha_link(web_url: str, sha: str) -> str:
    url = f"{web_url}/-/commit/{quote(_clean(sha), safe='')}" if web_url else ""
    return _link(sha[:8], url)


# --- shared parts -----------------------------------------------------------

def _card(colour: str, title: str, subtitle: str, summary: str, elements: list) -> dict:
    return {
        "schema": "2.0",
        "config": {"summary": {"content": _plain(_cut(summary, SUMMARY_CHARS))}},
        "header": {
            "title": {"tag": "plain_text", "content": _plain(title)},
            "subtitle": {"tag": "plain_text", "content": _plain(subtitle)},
            "template": colour,
        },
        "body": {"elements": elements},
    }


def _fields(pairs: list[tuple[str, str]]) -> list[dict]:
    """Labelled values two to a row; each row is its own column_set so the columns line up."""
    def cell(pair):
        content = [{"tag": "markdown", "content": f"<font color='grey'>{pair[0]}</font>\n{pair[1]}"}] if pair else []
        return {"tag": "column", "width": "weighted", "weight": 1, "elements": content}
    rows = [pairs[i:i + 2] for i in range(0, len(pairs), 2)]
    return [{"tag": "column_set", "horizontal_spacing": "large",
             "columns": [cell(row[0]), cell(row[1] if len(row) > 1 else None)]} for row in rows]


def _note(text: str) -> dict:
    return {"tag": "markdown", "content": f"<font color='grey'>{text}</font>"}


def _project_field(project: Project, labels: dict, detail: _Detail) -> tuple[str, str]:
    """The project's display name, linked, over its path in grey."""
    name = _link(_cut(project.name, detail.text_chars), project.web_url)
    path = escape_markdown(_cut(project.path, detail.text_chars))
    return labels["project"], f"{name}\n<font color='grey'>{path}</font>"


def _button(text: str, url: str) -> list[dict]:
    """A primary button opening `url`, or nothing when the link is unusable."""
    url = _safe_url(url)
    if not url:
        return []
    return [{"tag": "button", "type": "primary", "text": {"tag": "plain_text", "content": text},
             "behaviors": [{"type": "open_url", "default_url": url}]}]


def _link(text: str, url: str) -> str:
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


def _plural(labels: dict, key: str, n: int) -> str:
    return labels[f"{key}_one" if n == 1 else f"{key}_many"].format(n=n)


def _cut(text: str, limit: int) -> str:
    """`text` on one line, at most `limit` characters, ending in "…" when shortened."""
    text = " ".join(_clean_text(text).split())
    return text if len(text) <= limit else text[:max(limit - 1, 0)].rstrip() + "…"


def _plain(text: str) -> str:
    """Text for plain_text fields: Feishu shows it as it is, but an `<at ...>` tag in it is broken up anyway
    (a zero-width space after "<"), so no client or preview can ever turn user text into a mention."""
    return _MENTION.sub("<\u200b", _clean_text(text))


def _clean(text: str) -> str:
    """Replace lone surrogates (valid in JSON, not in UTF-8) so the card can be encoded."""
    return text.encode("utf-8", "replace").decode("utf-8")


# Controls that are not whitespace (ESC, BEL, C1) and the bidi embeddings, overrides and isolates: in user text
# an unclosed RIGHT-TO-LEFT OVERRIDE reverses what the card says after it (the author, "推送到 项目").
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u202a-\u202e\u2066-\u2069]")


def _clean_text(text: str) -> str:
    """`_clean` for text shown on the card, without controls that would act on what follows it."""
    return _INVISIBLE.sub("", _clean(text))


def _renderers() -> dict:
    # Imported here: the other kinds' cards are built from the helpers above.
    from .cards_events import RENDERERS
    return {PushEvent: _push_card, **RENDERERS}
