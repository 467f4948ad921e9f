"""Tags, merge requests and pipelines through POST /gitlab-webhook, against the fake Feishu."""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from gitlab_feishu.app import create_app
from gitlab_feishu.quiet import SELF_SKIPPED
from gitlab_feishu.settings import ConfigError
from tests.conftest import OWNERS, gitlab_headers, load_payload

USERS = {"zhangsan": "zhangsan@example.com", "lisi": "lisi@example.com", "wangwu": "wangwu@example.com"}
ZHANGSAN = {"to": "zhangsan@example.com", "rule": "fuzzy: Y_野水发财", "result": "sent"}   # the project's owner
HOOKS = {"tag_push": "Tag Push Hook", "merge_request": "Merge Request Hook", "pipeline": "Pipeline Hook",
         "push": "Push Hook"}


@pytest.fixture
def feishu(fake):
    fake.reset()
    for email in {*USERS.values(), *(e for v in OWNERS.values() for e in ([v] if isinstance(v, str) else v))}:
        if "@" in email:
            fake.add_user(email)
    return fake


@pytest.fixture
def settings(settings, feishu):
    settings.users_file.write_text(json.dumps(USERS), encoding="utf-8")
    return dataclasses.replace(settings, feishu_base_url=feishu.url)


def make_client(settings):
    app = create_app(settings, background=False)
    return app.test_client()


@pytest.fixture
def client(settings):
    return make_client(settings)


def post(client, payload: dict, key: str | None = None):
    response = client.post("/gitlab-webhook", data=json.dumps(payload, ensure_ascii=False),
                           headers=gitlab_headers(HOOKS[payload["object_kind"]], key=key))
    assert response.status_code == 200
    return response.json


def pipeline(pipeline_id: int, status: str, **user) -> dict:
    payload = load_payload("chinese_pipeline_failed.json")
    payload["object_attributes"].update(id=pipeline_id, status=status)
    payload["user"].update(user)
    return payload


def sent_to(feishu) -> list[str]:
    return sorted(message["to_email"] for message in feishu.messages)


def test_tag_card_goes_to_the_owner(client, feishu):
    response = post(client, load_payload("chinese_tag_push.json"))
    assert response == {"status": "sent", "event": "tag_push", "project": "grouptwogame/yeshui-client",
                        "deliveries": [ZHANGSAN]}
    [message] = feishu.messages
    assert message["card"]["header"]["template"] == "turquoise"


def test_merge_request_card_goes_to_owner_reviewer_and_assignee_once_each(client, feishu):
    payload = load_payload("chinese_merge_request.json")
    payload["assignees"] += [{"id": 5, "name": "李四", "username": "LISI"}, payload["user"]]
    response = post(client, payload)
    assert response["status"] == "sent" and response["event"] == "merge_request"
    assert response["deliveries"] == [
        ZHANGSAN, {"to": "lisi@example.com", "rule": "reviewer: lisi", "result": "sent"},
        {"to": "wangwu@example.com", "rule": "assignee: wangwu", "result": "sent"}]
    assert sent_to(feishu) == ["lisi@example.com", "wangwu@example.com", "zhangsan@example.com"]


def test_a_reviewer_whom_owners_json_names_by_open_id_gets_one_card(settings, feishu):
    open_id = feishu.add_user("lisi@example.com", "ou_lisi")      # users.json names lisi by email
    settings.owners_file.write_text(json.dumps({"grouptwogame/yeshui-client": open_id}), encoding="utf-8")
    response = post(make_client(settings), load_payload("chinese_merge_request.json"))
    assert [(d["to"], d["result"]) for d in response["deliveries"]] == [
        ("ou_lisi", "sent"), ("lisi@example.com", "sent"), ("wangwu@example.com", "sent")]
    assert sent_to(feishu) == ["lisi@example.com", "wangwu@example.com"]


def test_failed_pipeline_goes_to_owner_and_whoever_triggered_it(client, feishu):
    response = post(client, pipeline(5031, "failed", name="李四", username="lisi"))
    assert response["deliveries"] == [ZHANGSAN, {"to": "lisi@example.com", "rule": "triggered: lisi",
                                                  "result": "sent"}]
    assert all(m["card"]["header"]["template"] == "red" for m in feishu.messages)


def test_owner_who_triggered_the_failure_gets_one_card(client, feishu):
    assert post(client, pipeline(5031, "failed"))["deliveries"] == [ZHANGSAN]


def test_whoever_triggered_a_failed_pipeline_gets_its_card_even_with_notify_self_false(settings, feishu):
    """NOTIFY_SELF=false spares owners what they did themselves; the trigger's card (issue 6) is about their own
    pipeline."""
    client = make_client(dataclasses.replace(settings, notify_self=False))
    response = post(client, pipeline(5031, "failed", name="李四", username="lisi"))
    assert response["deliveries"] == [ZHANGSAN, {"to": "lisi@example.com", "rule": "triggered: lisi",
                                                  "result": "sent"}]
    assert sent_to(feishu) == ["lisi@example.com", "zhangsan@example.com"]


def test_an_owner_who_triggered_a_failed_pipeline_is_skipped_with_notify_self_false(settings, feishu):
    """Issue 7: NOTIFY_SELF=false "stops notifying an owner about an event they caused themselves"; the `user` of a
    pipeline event is who caused it."""
    client = make_client(dataclasses.replace(settings, notify_self=False))
    response = post(client, pipeline(5031, "failed"))
    assert response["status"] == "ignored"
    assert response["deliveries"] == [{**ZHANGSAN, "result": "skipped", "error": SELF_SKIPPED}]
    assert feishu.messages == []


def test_reviewers_of_a_project_nobody_owns_get_nothing(client, feishu):
    payload = load_payload("chinese_merge_request.json")
    payload["project"].update(path_with_namespace="nobody/owns-this", name="unowned")
    response = post(client, payload)
    assert response["status"] == "ignored" and response["deliveries"] == [] and feishu.messages == []


@pytest.mark.parametrize("entry", [
    {"owners": ["zhangsan@example.com"], "events": ["push", "tag_push"]},
    {"owners": ["zhangsan@example.com"], "branches": ["release/*"]},       # the MR targets another branch
])
def test_filters_that_leave_an_event_out_leave_its_reviewers_and_trigger_out_too(settings, feishu, entry):
    settings.owners_file.write_text(json.dumps({"grouptwogame/yeshui-client": entry}), encoding="utf-8")
    client = make_client(settings)
    for payload in (load_payload("chinese_merge_request.json"), pipeline(5031, "failed", username="lisi")):
        response = post(client, payload)
        assert response["status"] == "ignored" and response["deliveries"] == []
    assert feishu.messages == []


def test_success_after_a_failure_says_fixed(client, feishu):
    post(client, pipeline(5031, "failed"))
    response = post(client, pipeline(5032, "success"))
    assert response["status"] == "sent" and response["deliveries"] == [ZHANGSAN]
    assert feishu.messages[-1]["card"]["header"]["title"]["content"].endswith("的流水线恢复了")


def test_success_after_a_success_is_ignored(client, feishu):
    post(client, pipeline(5031, "success"))
    response = post(client, pipeline(5032, "success"))
    assert response["status"] == "ignored" and "last result before it was success" in response["reason"]
    assert feishu.messages == []


def test_a_resent_failure_makes_no_second_card(client, feishu):
    first = post(client, pipeline(5031, "failed"), key="resend-me")
    again = post(client, pipeline(5031, "failed"), key="resend-me")
    assert first["status"] == again["status"] == "sent" and "repeat" in again["reason"]
    assert len(feishu.messages) == 1


def test_a_resent_fix_makes_no_second_card(client, feishu):
    post(client, pipeline(5031, "failed"))
    post(client, pipeline(5032, "success"), key="fix")
    again = post(client, pipeline(5032, "success"), key="fix")
    assert again["status"] == "sent" and "repeat" in again["reason"]
    assert len(feishu.messages) == 2


@pytest.mark.parametrize(("payload", "header", "reason"), [
    (pipeline(5031, "running"), "Pipeline Hook", "status 'running' is not notified"),
    (pipeline(5031, "canceled"), "Pipeline Hook", "was canceled"),
    ({**load_payload("chinese_merge_request.json"),
      "object_attributes": {**load_payload("chinese_merge_request.json")["object_attributes"], "action": "update"}},
     "Merge Request Hook", "action 'update' is not notified"),
    ({"object_kind": "build", "build_status": "failed"}, "Job Hook", "never once per job"),
])
def test_noise_is_ignored_with_a_reason(client, feishu, payload, header, reason):
    response = client.post("/gitlab-webhook", data=json.dumps(payload), headers=gitlab_headers(header)).json
    assert response["status"] == "ignored" and reason in response["reason"]
    assert feishu.messages == []


@pytest.mark.parametrize(("fixture", "kind"), [("chinese_push.json", "push"), ("chinese_tag_push.json", "tag_push"),
                                               ("chinese_merge_request.json", "merge_request"),
                                               ("chinese_pipeline_failed.json", "pipeline")])
def test_an_event_kind_turned_off_is_ignored(settings, feishu, fixture, kind):
    others = frozenset({"push", "tag_push", "merge_request", "pipeline"} - {kind})
    client = make_client(dataclasses.replace(settings, notify_events=others))
    response = post(client, load_payload(fixture))
    assert response["status"] == "ignored" and response["event"] == kind
    assert response["reason"] == f"{kind} events are turned off (NOTIFY_EVENTS)"
    assert feishu.messages == []


def test_without_a_users_file_only_owners_are_notified(settings, feishu):
    settings.users_file.unlink()
    response = post(make_client(settings), load_payload("chinese_merge_request.json"))
    assert response["deliveries"] == [ZHANGSAN]


def test_invalid_users_file_stops_the_start(settings):
    settings.users_file.write_text('{"lisi": "not an email"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="users.json, line 1"):
        create_app(settings, background=False)


def test_healthz_shows_the_users_file_next_to_the_owners(client, settings):
    health = client.get("/healthz").json
    assert health["users"]["path"] == str(settings.users_file)
    assert (health["users"]["entries"], health["users"]["found"], health["users"]["last_error"]) == (3, True, None)
    assert health["owners"]["entries"] == len(OWNERS)


def test_dry_run_logs_a_failure_and_the_success_that_fixes_it(settings, feishu, caplog):
    client = make_client(dataclasses.replace(settings, feishu_app_id=""))
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        failed = post(client, pipeline(5031, "failed"))
        success = post(client, pipeline(5032, "success"))
    assert failed["status"] == "dry_run" and "单元测试" in caplog.text
    assert success["status"] == "dry_run" and "流水线已恢复" in caplog.text
    assert feishu.requests == []
