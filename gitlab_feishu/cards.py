"""Feishu interactive cards (card JSON 2.0) for GitLab events.

Pure: an event in, a card dict out. Every piece of user text (commit
messages, names, branch and project names) is escaped so it renders
literally, every link is checked and percent-encoded, and the card is trimmed
until its `content` string fits Feishu's size limit.
"""
from __future__ import annotations

import json

from .card_labels import LABELS, LANGUAGES
from .card_parts import (HEADER_CHARS, Detail, button, commit_line, cut, escape_markdown, fields, frame, link, note,
                         plural, project_field, sha_link)
from .cards_events import RENDERERS
from .events import Event, PushEvent

MAX_CARD_BYTES = 30 * 1024      # Feishu's limit on the `content` string, as UTF-8 bytes


# From most to least detail; a card is rendered with the first step that fits.
# 72 characters is git's customary subject length; longer ones wrap badly on a phone.
_STEPS = tuple(Detail(*step) for step in ((5, 72, 80, 200), (5, 40, 80, 120), (3, 40, 60, 80), (1, 40, 40, 40),
                                          (0, 0, 30, 0)))


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
    render = {PushEvent: _push_card, **RENDERERS}[type(event)]
    for detail in _STEPS:
        card = render(event, labels, detail)
        content = card_content(card)
        if len(content.encode("utf-8")) <= max_bytes:
            return card, content
    raise ValueError(f"a card for {event.project.path} does not fit in {max_bytes} bytes")


def card_content(card: dict) -> str:
    """The compact JSON string sent to Feishu as the message `content`."""
    return json.dumps(card, ensure_ascii=False, separators=(",", ":"))


# --- push -------------------------------------------------------------------

def _push_card(event: PushEvent, labels: dict, detail: Detail) -> dict:
    actor = cut(event.actor.label, detail.text_chars)
    branch = cut(event.branch, detail.text_chars)
    # Title and summary name the pusher briefly; the pusher field adds the username.
    names = {"actor": cut(event.actor.name, HEADER_CHARS) or cut(actor, HEADER_CHARS) or labels["someone"],
             "project": cut(event.project.name, HEADER_CHARS), "branch": cut(branch, HEADER_CHARS)}
    kind, colour, button_label = _push_kind(event)
    commits = plural(labels, "commits", event.total_commits) if event.total_commits else labels["no_commits"]
    web_url = event.project.web_url

    if event.deleted:
        branch_value = f"~~{escape_markdown(branch)}~~" if branch else ""
        last = (labels["last_head"], sha_link(web_url, event.before))
    else:
        branch_value = link(branch, event.branch_url)
        last = ((labels["commits"], str(event.total_commits)) if event.total_commits
                else (labels["head"], sha_link(web_url, event.after)))
    elements = fields([project_field(event.project, labels, detail), (labels["branch"], branch_value),
                       (labels["pusher"], escape_markdown(actor) or labels["unknown_person"]), last])
    if event.commits and not event.deleted:
        elements += [{"tag": "hr"}, _commit_list(event, labels, detail)]
    elif kind == "push" and not event.total_commits:
        elements += [{"tag": "hr"}, note(labels["rewind"])]
    elements += button(labels[button_label], event.change_url)

    subtitle = f"{names['branch']} · {commits}" if kind == "push" else names["branch"]
    summary = labels[f"{kind}_summary"].format(commits=commits, **names)
    return frame(colour, labels[f"{kind}_title"].format(**names), subtitle, summary, elements)


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


def _commit_list(event: PushEvent, labels: dict, detail: Detail) -> dict:
    """The newest commits first, with how many more there are."""
    shown = list(reversed(event.commits))[:detail.commits]
    lines = [f"**{labels['recent']}**"] + [commit_line(c, detail) for c in shown]
    more = event.total_commits - len(shown)
    if more > 0:
        lines.append(f"<font color='grey'>{plural(labels, 'more', more)}</font>")
    return {"tag": "markdown", "content": "\n".join(lines)}


# --- shared parts -----------------------------------------------------------
