"""Parsing tag pushes, merge requests and pipelines: real payloads, the variants GitLab really sends, and noise."""
from __future__ import annotations

import copy

import pytest

from gitlab_feishu.events import Ignored, Job, MergeRequestEvent, Person, PipelineEvent, PushEvent, TagPushEvent
from gitlab_feishu.gitlab import parse_event
from tests.conftest import load_payload

HEADERS = {"push": "Push Hook", "tag_push": "Tag Push Hook", "merge_request": "Merge Request Hook",
           "pipeline": "Pipeline Hook"}


def parse(payload: dict):
    return parse_event(payload, HEADERS.get(payload.get("object_kind")))


def variant(name: str, **changes) -> dict:
    """A fixture with top-level fields replaced (None deletes the field)."""
    payload = copy.deepcopy(load_payload(name))
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def with_attributes(name: str, **changes) -> dict:
    """A fixture with object_attributes fields replaced (None deletes the field)."""
    payload = copy.deepcopy(load_payload(name))
    for key, value in changes.items():
        if value is None:
            payload["object_attributes"].pop(key, None)
        else:
            payload["object_attributes"][key] = value
    return payload


# --- the interface routing relies on -----------------------------------------------------------

@pytest.mark.parametrize(("fixture", "kind", "actor", "branch", "protected", "key"), [
    ("chinese_push.json", "push", "zhangsan", "feature/登录界面", True,
     "push:42:refs/heads/feature/登录界面:1f0e1c7d9f3b5a4e2d6c8b0a1f2e3d4c5b6a7980:"
     "9a8b7c6d5e4f30211f2e3d4c5b6a798012345678"),
    ("chinese_tag_push.json", "tag_push", "zhangsan", None, True,
     "tag_push:42:refs/tags/v2.3.0:0000000000000000000000000000000000000000:"
     "e1d2c3b4a5f60718293a4b5c6d7e8f9012345678"),
    ("chinese_merge_request.json", "merge_request", "zhangsan", "main", None,
     "merge_request:42:1201:open:2026-11-20T03:20:00Z"),
    ("merge_request.json", "merge_request", "root", "master", None,
     "merge_request:1:99:open:2013-12-03T17:23:34Z"),
    ("chinese_pipeline_failed.json", "pipeline", "zhangsan", "feature/登录界面", None, "pipeline:42:5031:failed:2026-11-20 02:21:40 UTC"),
    ("pipeline.json", "pipeline", "root", "master", None, "pipeline:1:31:success:2016-08-12 15:26:29 UTC"),
])
def test_every_event_offers_the_routing_interface(fixture, kind, actor, branch, protected, key):
    event = parse(load_payload(fixture))
    assert event.kind == kind
    assert event.actor.username == actor
    assert event.branch == branch
    assert event.ref_protected is protected
    assert event.idempotency_key == key
    assert event.project.path


def test_tag_pipeline_is_filtered_on_its_ref():
    event = parse(with_attributes("pipeline.json", ref="v1.0.0", tag=True))
    assert event.tag and event.branch == "v1.0.0"
    assert event.ref_url == "http://192.168.64.1:3005/gitlab-org/gitlab-test/-/tags/v1.0.0"


# --- tag push ----------------------------------------------------------------------------------

def test_current_tag_push_carries_the_tagged_commit_and_its_annotation():
    event = parse(load_payload("chinese_tag_push.json"))
    assert isinstance(event, TagPushEvent) and not event.deleted
    assert event.tag == "v2.3.0"
    assert event.commit.id == event.commit_sha == "5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c"
    assert event.message.startswith("2.3.0 正式版")
    assert event.actor == Person(name="张三", username="zhangsan", email="")
    assert event.tag_url == "https://git.example.cn/grouptwogame/yeshui-client/-/tags/v2.3.0"


@pytest.mark.parametrize("fixture", ["tag_push.json", "zulip_tag_push_hook__add_tag.json"])
def test_older_tag_push_without_commits_names_the_commit_by_checkout_sha(fixture):
    payload = load_payload(fixture)
    event = parse(payload)
    assert event.commit is None and event.commit_sha == payload["checkout_sha"]
    assert event.message is None


@pytest.mark.parametrize(("message", "expected"), [(None, None), ("", None), ("  \n", None), ("发布说明", "发布说明")])
def test_lightweight_tag_has_no_message(message, expected):
    assert parse(variant("chinese_tag_push.json", message=message)).message == expected


def test_tag_checkout_sha_picks_the_tagged_commit_not_the_tag_object():
    event = parse(variant("chinese_tag_push.json", checkout_sha=None))
    assert event.commit_sha == "5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c"
    assert event.after != event.commit_sha


def test_a_tag_tests_sample_keeps_its_own_commit_apart_from_the_branch_commits_listed():
    """GitLab's Test > Tag push events: the newest tag's commit, with the default branch's newest commits."""
    event = parse(variant("chinese_tag_push.json", checkout_sha="d" * 40))
    assert event.commit_sha == "d" * 40 and event.commit is None


def test_deleted_tag():
    event = parse(variant("chinese_tag_push.json", before="e1d2c3b4a5f60718293a4b5c6d7e8f9012345678",
                          after="0" * 40, checkout_sha=None, commits=[], total_commits_count=0, message=None))
    assert event.deleted and event.commit is None and event.commit_sha == ""
    assert event.tag_url == "https://git.example.cn/grouptwogame/yeshui-client/-/tags"


def test_tag_name_is_percent_encoded_in_its_link():
    event = parse(variant("chinese_tag_push.json", ref="refs/tags/发布/2.3 rc#1"))
    assert event.tag_url.endswith("/-/tags/%E5%8F%91%E5%B8%83%2F2.3%20rc%231")


# --- merge requests ----------------------------------------------------------------------------

def merge_request(action: str = "open", changes: dict | None = None, **attributes) -> dict:
    payload = with_attributes("chinese_merge_request.json", action=action, **attributes)
    payload["changes"] = changes or {}
    return payload


DRAFT_OFF = {"draft": {"previous": True, "current": False}}


@pytest.mark.parametrize(("action", "changes", "result"), [
    ("open", {}, "open"),
    ("reopen", {}, "reopen"),
    ("merge", {}, "merge"),
    ("close", {}, "close"),
    ("approved", {}, "approved"),
    ("update", DRAFT_OFF, "ready"),
    ("update", {"title": {"previous": "Draft: 登录界面", "current": "登录界面"}}, "ready"),
    ("update", {"title": {"previous": "[Draft] 登录界面", "current": "登录界面"}}, "ready"),
    ("update", {"title": {"previous": "(draft) 登录界面", "current": "登录界面"}}, "ready"),
    ("update", {"title": {"previous": "WIP: 登录界面", "current": "登录界面"}}, "ready"),
    ("update", {"title": {"previous": "[WIP] 登录界面", "current": "登录界面"}}, "ready"),     # before GitLab 14
    ("update", {"title": {"previous": "WIP 登录界面", "current": "登录界面"}}, "ready"),
    ("update", {"title": {"previous": "Wipe 登录界面", "current": "登录界面"}}, "ignored"),
    # GitLab 14+ sends the draft flag: its word counts, not a title that merely starts "WIP "
    ("update", {"title": {"previous": "WIP parser", "current": "Parser"},
                "draft": {"previous": False, "current": False}}, "ignored"),
    ("update", {"title": {"previous": "登录界面", "current": "Draft: 登录界面"}}, "ignored"),
    ("update", {"title": {"previous": "Draft: 登录", "current": "Draft: 登录界面"}}, "ignored"),
    ("update", {"draft": {"previous": False, "current": True}}, "ignored"),
    ("update", {"labels": {"previous": [], "current": [{"title": "API"}]}}, "ignored"),
    ("update", {}, "ignored"),
    ("unapproved", {}, "ignored"),
    ("approval", {}, "ignored"),
    ("unapproval", {}, "ignored"),
])
def test_merge_request_actions_notify_or_are_ignored(action, changes, result):
    event = parse(merge_request(action, changes))
    if result == "ignored":
        assert isinstance(event, Ignored)
        assert "is not notified" in event.reason and "approved" in event.reason
    else:
        assert isinstance(event, MergeRequestEvent) and event.action == result


@pytest.mark.parametrize(("state", "result"), [("opened", "open"), ("merged", None), ("closed", None)])
def test_a_merge_request_without_an_action_is_an_open_one_while_opened(state, result):
    """GitLab's Test button before 15 sent the merge request without `action`."""
    event = parse(merge_request("", state=state))
    assert (event.action if isinstance(event, MergeRequestEvent) else None) == result


def test_gitlab_11s_single_assignee_is_read():
    payload = merge_request()
    payload["assignee"] = payload.pop("assignees")[0]
    assert [p.username for p in parse(payload).assignees] == ["wangwu"]


def test_merge_request_fields():
    event = parse(load_payload("chinese_merge_request.json"))
    assert (event.iid, event.reference, event.title) == (17, "!17", "登录界面：微信登录与 1080p 适配")
    assert (event.source_branch, event.target_branch) == ("feature/登录界面", "main")
    assert event.url == "https://git.example.cn/grouptwogame/yeshui-client/-/merge_requests/17"
    assert event.author == event.actor == Person(name="张三", username="zhangsan")   # "[REDACTED]" is no email
    assert [p.username for p in event.reviewers] == ["lisi"]
    assert [p.username for p in event.assignees] == ["wangwu"]
    assert "微信登录" in event.description


def test_merge_request_author_is_found_among_the_people_the_payload_describes():
    payload = merge_request("merge", author_id=6)
    payload["user"] = {"id": 9, "name": "赵六", "username": "zhaoliu"}
    event = parse(payload)
    assert event.actor.username == "zhaoliu" and event.author.username == "wangwu"


def test_merge_request_author_unknown_when_the_payload_does_not_describe_them():
    assert parse(merge_request("merge", author_id=1234)).author is None


@pytest.mark.parametrize(("drop", "check"), [
    ("reviewers", lambda e: e.reviewers == ()),
    ("assignees", lambda e: e.assignees == ()),
    ("user", lambda e: e.actor == Person()),
])
def test_merge_request_without_people_keys(drop, check):
    payload = merge_request()
    del payload[drop]
    assert check(parse(payload))


@pytest.mark.parametrize(("attribute", "value", "check"), [
    ("description", None, lambda e: e.description == ""),
    ("url", None, lambda e: e.url == "https://git.example.cn/grouptwogame/yeshui-client/-/merge_requests/17"),
    ("author_id", None, lambda e: e.author is None),
    ("id", None, lambda e: e.idempotency_key.startswith("merge_request:42:17:open:")),
])
def test_merge_request_missing_fields(attribute, value, check):
    payload = merge_request()
    payload["object_attributes"][attribute] = value
    assert check(parse(payload))


@pytest.mark.parametrize(("source", "fork_path"), [
    ({"path_with_namespace": "lisi/yeshui-client"}, "lisi/yeshui-client"),        # a fork
    ({"path_with_namespace": "GroupTwoGame/Yeshui-Client"}, ""),                  # the project itself
    (None, ""),                                                                   # older GitLab: no source
])
def test_merge_request_from_a_fork_names_the_fork(source, fork_path):
    assert parse(merge_request(source=source)).fork_path == fork_path


def test_merge_request_without_iid_is_ignored():
    assert "iid" in parse(merge_request(iid=None)).reason


# --- pipelines ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "parsed"), [
    ("failed", True), ("success", True), ("canceled", True),
    ("created", False), ("waiting_for_resource", False), ("preparing", False), ("pending", False),
    ("running", False), ("skipped", False), ("manual", False), ("scheduled", False), ("", False),
])
def test_only_finished_pipelines_get_past_the_parser(status, parsed):
    event = parse(with_attributes("pipeline.json", status=status))
    if parsed:
        assert isinstance(event, PipelineEvent) and event.status == status
    else:
        assert isinstance(event, Ignored) and "is not notified" in event.reason


def test_failed_jobs_skip_allowed_failures_and_retried_runs_in_stage_order():
    event = parse(load_payload("chinese_pipeline_failed.json"))
    assert event.failed_jobs == (Job("build-ios", "build", "stuck_or_timeout_failure"),
                                 Job("单元测试", "test", "script_failure"))


def test_pipeline_fields():
    event = parse(load_payload("chinese_pipeline_failed.json"))
    assert (event.id, event.iid, event.status, event.ref, event.tag) == (5031, 88, "failed", "feature/登录界面", False)
    assert event.url == "https://git.example.cn/grouptwogame/yeshui-client/-/pipelines/5031"
    assert event.actor == Person(name="张三", username="zhangsan")
    assert (event.source, event.duration, event.sha[:8]) == ("push", 318, "3c2b1a0f")
    assert event.commit.title == "修复：登录界面在 1080p 下按钮错位"


def test_old_minimal_pipeline_payload():
    event = parse(load_payload("zulip_pipeline_hook__pipeline_succeeded.json"))
    assert event.url == "https://gitlab.com/TomaszKolek/my-awesome-project/-/pipelines/4414206"
    assert event.iid is None and event.source == "" and event.actor.email == ""
    assert event.idempotency_key == "pipeline:TomaszKolek/my-awesome-project:4414206:success:2016-09-28 20:22:34 UTC"


@pytest.mark.parametrize(("change", "check"), [
    (lambda p: p["object_attributes"].pop("url"),
     lambda e: e.url == "http://192.168.64.1:3005/gitlab-org/gitlab-test/-/pipelines/31"),
    (lambda p: p.pop("builds"), lambda e: e.failed_jobs == ()),
    (lambda p: p["user"].pop("email"), lambda e: e.actor == Person(name="Administrator", username="root")),
    (lambda p: p.update(user=None), lambda e: e.actor == Person()),
    (lambda p: p.pop("commit"), lambda e: e.commit is None),
    (lambda p: p["object_attributes"].update(duration=None), lambda e: e.duration is None),
    (lambda p: p["object_attributes"].update(stages="oops"),
     lambda e: [job.name for job in e.failed_jobs] == ["test-build"]),
    (lambda p: None, lambda e: e.merge_request_iid == 1),               # a merge request's pipeline
    (lambda p: p.update(merge_request=None), lambda e: e.merge_request_iid is None),
    (lambda p: None, lambda e: e.name == "Pipeline for branch: master"),     # workflow:name
    (lambda p: p["object_attributes"].update(name=None), lambda e: e.name == ""),
    (lambda p: p["object_attributes"].pop("name"), lambda e: e.name == ""),  # before GitLab 16
    (lambda p: None, lambda e: e.ref_url.endswith("/-/tree/master")),      # an MR of the same project
    (lambda p: p["merge_request"].update(source_project_id=777),            # from a fork: its branch is there
     lambda e: e.ref_url == "http://192.168.64.1:3005/gitlab-org/gitlab-test/merge_requests/1"),
    (lambda p: p["merge_request"].update(source_project_id=777, url=None),  # ... and no URL: built as GitLab does
     lambda e: e.ref_url == "http://192.168.64.1:3005/gitlab-org/gitlab-test/-/merge_requests/1"),
    (lambda p: p["merge_request"].update(target_project_id=777, url=None),  # ran in the fork: its branch is here
     lambda e: e.ref_url == "http://192.168.64.1:3005/gitlab-org/gitlab-test/-/tree/master"),
])
def test_pipeline_missing_fields(change, check):
    payload = with_attributes("pipeline.json", status="failed")
    change(payload)
    assert check(parse(payload))


@pytest.mark.parametrize("field", ["id", "ref"])
def test_pipeline_without_id_or_ref_is_ignored(field):
    assert f"object_attributes.{field}" in parse(with_attributes("pipeline.json", **{field: None})).reason


# --- what is never handled ---------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "header", "reason"), [
    ({"object_kind": "build", "build_status": "failed"}, "Job Hook", "never once per job"),
    ({"object_kind": "deployment"}, "Deployment Hook", "deployment events are not handled"),
    ({"object_kind": "note"}, "Note Hook", "note events are not handled"),
    (load_payload("merge_request.json"), "Pipeline Hook", "does not match"),
])
def test_other_kinds_are_ignored_with_a_reason(payload, header, reason):
    event = parse_event(payload, header)
    assert isinstance(event, Ignored) and reason in event.reason


@pytest.mark.parametrize(("kind", "label"), [("tag_push", "tag push"), ("merge_request", "merge request"),
                                             ("pipeline", "pipeline")])
def test_payload_without_project_is_ignored(kind, label):
    assert parse({"object_kind": kind}).reason == f"{label} payload has no project.path_with_namespace"


def test_push_still_parses_as_before():
    event = parse(load_payload("push.json"))
    assert isinstance(event, PushEvent) and event.total_commits == 4 and event.branch == "master"
