"""Every card the service makes is card JSON 2.0 as Feishu documents it (tests/card_schema.py, which the fake
Feishu applies to every card it is sent): each real payload in both languages and every MR action and
pipeline status, at full size and trimmed; every alert card; and every real payload through the service.
"""
from __future__ import annotations

import copy
import json
import uuid

import pytest
import requests

from gitlab_feishu.alerts import TEXTS, Problem, render_alert
from gitlab_feishu.card_labels import LANGUAGES
from gitlab_feishu.cards import card_content, render_card
from gitlab_feishu.gitlab import parse_event
from gitlab_feishu.parsers import FINISHED_PIPELINE_STATUSES, MERGE_REQUEST_ACTIONS
from tests.conftest import FIXTURES, SECRET, gitlab_headers, load_payload
from tests.servers import ServiceProcess, service_env
from tests.card_schema import CardError, validate_card

HEADERS = {"push": "Push Hook", "tag_push": "Tag Push Hook", "merge_request": "Merge Request Hook",
           "pipeline": "Pipeline Hook"}
FIXTURE_NAMES = sorted(path.name for path in (FIXTURES / "gitlab").glob("*.json"))


def variants(name: str) -> list[tuple[str, dict]]:
    """A fixture as saved, plus each merge request action and finished pipeline status it can stand for."""
    payload = load_payload(name)
    found = [("as saved", payload)]
    kind = payload["object_kind"]
    for key, values in (("action", MERGE_REQUEST_ACTIONS if kind == "merge_request" else ()),
                        ("status", FINISHED_PIPELINE_STATUSES if kind == "pipeline" else ())):
        for value in values:
            changed = copy.deepcopy(payload)
            changed["object_attributes"][key] = value
            found.append((value, changed))
    return found


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_card_from_a_real_payload_is_valid_card_json_2(name, lang):
    for label, payload in variants(name):
        event = parse_event(payload, HEADERS[payload["object_kind"]])
        for max_bytes in (30 * 1024, 3000):            # full detail, and the trimmed card
            card = render_card(event, lang, max_bytes=max_bytes)
            validate_card(card)
            assert len(card_content(card).encode("utf-8")) <= max_bytes, (label, max_bytes)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("kind", sorted(TEXTS))
def test_every_alert_card_is_valid_card_json_2(kind, lang):
    values = {"recipient": "a_b@example.com", "code": 230013, "scopes": "im:message", "scopes_zh": "im:message",
              "count": 3, "minutes": 5, "threshold": 10, "queued": 12, "oldest": "10:00", "file": "users.json",
              "action_zh": "启用机器人", "action_en": "enable the bot"}
    problem = Problem("key", kind, values, "Feishu 230013: <b>x</b> *y*", "grp/项目_x")
    validate_card(render_alert(problem, lang, "https://open.feishu.cn/app/cli_x"))


@pytest.mark.parametrize("card, why", [
    ({"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": "x", "text": "y"}]}},
     "unsupported properties ['text']"),
    ({"schema": "2.0", "config": {"wide_screen_mode": True}}, "unsupported properties ['wide_screen_mode']"),
    ({"schema": "2.0", "body": {"elements": [{"tag": "note", "elements": []}]}}, "removed in schema 2.0"),
    ({"schema": "2.0", "header": {"title": {"tag": "plain_text", "content": "x"}, "template": "pink"}},
     "'pink' is not one of"),
    ({"schema": "2.0", "body": {"elements": [{"tag": "button", "text": {"tag": "plain_text", "content": "x"}}]}},
     "'behaviors' is required"),
])
def test_the_schema_refuses_what_card_json_2_refuses(card, why):
    with pytest.raises(CardError, match=repr(why)[1:-1].replace("[", r"\[").replace("]", r"\]")):
        validate_card(card)


OWNERS = ("zhangsan@example.com", "lisi@example.com", "owner@example.com")


@pytest.fixture(scope="module")
def service(fake, tmp_path_factory):
    """The real service under gunicorn; each fixture's project has an owner, and one project has two."""
    for email in OWNERS:
        fake.add_user(email)
    folder = tmp_path_factory.mktemp("schema")
    owners = {load_payload(name)["project"]["path_with_namespace"]: "owner@example.com" for name in FIXTURE_NAMES}
    owners["grouptwogame/yeshui-client"] = ["zhangsan@example.com", "lisi@example.com"]
    (folder / "owners.json").write_text(json.dumps(owners, ensure_ascii=False), encoding="utf-8")
    env = service_env(FEISHU_APP_ID="cli_test_app", FEISHU_APP_SECRET="test-secret", FEISHU_BASE_URL=fake.url,
                      GITLAB_WEBHOOK_SECRET=SECRET, OWNERS_FILE=str(folder / "owners.json"),
                      DATA_DIR=str(folder / "data"), LOG_DIR=str(folder / "logs"))
    with ServiceProcess(env, folder / "service.log") as server:
        yield server


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_real_payload_reaches_feishu_without_a_refusal(service, fake, name):
    fake.reset()
    payload = load_payload(name)
    headers = gitlab_headers(HEADERS[payload["object_kind"]], key=str(uuid.uuid4()))
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    answer = requests.post(service.url + "/gitlab-webhook", data=body, headers=headers, timeout=30).json()
    assert fake.state(summary=True)["refused"] == 0
    assert answer["status"] in ("sent", "ignored"), answer
    assert len(fake.messages) == sum(1 for d in answer["deliveries"] if d["result"] == "sent")
