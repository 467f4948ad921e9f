"""Cards for tags, merge requests and pipelines, built from the parts in `card_parts`.

Same rules as the push card: user text is escaped, links are checked, and
`cards.render_card` trims the detail (`card_parts.Detail`) until the card fits.
"""
from __future__ import annotations

import re

from .card_parts import (HEADER_CHARS, Detail, button, clean_text, commit_line, cut, escape_markdown, fields, frame,
                         head, link, note, plural, project_field, sha_link)
from .events import MergeRequestEvent, Person, PipelineEvent, Project, TagPushEvent

EXCERPT_LINES = 6               # lines of a description or tag message shown
_HEADING = re.compile(r"^#{1,6}\s+")   # a markdown heading's hashes, dropped from an excerpt line
_HIDDEN = re.compile(r"<!--.*?(-->|$)", re.DOTALL)   # an HTML comment (an MR template's hints), unclosed included
_IMAGE = re.compile(r"!\[([^\]\n]*)\]\([^)\n]*\)")        # ![alt](url): shown as [alt]

# Header colour of each merge request action: blue to act on, green approved, purple merged, grey closed.
MERGE_REQUEST_COLOURS = {"open": "blue", "reopen": "indigo", "ready": "wathet", "approved": "green",
                         "merge": "purple", "close": "grey"}


# --- tags -------------------------------------------------------------------

def _tag_card(event: TagPushEvent, labels: dict, detail: Detail) -> dict:
    tag = cut(event.tag, detail.text_chars)
    names = {**_names(event.actor, event.project, labels), "tag": cut(tag, HEADER_CHARS)}
    pusher = (labels["pusher"], escape_markdown(cut(event.actor.label, detail.text_chars)) or labels["unknown_person"])
    if event.deleted:
        kind, colour, button_label = "tag_delete", "grey", "view_tags"
        elements = fields([project_field(event.project, labels, detail),
                           (labels["tag"], f"~~{escape_markdown(tag)}~~" if tag else ""), pusher])
    else:
        kind, colour, button_label = "tag_create", "turquoise", "view_tag"
        head = [(labels["head"], _tagged_commit(event, detail))] if event.commit_sha else []
        elements = fields([project_field(event.project, labels, detail), (labels["tag"], link(tag, event.tag_url)),
                           pusher, *head])
        message = _excerpt(event.message or "", detail.excerpt_chars)
        if message:
            elements += [{"tag": "hr"}, _markdown(f"**{labels['annotation']}**\n{message}")]
    elements += button(labels[button_label], event.tag_url)
    return frame(colour, labels[f"{kind}_title"].format(**names), names["tag"],
                 labels[f"{kind}_summary"].format(**names), elements)


def _tagged_commit(event: TagPushEvent, detail: Detail) -> str:
    """The tagged commit's short SHA, linked, over its title in grey when GitLab sent the commit."""
    sha = sha_link(event.project.web_url, event.commit_sha)
    if not event.commit or not event.commit.title or not detail.title_chars:
        return sha
    title = cut(event.commit.title, min(detail.title_chars, HEADER_CHARS))   # it sits in a half-width column
    return f"{sha}\n<font color='grey'>{escape_markdown(title)}</font>"


# --- merge requests ---------------------------------------------------------

def _merge_request_card(event: MergeRequestEvent, labels: dict, detail: Detail) -> dict:
    names = {**_names(event.actor, event.project, labels), "ref": event.reference,
             "title": cut(event.title, HEADER_CHARS)}
    # GitLab's own notation for a branch in a fork: "lisi/yeshui-client:feature/登录".
    source = f"{event.fork_path}:{event.source_branch}" if event.fork_path else event.source_branch
    branches = f"{cut(source, detail.text_chars)} → {cut(event.target_branch, detail.text_chars)}"
    pairs = [project_field(event.project, labels, detail), (labels["branch"], escape_markdown(branches))]
    if event.author and event.author.username != event.actor.username:   # the title already names the actor
        pairs.append((labels["author"], escape_markdown(cut(event.author.label, detail.text_chars))))
    for key, people in (("reviewers", event.reviewers), ("assignees", event.assignees)):
        if people:
            pairs.append((labels[key], _people(people, detail)))
    shown_title = escape_markdown(cut(event.title, detail.title_chars)).strip()
    title = f"{link(event.reference, event.url)} **{shown_title}**" if shown_title else link(event.reference, event.url)
    elements = [_markdown(title), *fields(pairs)]
    description = _excerpt(event.description, detail.excerpt_chars)
    if description:
        elements += [{"tag": "hr"}, _markdown(description)]
    elements += button(labels["view_merge_request"], event.url)
    kind = f"mr_{event.action}"
    subtitle = f"{event.reference} · {cut(branches, HEADER_CHARS * 2)}"
    summary = labels[f"{kind}_summary"].format(**names)
    if not names["title"].strip():            # not "…!17：" (or ": ") ending in nothing
        summary = summary.rstrip().removesuffix(":").removesuffix("：")
    return frame(MERGE_REQUEST_COLOURS[event.action], labels[f"{kind}_title"].format(**names), subtitle, summary,
                 elements)


def _people(people: tuple[Person, ...], detail: Detail) -> str:
    return escape_markdown(cut(", ".join(p.name or p.username for p in people), detail.text_chars))


# --- pipelines --------------------------------------------------------------

def _pipeline_card(event: PipelineEvent, labels: dict, detail: Detail) -> dict:
    kind, colour, status = ("pipeline_fixed", "green", "status_fixed") if event.fixed else (
        "pipeline_failed", "red", "status_failed")
    ref = cut(event.ref, detail.text_chars)
    names = {**_names(event.actor, event.project, labels), "ref": cut(ref, HEADER_CHARS)}
    trigger = escape_markdown(cut(event.actor.label, detail.text_chars)) or labels["unknown_person"]
    if event.source and event.source != "push":      # a schedule, an API call, a merge request...
        source = labels.get(f"source_{event.source}", event.source)
        trigger += f" <font color='grey'>· {escape_markdown(cut(source, detail.text_chars))}</font>"
    pipeline = f"{link(f'#{event.id}', event.url)} {labels[status]}"
    if event.duration:
        pipeline += f" <font color='grey'>· {_duration(event.duration, labels)}</font>"
    elements = fields([project_field(event.project, labels, detail),
                       (labels["tag" if event.tag else "branch"], link(ref, event.ref_url)),
                        (labels["triggered_by"], trigger), (labels["pipeline"], pipeline)])
    if event.commit and detail.commits:
        commit = commit_line(event.commit, detail)
    else:
        sha = event.commit.id if event.commit else event.sha
        commit = sha_link(event.project.web_url, sha) if sha else ""
    if commit:
        elements += [{"tag": "hr"}, _markdown(f"<font color='grey'>{labels['commit']}</font> {commit}")]
    if event.fixed:
        closing = note(labels["fixed_note_mr" if event.merge_request_iid is not None else
                              "fixed_note_tag" if event.tag else "fixed_note"])
    elif event.failed_jobs:
        closing = _failed_jobs(event, labels, detail)
    else:
        closing = note(labels["no_failed_jobs"])
    elements += [{"tag": "hr"}, closing, *button(labels["view_pipeline"], event.url)]
    return frame(colour, labels[f"{kind}_title"].format(**names), f"{names['ref']} · #{event.id}",
                 labels[f"{kind}_summary"].format(**names), elements)


def _failed_jobs(event: PipelineEvent, labels: dict, detail: Detail) -> dict:
    """The failed jobs in stage order, each with its stage and GitLab's failure reason."""
    lines = [f"**{labels['failed_jobs']}**"]
    for job in event.failed_jobs[:max(detail.commits, 1)]:
        line = escape_markdown(cut(job.name, detail.text_chars))
        reason = labels.get(f"reason_{job.failure_reason}", job.failure_reason.replace("_", " "))
        grey = " · ".join(escape_markdown(cut(part, detail.text_chars)) for part in (job.stage, reason) if part)
        lines.append(f"{line} <font color='grey'>· {grey}</font>" if grey else line)
    more = len(event.failed_jobs) - max(detail.commits, 1)
    if more > 0:
        lines.append(f"<font color='grey'>{plural(labels, 'more_jobs', more)}</font>")
    return _markdown("\n".join(lines))


def _duration(seconds: int, labels: dict) -> str:
    minutes, seconds = divmod(seconds, 60)
    return labels["minutes"].format(m=minutes, s=seconds) if minutes else labels["seconds"].format(s=seconds)


# --- shared -----------------------------------------------------------------

def _names(actor: Person, project: Project, labels: dict) -> dict:
    """The short names the title and summary use: the person's display name and the project's."""
    return {"actor": cut(actor.name or actor.label, HEADER_CHARS) or labels["someone"],
            "project": cut(project.name, HEADER_CHARS)}


def _excerpt(text: str, limit: int) -> str:
    """User text as up to EXCERPT_LINES escaped lines and `limit` characters; "" when nothing is left."""
    text = _HIDDEN.sub("", clean_text(text))               # template comments GitLab does not show
    text = _IMAGE.sub(lambda m: f"[{m.group(1) or 'image'}]", text)   # an upload's markdown, not its address
    lines = [_HEADING.sub("", " ".join(line.split())) for line in text.splitlines()]
    text = "\n".join(line for line in lines if line)
    if limit <= 0 or not text:
        return ""
    if len(text) > limit:
        text = head(text, limit - 1).rstrip() + "…"
    kept = text.split("\n")
    if len(kept) > EXCERPT_LINES:
        kept = kept[:EXCERPT_LINES - 1] + [kept[EXCERPT_LINES - 1] + " …"]
    return "\n".join(escape_markdown(line) for line in kept)


def _markdown(content: str) -> dict:
    return {"tag": "markdown", "content": content}


RENDERERS = {TagPushEvent: _tag_card, MergeRequestEvent: _merge_request_card, PipelineEvent: _pipeline_card}
