"""Which finished pipelines notify: failures always, a success only when it fixes the ref's last failure."""
from __future__ import annotations

import dataclasses

import pytest

from gitlab_feishu.events import Ignored, Person, PipelineEvent, Project
from gitlab_feishu.outbox import Outbox
from gitlab_feishu.rows import NewDelivery
from gitlab_feishu.pipelines import pipeline_to_notify

PROJECT = Project(path="grouptwogame/yeshui-client", name="Y_野水发财（客户端）", id=42)


def pipeline(pipeline_id: int, status: str, ref: str = "main", *, tag: bool = False,
             project: Project = PROJECT) -> PipelineEvent:
    return PipelineEvent(project=project, actor=Person(), id=pipeline_id, status=status, ref=ref, tag=tag, url="")


@pytest.fixture
def outbox(tmp_path, clock) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite3", clock=clock)


def decide(outbox, event: PipelineEvent):
    return pipeline_to_notify(event, outbox, "payload:" + event.idempotency_key)


def outcome(result) -> str:
    if isinstance(result, Ignored):
        return "ignored"
    return "fixed" if result.fixed else result.status


@pytest.mark.parametrize(("history", "status", "expected"), [
    ([], "failed", "failed"),
    ([], "success", "ignored"),
    ([], "canceled", "ignored"),
    (["failed"], "success", "fixed"),
    (["failed"], "failed", "failed"),
    (["success"], "success", "ignored"),
    (["success"], "failed", "failed"),
    (["canceled"], "success", "ignored"),
    (["failed", "canceled"], "success", "fixed"),       # a canceled pipeline leaves the ref failing (GitLab's Ci::Ref)
    (["success", "canceled"], "success", "ignored"),
    (["failed", "canceled", "canceled"], "success", "fixed"),   # e.g. auto-canceled redundant pipelines
    (["failed", "success"], "success", "ignored"),
    (["success", "failed"], "success", "fixed"),
])
def test_decision_table(outbox, history, status, expected):
    for pipeline_id, previous in enumerate(history, start=1):
        decide(outbox, pipeline(pipeline_id, previous))
    assert outcome(decide(outbox, pipeline(len(history) + 1, status))) == expected


def test_ignored_reasons_say_why(outbox):
    assert "was canceled" in decide(outbox, pipeline(1, "canceled")).reason
    assert "only canceled pipelines came before it" in decide(outbox, pipeline(2, "success")).reason
    decide(outbox, pipeline(3, "canceled"))
    assert "last result before it was success (canceled pipelines aside)" in decide(outbox, pipeline(4, "success")).reason


def test_a_first_success_says_no_earlier_pipeline_is_known(outbox):
    assert "no earlier finished pipeline" in decide(outbox, pipeline(1, "success")).reason


def test_an_older_pipeline_finishing_after_a_newer_canceled_one_is_out_of_date(outbox):
    decide(outbox, pipeline(1, "failed"))
    decide(outbox, pipeline(3, "canceled"))
    assert "out of date" in decide(outbox, pipeline(2, "success")).reason


def test_a_retried_pipeline_that_now_passes_is_fixed(outbox):
    decide(outbox, pipeline(7, "failed"))
    assert outcome(decide(outbox, pipeline(7, "success"))) == "fixed"


def test_a_success_gitlab_sends_again_says_it_fixed_nothing(outbox):
    decide(outbox, pipeline(7, "success"))
    again = decide(outbox, pipeline(7, "success"))
    assert isinstance(again, Ignored) and "the ref was passing already" in again.reason


def test_a_canceled_pipeline_retried_to_success_on_a_passing_ref_fixed_nothing(outbox):
    decide(outbox, pipeline(4, "success"))
    decide(outbox, pipeline(5, "canceled"))
    again = decide(outbox, pipeline(5, "success"))
    assert isinstance(again, Ignored) and "the ref was passing already" in again.reason


def test_a_pipeline_failing_again_after_a_retried_job_is_another_event():
    """Without an Idempotency-Key (GitLab before 14.8) the payload is the key: it must tell the two apart."""
    first = dataclasses.replace(pipeline(7, "failed"), finished_at="2026-11-20 02:21:40 UTC")
    again = dataclasses.replace(first, finished_at="2026-11-20 02:40:05 UTC")
    assert first.idempotency_key != again.idempotency_key


def test_an_older_pipeline_arriving_late_changes_nothing(outbox):
    decide(outbox, pipeline(10, "failed"))
    late = decide(outbox, pipeline(9, "success"))
    assert isinstance(late, Ignored) and "newer pipeline 10" in late.reason
    assert outcome(decide(outbox, pipeline(11, "success"))) == "fixed"


def test_a_late_failure_still_notifies_but_does_not_rewrite_history(outbox):
    decide(outbox, pipeline(10, "success"))
    assert outcome(decide(outbox, pipeline(9, "failed"))) == "failed"
    assert outcome(decide(outbox, pipeline(11, "success"))) == "ignored"


@pytest.mark.parametrize("other", [
    {"ref": "develop"},
    {"ref": "main", "tag": True},
    {"project": dataclasses.replace(PROJECT, id=43)},
])
def test_history_is_per_project_and_ref(outbox, other):
    decide(outbox, pipeline(1, "failed"))
    assert outcome(decide(outbox, pipeline(2, "success", **{"ref": "main", **other}))) == "ignored"
    assert outcome(decide(outbox, pipeline(3, "success"))) == "fixed"


def test_project_without_id_is_remembered_by_path(outbox):
    project = dataclasses.replace(PROJECT, id=None)
    decide(outbox, pipeline(1, "failed", project=project))
    assert outcome(decide(outbox, pipeline(2, "success", project=project))) == "fixed"


def test_a_resent_fix_is_still_a_fix_so_the_outbox_answers_it_as_a_repeat(outbox):
    decide(outbox, pipeline(1, "failed"))
    fix = decide(outbox, pipeline(2, "success"))
    key = "payload:" + fix.idempotency_key
    outbox.begin_event(key, "pipeline", PROJECT.path, [NewDelivery("dm", "a@example.com", "exact: x", "{}", "u")],
                       lease_owner="me", lease_seconds=10, retry_window=3600)
    assert outcome(decide(outbox, pipeline(2, "success"))) == "fixed"


def test_a_resent_success_that_fixed_nothing_stays_ignored(outbox):
    decide(outbox, pipeline(1, "success"))
    assert outcome(decide(outbox, pipeline(1, "success"))) == "ignored"


def test_merge_request_and_child_pipelines_keep_their_own_history(outbox):
    """An MR pipeline (GitLab sends its source branch as the ref) and a child pipeline on the same ref are other
    pipelines than the branch's: a branch pipeline passing fixes neither, nor does either fix the branch."""
    mr = dict(merge_request_iid=17, source="merge_request_event")
    child = dict(source="parent_pipeline", name="frontend")
    decide(outbox, dataclasses.replace(pipeline(1, "failed", "feature/x"), **mr))
    assert outcome(decide(outbox, pipeline(2, "success", "feature/x"))) == "ignored"
    assert outcome(decide(outbox, dataclasses.replace(pipeline(3, "success", "feature/x"), **mr))) == "fixed"
    decide(outbox, pipeline(4, "success"))
    decide(outbox, dataclasses.replace(pipeline(5, "failed"), **child))
    assert outcome(decide(outbox, pipeline(6, "success"))) == "ignored"
    assert outcome(decide(outbox, dataclasses.replace(pipeline(7, "success"), **child))) == "fixed"


def test_a_merge_request_pipelines_child_keeps_a_history_apart_from_its_parent(outbox):
    """GitLab gives a child pipeline its parent's merge request: a child passing does not fix the parent."""
    parent = dict(merge_request_iid=17, source="merge_request_event")
    child = dict(merge_request_iid=17, source="parent_pipeline", name="frontend")
    decide(outbox, dataclasses.replace(pipeline(1, "failed", "feature/x"), **parent))
    assert outcome(decide(outbox, dataclasses.replace(pipeline(2, "success", "feature/x"), **child))) == "ignored"
    assert outcome(decide(outbox, dataclasses.replace(pipeline(3, "success", "feature/x"), **parent))) == "fixed"


def test_named_children_of_one_parent_keep_a_history_each(outbox):
    """Two child pipelines per run: frontend fails, backend passes; the backend's success fixes nothing."""
    for run in (10, 20):
        assert outcome(decide(outbox, child(run + 1, "failed", "frontend"))) == "failed"
        assert outcome(decide(outbox, child(run + 2, "success", "backend"))) == "ignored"
    assert outcome(decide(outbox, child(31, "success", "frontend"))) == "fixed"


def test_an_unnamed_childs_success_fixes_nothing(outbox):
    """Unnamed siblings cannot be told apart: a success never says fixed, a failure still notifies."""
    assert outcome(decide(outbox, child(11, "failed", ""))) == "failed"
    result = decide(outbox, child(12, "success", ""))
    assert outcome(result) == "ignored" and "workflow:name" in result.reason


def child(pipeline_id: int, status: str, name: str) -> PipelineEvent:
    return dataclasses.replace(pipeline(pipeline_id, status), source="parent_pipeline", name=name)
