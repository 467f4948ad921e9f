"""Pipeline noise: which finished pipelines are worth a card.

A failed pipeline always is. A success is only when the previous finished
pipeline on the same project and ref failed: the card then says "fixed".
Canceled pipelines and every other success are ignored; unfinished statuses
never get this far (the parser ignores them). Deciding "fixed" needs the
ref's history, which the outbox keeps; so parsing stays pure and this step
runs in the service, after parsing and before matching (in dry-run too).
"""
from __future__ import annotations

import dataclasses

from .events import Ignored, PipelineEvent
from .outbox import Outbox

FAILED, SUCCESS = "failed", "success"
RULE = " (only a failed pipeline, or a success that fixes one, sends a card)"   # for GitLab's Test button


def pipeline_to_notify(event: PipelineEvent, outbox: Outbox, event_key: str) -> PipelineEvent | Ignored:
    """The event to notify (a failure, or a success marked `fixed`), or why it is ignored.

    Records the pipeline as the latest finished one on its ref as a side effect.
    """
    where = f"pipeline {event.id} on {event.ref}"
    # The children of one parent run on its ref side by side; unnamed, one's success would "fix" a sibling's
    # failure on every run. GitLab's payload names neither the trigger job nor the child's configuration.
    unnamed_child = event.source == "parent_pipeline" and not event.name
    previous = None if unnamed_child else \
        outbox.record_finished_pipeline(_project_key(event), _ref_key(event), event.id, event.status)
    if event.status == FAILED:
        return event
    if event.status != SUCCESS:
        return Ignored(f"{where} was {event.status}: only failed pipelines, and successes that fix one, notify")
    if unnamed_child:
        return Ignored(f"{where} is a child pipeline without a name (workflow:name in its configuration), so it "
                       f"cannot be told from its siblings and fixes nothing{RULE}")
    if outbox.event_summary(event_key) is not None:
        # GitLab resent a success that was a fix: let the outbox answer it as a repeat.
        return dataclasses.replace(event, fixed=True)
    if previous is None:
        return Ignored(f"{where} succeeded; no earlier finished pipeline on this ref is known, so nothing was "
                       f"fixed{RULE}")
    previous_id, previous_status = previous
    if previous_id == event.id and previous_status == event.status:
        # Its success sent again, or it was canceled (keeping the ref's status) and has passed on a retry.
        return Ignored(f"{where} succeeded; the ref was passing already, so nothing was fixed{RULE}")
    if previous_id > event.id:
        return Ignored(f"{where} succeeded after the newer pipeline {previous_id} had finished: out of date")
    if previous_status != FAILED:
        before = "only canceled pipelines came before it" if previous_status == "canceled" else \
            f"the ref's last result before it was {previous_status} (canceled pipelines aside)"
        return Ignored(f"{where} succeeded; {before}, so nothing was fixed{RULE}")
    return dataclasses.replace(event, fixed=True)


def _project_key(event: PipelineEvent) -> str:
    return str(event.project.id) if event.project.id is not None else event.project.path


def _ref_key(event: PipelineEvent) -> str:
    """The history a pipeline belongs to. GitLab names a merge request pipeline by its source branch, but it runs
    on refs/merge-requests/IID/..., and a child pipeline (source parent_pipeline) runs other jobs on its parent's
    ref: neither can fix, or be fixed by, the branch's own pipelines. A merge request pipeline's children carry
    its merge request too, and keep a history apart from it; each named child keeps its own."""
    if event.merge_request_iid is not None:
        ref = f"refs/merge-requests/{event.merge_request_iid}"
    else:
        ref = f"refs/{'tags' if event.tag else 'heads'}/{event.ref}"   # a tag and a branch may share a name
    return f"child:{event.name}:{ref}" if event.source == "parent_pipeline" else ref
