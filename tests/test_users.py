"""users.json: GitLab usernames to Feishu recipients; validation, encodings, hot reload, and who it adds."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gitlab_feishu.events import Person, PipelineEvent, Project
from gitlab_feishu.gitlab import parse_event
from gitlab_feishu.owners import Match
from gitlab_feishu.settings import ConfigError
from gitlab_feishu.users import Users, UsersFile, load_users, with_people
from tests.conftest import load_payload, shipped_file
from tests.test_owners import FakeClock, save, write_owners

LOGGER = "gitlab_feishu.users"
PEOPLE = {"zhangsan": "zhangsan@example.com", "lisi": "LiSi@Example.com", "wangwu": "ou_0123456789abcdef"}


def users_file(tmp_path: Path, content) -> Path:
    return write_owners(tmp_path, content, name="users.json")


# --- loading and validation -------------------------------------------------------------------

def test_usernames_map_to_emails_and_open_ids_ignoring_case(tmp_path):
    users = load_users(users_file(tmp_path, PEOPLE))
    assert len(users) == 3 and users.found
    assert users.recipient("ZhangSan") == "zhangsan@example.com"
    assert users.recipient("wangwu") == "ou_0123456789abcdef"
    assert users.recipient("nobody") is None and users.recipient("") is None


def test_missing_file_turns_the_feature_off(tmp_path):
    users = load_users(tmp_path / "users.json")
    assert not users.found and len(users) == 0


def test_shipped_users_file_is_an_empty_map(tmp_path):
    users = load_users(shipped_file("config/users.json", tmp_path))
    assert users.found and len(users) == 0 and users.warnings == ()


@pytest.mark.parametrize("text, line, words", [
    ('{\n  "zhangsan": "zhangsan@example"\n}', 2, ['"zhangsan"', "not an email address"]),
    ('{\n  "zhangsan": "ｚｈａｎｇｓａｎ@example.com"\n}', 2, ['"zhangsan"', "full-width or invisible"]),
    ('{\n  "zhangsan": ["a@example.com"]\n}', 2, ['"zhangsan"', "one person per username", "not a list"]),
    ('{\n  "zhangsan": null\n}', 2, ['"zhangsan"', "not null"]),
    ('{\n  "@zhangsan": "a@example.com"\n}', 2, ['"@zhangsan"', "not a GitLab username"]),
    ('{\n  "张三": "a@example.com"\n}', 2, ['"张三"', "not a GitLab username"]),
    ('{\n  "": "a@example.com"\n}', 2, ["not a GitLab username"]),
    ('{\n  "lisi": "a@example.com",\n  "LiSi": "b@example.com"\n}', 3, ['"LiSi"', "same GitLab user as line 2"]),
    ('{\n  "lisi": "a@example.com",\n  "lisi": "b@example.com"\n}', 3, ['"lisi"', "twice"]),
    ('{\n  "lisi": "a@example.com",\n}', 2, ["not valid JSON", '"lisi"', "comma after the last"]),
    ('{\n  “lisi”: "a@example.com"\n}', 2, ["not valid JSON", "ASCII quotes"]),
    ('["lisi"]', 1, ["top level must be a JSON object", "not a list"]),
])
def test_invalid_file_names_file_line_and_problem(tmp_path, text, line, words):
    path = users_file(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_users(path)
    message = str(raised.value)
    assert str(path) in message and f"line {line}" in message
    for word in words:
        assert word in message


CHINESE = '{\n  "zhangsan": "张三@example.cn"\n}'


def test_utf8_with_bom_is_normal(tmp_path):
    users = load_users(users_file(tmp_path, CHINESE.encode("utf-8-sig")))
    assert users.recipient("zhangsan") == "张三@example.cn" and users.warnings == ()


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("gbk", "GBK")])
def test_other_notepad_encodings_are_decoded_with_a_warning(tmp_path, caplog, encoding, name):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        users = load_users(users_file(tmp_path, CHINESE.encode(encoding)))
    assert users.recipient("zhangsan") == "张三@example.cn"
    assert name in users.warnings[0] and caplog.records[0].getMessage() == users.warnings[0]


def test_invalid_file_at_start_raises(tmp_path):
    with pytest.raises(ConfigError, match="not an email address"):
        UsersFile(users_file(tmp_path, {"lisi": "nobody"}), clock=FakeClock())


# --- hot reload ---------------------------------------------------------------------------------

@pytest.fixture
def watched(tmp_path):
    path = tmp_path / "users.json"
    save(path, {"lisi": "old@example.com"}, 1_700_000_000)
    clock = FakeClock()
    return path, clock, UsersFile(path, clock=clock, check_interval=2.0)


def test_good_edit_applies_after_the_check_interval(watched):
    path, clock, users = watched
    save(path, {"lisi": "new@example.com"}, 1_700_000_100)
    assert users.current().recipient("lisi") == "old@example.com"
    clock.now += 2
    assert users.current().recipient("lisi") == "new@example.com"


def test_broken_edit_keeps_the_last_good_version(watched, caplog):
    path, clock, users = watched
    save(path, '{\n  "lisi": "new@example.com",\n', 1_700_000_100)
    clock.now += 2
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert users.current().recipient("lisi") == "old@example.com"
    assert "line 3" in users.state()["last_error"]
    assert caplog.records[-1].levelno == logging.ERROR


def test_deleting_the_file_turns_the_feature_off_and_recreating_it_on(watched):
    path, clock, users = watched
    path.unlink()
    clock.now += 2
    assert users.current().recipient("lisi") is None
    assert users.state()["found"] is False and users.state()["last_error"] is None
    save(path, {"lisi": "back@example.com"}, 1_700_000_200)
    clock.now += 2
    assert users.current().recipient("lisi") == "back@example.com" and users.state()["found"]


def test_state_reports_path_entries_and_whether_the_file_exists(watched):
    path, _, users = watched
    state = users.state()
    assert (state["path"], state["entries"], state["found"], state["last_error"]) == (str(path), 1, True, None)


# --- who the users file adds --------------------------------------------------------------------

def test_a_process_started_after_a_broken_save_uses_the_last_good_users_file(tmp_path):
    path, copy = users_file(tmp_path, {"lisi": "lisi@example.com"}), tmp_path / "last-good-users.json"
    UsersFile(path, last_good=copy)
    save(path, '{"lisi": "nobody"}', 1_700_000_100)
    later = UsersFile(path, last_good=copy)
    assert later.current().recipient("lisi") == "lisi@example.com" and later.state()["last_error"]


def test_a_missing_users_file_keeps_no_copy(tmp_path):
    copy = tmp_path / "last-good-users.json"
    copy.write_text('{"lisi": "lisi@example.com"}', encoding="utf-8")
    UsersFile(tmp_path / "users.json", last_good=copy)
    assert not copy.exists()

def people(payload_name: str, **attributes):
    payload = load_payload(payload_name)
    payload.get("object_attributes", {}).update(attributes)
    return parse_event(payload, None)


USERS = Users(Path("users.json"), {name: email for name, email in
                                   [("zhangsan", "zhangsan@example.com"), ("lisi", "lisi@example.com"),
                                    ("wangwu", "wangwu@example.com")]})
OWNER = Match("zhangsan@example.com", "fuzzy: Y_野水发财")


def test_merge_request_adds_reviewers_then_assignees():
    event = people("chinese_merge_request.json")
    assert with_people([OWNER], event, USERS) == [
        OWNER, Match("lisi@example.com", "reviewer: lisi"), Match("wangwu@example.com", "assignee: wangwu")]


def test_each_person_once_even_when_an_owner_or_in_two_roles():
    payload = load_payload("chinese_merge_request.json")
    payload["assignees"] = payload["reviewers"] + [{"id": 4, "name": "张三", "username": "ZhangSan"}]
    event = parse_event(payload, None)
    owner = Match("ZhangSan@Example.com", "exact: 测试项目")
    assert with_people([owner], event, USERS) == [owner, Match("lisi@example.com", "reviewer: lisi")]


def test_failed_pipeline_adds_whoever_triggered_it():
    event = people("chinese_pipeline_failed.json")
    assert with_people([], event, USERS) == [Match("zhangsan@example.com", "triggered: zhangsan")]


@pytest.mark.parametrize("event", [
    people("chinese_push.json"),
    people("chinese_tag_push.json"),
    PipelineEvent(project=Project(path="a/b", name="b"), actor=Person(username="zhangsan"), id=1, status="success",
                  ref="main", tag=False, url="", fixed=True),
])
def test_other_events_add_nobody(event):
    assert with_people([OWNER], event, USERS) == [OWNER]


def test_people_missing_from_the_users_file_are_skipped():
    event = people("chinese_merge_request.json")
    assert with_people([], event, Users(Path("users.json"), {"lisi": "lisi@example.com"})) == [
        Match("lisi@example.com", "reviewer: lisi")]
