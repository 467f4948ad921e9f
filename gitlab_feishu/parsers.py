"""One parser per GitLab event kind: a decoded payload in, an event or `Ignored` out.

Pure functions. `gitlab.parse_event` has already checked `object_kind` and the
X-Gitlab-Event header; these read the fields of their kind through `payload`'s
defensive readers and decide which events of that kind are worth a card.
"""
from __future__ import annotations

import re

from .events import (Commit, Ignored, Job, MergeRequestEvent, Person, PipelineEvent, Project, PushEvent,
                     TagPushEvent, is_blank_sha)
from .payload import (as_dict, as_list, integer, optional_bool, parse_commit, parse_project, parse_pusher, parse_user,
                      text)

MERGE_REQUEST_ACTIONS = ("open", "reopen", "merge", "close", "approved")   # plus an update that makes a draft ready
# Statuses a pipeline ends in; any other (created, pending, running, manual, skipped, ...) never notifies.
FINISHED_PIPELINE_STATUSES = ("success", "failed", "canceled")
# GitLab's draft title prefixes, and the WIP: of older versions.
# Draft:, [Draft], (Draft); before GitLab 14 also WIP:, [WIP] and "WIP " (its WIP_REGEX).
_DRAFT_PREFIX = re.compile(r"\s*(\[draft\]|\(draft\)|draft:|\[wip\]|wip:|wip\s)", re.IGNORECASE)


def parse_push(payload: dict) -> PushEvent | Ignored:
    project = parse_project(payload.get("project"), payload.get("project_id"))
    if project is None:
        return Ignored("push payload has no project.path_with_namespace")
    ref = text(payload.get("ref"))
    if not ref:
        return Ignored("push payload has no ref")
    after = text(payload.get("after"))
    commits = _oldest_first(_commits(payload), after)
    total = integer(payload.get("total_commits_count"))
    return PushEvent(
        project=project,
        actor=parse_pusher(payload),
        ref=ref,
        before=text(payload.get("before")),
        after=after,
        commits=commits,
        total_commits=max(total if total and total > 0 else 0, len(commits)),
        ref_protected=optional_bool(payload.get("ref_protected")),
    )


def parse_tag_push(payload: dict) -> TagPushEvent | Ignored:
    """A tag created or deleted. Current GitLab sends the tagged commit in `commits`; older versions send none."""
    project = parse_project(payload.get("project"), payload.get("project_id"))
    if project is None:
        return Ignored("tag push payload has no project.path_with_namespace")
    ref = text(payload.get("ref"))
    if not ref:
        return Ignored("tag push payload has no ref")
    after = text(payload.get("after"))
    # For an annotated tag `after` is the tag object; checkout_sha is the commit it points to.
    checkout = text(payload.get("checkout_sha"))
    commits = () if is_blank_sha(after) else _commits(payload)
    # GitLab's Test sample lists the default branch's newest commits, not the tag's: only a listed commit
    # that is the tag's own (or, without checkout_sha, the first) describes it.
    commit = next((c for c in commits if c.id == checkout), None if checkout else (commits[0] if commits else None))
    return TagPushEvent(
        project=project,
        actor=parse_pusher(payload),
        ref=ref,
        before=text(payload.get("before")),
        after=after,
        commit_sha=checkout or (commit.id if commit else ""),
        commit=commit,
        message=text(payload.get("message")).strip() or None,
        ref_protected=optional_bool(payload.get("ref_protected")),
    )


def parse_merge_request(payload: dict) -> MergeRequestEvent | Ignored:
    """The actions people act on; every other update (labels, pushes, descriptions) is noise."""
    project = parse_project(payload.get("project"))
    if project is None:
        return Ignored("merge request payload has no project.path_with_namespace")
    attributes = as_dict(payload.get("object_attributes"))
    action = text(attributes.get("action"))
    if not action and text(attributes.get("state")) == "opened":
        action = "open"           # the Test button of GitLab before 15.x sends an open merge request without one
    if action == "update" and _draft_made_ready(as_dict(payload.get("changes"))):
        action = "ready"
    elif action not in MERGE_REQUEST_ACTIONS:
        return Ignored(f"merge request action {action or 'none'!r} is not notified "
                       f"(only {', '.join(MERGE_REQUEST_ACTIONS)}, and a draft marked ready)")
    iid = integer(attributes.get("iid"))
    if iid is None:
        return Ignored("merge request payload has no object_attributes.iid")
    web_url = project.web_url
    return MergeRequestEvent(
        project=project,
        actor=parse_user(payload.get("user")),
        action=action,
        id=integer(attributes.get("id")),
        iid=iid,
        title=text(attributes.get("title")),
        source_branch=text(attributes.get("source_branch")),
        target_branch=text(attributes.get("target_branch")),
        url=text(attributes.get("url")) or (f"{web_url}/-/merge_requests/{iid}" if web_url else ""),
        author=_author(payload, integer(attributes.get("author_id"))),
        description=text(attributes.get("description")),
        reviewers=_people(payload.get("reviewers")),
        # GitLab 11 sends one `assignee` instead of the list.
        assignees=_people(payload.get("assignees") or [payload.get("assignee")]),
        updated_at=text(attributes.get("updated_at")),
        fork_path=_fork(attributes, project),
    )


def _fork(attributes: dict, target: Project) -> str:
    """The path of the project a merge request's source branch is in, when it is not the target (a fork)."""
    source = text(as_dict(attributes.get("source")).get("path_with_namespace"))
    return source if source and source.casefold() != target.path.casefold() else ""


def parse_pipeline(payload: dict) -> PipelineEvent | Ignored:
    """A finished pipeline; whether it notifies (failed, or fixed) is the service's decision."""
    project = parse_project(payload.get("project"))
    if project is None:
        return Ignored("pipeline payload has no project.path_with_namespace")
    attributes = as_dict(payload.get("object_attributes"))
    status = text(attributes.get("status"))
    if status not in FINISHED_PIPELINE_STATUSES:
        return Ignored(f"pipeline status {status or 'none'!r} is not notified: only a failed pipeline, "
                       "or a success after a failure, is")
    pipeline_id = integer(attributes.get("id"))
    if pipeline_id is None:
        return Ignored("pipeline payload has no object_attributes.id")
    ref = text(attributes.get("ref"))
    if not ref:
        return Ignored("pipeline payload has no object_attributes.ref")
    web_url = project.web_url
    duration = attributes.get("duration")
    merge_request = as_dict(payload.get("merge_request"))
    source, target = integer(merge_request.get("source_project_id")), integer(merge_request.get("target_project_id"))
    from_fork = source is not None and target is not None and source != target
    return PipelineEvent(
        project=project,
        actor=parse_user(payload.get("user")),
        id=pipeline_id,
        status=status,
        ref=ref,
        tag=attributes.get("tag") is True,
        url=text(attributes.get("url")) or (f"{web_url}/-/pipelines/{pipeline_id}" if web_url else ""),
        iid=integer(attributes.get("iid")),
        sha=text(attributes.get("sha")),
        source=text(attributes.get("source")),
        commit=parse_commit(payload.get("commit")),
        failed_jobs=_failed_jobs(payload.get("builds"), as_list(attributes.get("stages"))),
        duration=int(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None,
        finished_at=text(attributes.get("finished_at")),
        ref_protected=optional_bool(attributes.get("protected_ref")),
        merge_request_iid=integer(merge_request.get("iid")),
        name=text(attributes.get("name")),
        fork_merge_request_url=(text(merge_request.get("url")) or _merge_request_url(project, target, merge_request))
        if from_fork else "",
    )


def _merge_request_url(project: Project, target: int | None, merge_request: dict) -> str:
    """A merge request's page when the payload leaves its URL out, if it lives in this project (the target).
    A pipeline that ran in the fork (the source) is this project's: its branch is here, so "" links to it."""
    iid = integer(merge_request.get("iid"))
    return f"{project.web_url}/-/merge_requests/{iid}" if project.web_url and iid is not None \
        and project.id == target else ""


def _commits(payload: dict) -> tuple[Commit, ...]:
    return tuple(c for c in (parse_commit(raw) for raw in as_list(payload.get("commits"))) if c)


def _oldest_first(commits: tuple[Commit, ...], after: str) -> tuple[Commit, ...]:
    """A push lists its commits oldest first; the Test button's sample lists them newest first (`after` leads)."""
    if len(commits) > 1 and commits[0].id == after and commits[-1].id != after:
        return commits[::-1]
    return commits


def _draft_made_ready(changes: dict) -> bool:
    """The update turned a draft into a merge request ready for review (the flag, or the title prefix)."""
    draft = as_dict(changes.get("draft"))
    if draft:                    # GitLab 14+ says so itself: a title that merely starts "WIP " is no draft
        return draft.get("previous") is True and draft.get("current") is False
    title = as_dict(changes.get("title"))
    before, after = text(title.get("previous")), text(title.get("current"))
    return bool(_DRAFT_PREFIX.match(before)) and not _DRAFT_PREFIX.match(after)


def _author(payload: dict, author_id: int | None) -> Person | None:
    """The payload names the author only by id: find them among the people it does describe."""
    if author_id is None:
        return None
    for raw in [payload.get("user"), payload.get("assignee"), *as_list(payload.get("assignees")),
                *as_list(payload.get("reviewers"))]:
        if isinstance(raw, dict) and integer(raw.get("id")) == author_id:
            return parse_user(raw)
    return None


def _people(raw: object) -> tuple[Person, ...]:
    people = (parse_user(item) for item in as_list(raw) if isinstance(item, dict))
    return tuple(person for person in people if person.username or person.name)


def _failed_jobs(builds: object, stages: list) -> tuple[Job, ...]:
    """Jobs that failed the pipeline, in stage order; a retried job counts by its latest run."""
    latest: dict[str, dict] = {}
    for build in as_list(builds):
        name = text(as_dict(build).get("name"))
        if name and (integer(build.get("id")) or 0) >= (integer(latest.get(name, {}).get("id")) or 0):
            latest[name] = build
    failed = [b for b in latest.values() if b.get("status") == "failed" and b.get("allow_failure") is not True]
    order = {stage: i for i, stage in enumerate(s for s in stages if isinstance(s, str))}
    failed.sort(key=lambda b: (order.get(text(b.get("stage")), len(order)), integer(b.get("id")) or 0))
    return tuple(Job(text(b.get("name")), text(b.get("stage")), text(b.get("failure_reason"))) for b in failed)
