"""owners.json object entries: branch and event filters, glob keys, group chats, and their validation."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from gitlab_feishu.events import Person, Project, PushEvent
from gitlab_feishu.owners import load_owners
from gitlab_feishu.parsers import parse_pipeline
from gitlab_feishu.settings import ConfigError
from tests.conftest import load_payload

BOT = "https://open.feishu.cn/open-apis/bot/v2/hook/0a1b2c3d-secret-token"
LARK_BOT = "https://open.larksuite.com/open-apis/bot/v2/hook/9f8e7d6c-lark-token"


@dataclass(frozen=True)
class StandIn:
    """Any event kind as routing sees it (the interface every event class offers)."""
    kind: str
    project: Project
    branch: str | None
    ref_protected: bool | None = None
    actor: Person = field(default_factory=Person)


def project(path: str = "grouptwogame/client", name: str = "客户端", default_branch: str = "main") -> Project:
    return Project(path=path, name=name, default_branch=default_branch)


def push(branch: str = "main", protected: bool | None = None, **kwargs) -> PushEvent:
    return PushEvent(project=project(**kwargs), actor=Person(), ref=f"refs/heads/{branch}", before="1" * 40,
                     after="2" * 40, ref_protected=protected)


def owners_of(tmp_path, content: dict):
    path = tmp_path / "owners.json"
    path.write_text(json.dumps(content, ensure_ascii=False, indent=2), encoding="utf-8")
    return load_owners(path)


def notified(owners, event) -> list[str]:
    return [m.recipient for m in owners.match(event)]


# --- filters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("filters, event, hit", [
    ({"branches": ["main"]}, push("main"), True),
    ({"branches": ["main"]}, push("dev"), False),
    ({"branches": ["main"]}, push("Main"), False),                        # branches are case-sensitive, as in git
    ({"branches": ["release/*"]}, push("release/1.0"), True),
    ({"branches": ["release/*"]}, push("release/1.0/hotfix"), True),      # `*` crosses `/`, as in GitLab
    ({"branches": ["release/*"]}, push("releases/1.0"), False),
    ({"branches": ["*-stable"]}, push("16-9-stable"), True),
    ({"branches": ["feature/发布*"]}, push("feature/发布-二期"), True),
    ({"branches": [":default"]}, push("main"), True),
    ({"branches": [":default"]}, push("dev"), False),
    ({"branches": [":default"]}, push("main", default_branch=""), False),  # default branch unknown
    ({"branches": [":protected"]}, push("dev", protected=True), True),    # GitLab's ref_protected decides
    ({"branches": [":protected"]}, push("main", protected=False), False),
    ({"branches": [":protected"]}, push("main"), True),                   # not sent: only the default branch
    ({"branches": [":protected"]}, push("dev"), False),
    ({"branches": ["dev", ":default"]}, push("main"), True),
    ({"events": ["push"]}, push("dev"), True),
    ({"events": ["pipeline", "merge_request"]}, push("main"), False),
    ({"events": ["merge_request"]}, StandIn("merge_request", project(), "main"), True),
    ({"branches": ["main"]}, StandIn("merge_request", project(), "main"), True),   # MR: its target branch
    ({"branches": ["main"]}, StandIn("merge_request", project(), "feature/x"), False),
    ({"branches": ["main"]}, StandIn("pipeline", project(), "dev"), False),
    ({"branches": [":protected"]}, StandIn("pipeline", project(), "dev", ref_protected=True), True),
    ({"branches": ["main"]}, StandIn("tag_push", project(), None), True),          # tags ignore branches
    ({"branches": ["main"]}, StandIn("pipeline", project(), "v1.0"), False),       # a pipeline: its ref,
    ({"branches": ["v*"]}, StandIn("pipeline", project(), "v1.0"), True),          # a tag's included
    ({"branches": [":default"]}, StandIn("pipeline", project(), "v1.0"), False),
    ({"events": ["push"]}, StandIn("tag_push", project(), None), False),
    ({"branches": ["main"], "events": ["push"]}, push("main"), True),
    ({"branches": ["main"], "events": ["pipeline"]}, push("main"), False),
])
def test_branch_and_event_filters(tmp_path, filters, event, hit):
    owners = owners_of(tmp_path, {"grouptwogame": {"owners": ["lead@example.com"], **filters}})
    assert notified(owners, event) == (["lead@example.com"] if hit else [])


def test_plain_entries_mean_every_branch_and_every_event(tmp_path):
    owners = owners_of(tmp_path, {"grouptwogame": "lead@example.com", "client": ["dev@example.com"]})
    for event in (push("anything/at-all"), StandIn("tag_push", project(), None),
                  StandIn("pipeline", project(), "dev"), StandIn("merge_request", project(), "x")):
        assert notified(owners, event) == ["lead@example.com", "dev@example.com"]


def test_an_exact_entry_filtered_out_never_falls_through_to_fuzzy(tmp_path):
    owners = owners_of(tmp_path, {"grouptwogame": {"owners": ["lead@example.com"], "events": ["pipeline"]},
                                  "grouptwo": "fuzzy@example.com"})
    assert notified(owners, push()) == []
    assert "filters exclude this event" in owners.why_nobody(push())
    assert "exact: grouptwogame (events: pipeline) filtered out: event push" in owners.why_nobody(push())


def test_filters_apply_per_entry(tmp_path):
    owners = owners_of(tmp_path, {"grouptwogame": {"owners": ["lead@example.com"], "branches": [":default"]},
                                  "client": "dev@example.com"})
    assert notified(owners, push("main")) == ["lead@example.com", "dev@example.com"]
    assert notified(owners, push("feature/x")) == ["dev@example.com"]


# --- glob keys --------------------------------------------------------------------------------

@pytest.mark.parametrize("key, path, hit", [
    ("grouptwogame/*", "grouptwogame/client", True),
    ("grouptwogame/*", "grouptwogame/sub/client", True),
    ("GroupTwoGame/*", "grouptwogame/client", True),
    ("grouptwogame/*", "grouptwogame", False),
    ("grouptwogame/*", "other/grouptwogame/client", False),     # a glob covers the full path
    ("*/client-*", "team/client-ios", True),
    ("*/client-*", "client-ios", False),
    ("*/client-*", "team/server-ios", False),
    ("*", "any/project", True),
    ("team/*-legacy", "team/billing-legacy", True),
    ("team/*-legacy", "team/billing-legacy-v2", False),
])
def test_glob_keys_match_the_full_path(tmp_path, key, path, hit):
    owners = owners_of(tmp_path, {key: "lead@example.com"})
    assert notified(owners, push(path=path, name="名字")) == (["lead@example.com"] if hit else [])


def test_glob_keys_count_as_exact_and_silence_the_fuzzy_tier(tmp_path):
    owners = owners_of(tmp_path, {"grouptwogame/*": "lead@example.com", "client": "fuzzy@example.com"})
    found = owners.match(push(path="grouptwogame/client-v2"))
    assert [(m.recipient, m.rule) for m in found] == [("lead@example.com", "exact: grouptwogame/*")]


def test_glob_keys_never_match_fuzzily(tmp_path):
    owners = owners_of(tmp_path, {"yeshui_*": "lead@example.com"})   # its part "yeshui" is not used fuzzily
    assert notified(owners, push(path="games/yeshui-v2")) == []


# --- group chats ------------------------------------------------------------------------------

def test_chats_are_matched_like_owners_and_listed_once(tmp_path):
    owners = owners_of(tmp_path, {
        "grouptwogame": {"owners": ["lead@example.com"], "chats": [BOT]},
        "client": {"chats": [BOT, {"url": LARK_BOT, "secret": "sig-secret"}], "owners": ["LEAD@example.com"]},
    })
    found = owners.match(push())
    assert [(m.channel, m.recipient, m.rule) for m in found] == [
        ("dm", "lead@example.com", "exact: grouptwogame"), ("chat", BOT, "exact: grouptwogame"),
        ("chat", LARK_BOT, "exact: client")]
    assert owners.chat_secret(LARK_BOT) == "sig-secret" and owners.chat_secret(BOT) is None


def test_a_secret_given_once_applies_wherever_the_bot_is_listed(tmp_path):
    owners = owners_of(tmp_path, {"a": {"chats": [{"url": BOT, "secret": "s1"}]}, "b": {"chats": [BOT]}})
    assert owners.chat_secret(BOT) == "s1"


@pytest.mark.parametrize("url", [
    BOT, LARK_BOT, "https://open.larkoffice.com/open-apis/bot/v2/hook/abc123",
    "http://127.0.0.1:8080/open-apis/bot/v2/hook/test-bot",
])
def test_bot_urls_of_feishu_lark_and_test_servers_are_accepted(tmp_path, url):
    owners = owners_of(tmp_path, {"client": {"chats": [url]}})
    assert [m.channel for m in owners.match(push())] == ["chat"]


def test_chat_urls_and_secrets_stay_out_of_reprs_and_notes(tmp_path):
    owners = owners_of(tmp_path, {"client": {"chats": [{"url": BOT, "secret": "sig-secret"}]}})
    routing = owners.route(push())
    shown = repr(owners) + repr(routing) + repr(owners.entries)
    assert "secret-token" not in shown and "sig-secret" not in shown
    assert "exact: client -> chat:…/hook/0a1b…" in routing.notes


# --- route notes (for --match) ----------------------------------------------------------------

def test_route_explains_each_decision(tmp_path):
    owners = owners_of(tmp_path, {
        "grouptwogame/*": "lead@example.com",
        "grouptwogame": {"owners": ["ci@example.com"], "events": ["pipeline"]},
        "client": {"owners": ["lead@example.com"], "branches": ["main", "release/*"]},
    })
    assert owners.route(push("main")).notes == (
        "exact: grouptwogame/* -> lead@example.com",
        "exact: grouptwogame (events: pipeline) filtered out: event push",
        "exact: client (branches: main, release/*) -> lead@example.com (already notified through "
        "exact: grouptwogame/*)",
        "fuzzy tier not used: exact matches exist",
    )


def test_route_says_when_the_fuzzy_tier_decided_or_nothing_matched(tmp_path):
    owners = owners_of(tmp_path, {"grouptwo": "fuzzy@example.com"})
    assert owners.route(push()).notes == ("no exact match: fuzzy tier used", "fuzzy: grouptwo -> fuzzy@example.com")
    assert owners.route(push(path="other/thing", name="别的")).notes == (
        "no entry matches other/thing (别的), exactly or fuzzily",)


# --- validation -------------------------------------------------------------------------------

def entry(fields: str) -> str:
    """owners.json text whose entry "client" is an object with `fields` on lines 3 onwards."""
    return '{\n  "other": "x@example.com",\n  "client": {\n' + fields + "\n  }\n}"


def test_a_bot_url_written_as_an_owner_is_named_without_its_token(tmp_path):
    """Such messages reach the log and /healthz: a webhook URL's path is its credential."""
    url = "https://open.feishu.cn/open-apis/bot/v2/hook/5e6f7a8b-secret-token"
    path = tmp_path / "owners.json"
    path.write_text(json.dumps({"client": url}), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_owners(path)
    assert "secret-token" not in str(raised.value)
    assert 'chat:…/hook/5e6f… is not an email' in str(raised.value) and 'goes under "chats"' in str(raised.value)


@pytest.mark.parametrize("text, line, words", [
    (entry('    "owner": ["a@example.com"]'), 4, ['"client"', 'field "owner"', 'did you mean "owners"']),
    (entry('    "owners": ["a@example.com"],\n    "colour": "red"'), 5, ['field "colour"', "unknown field"]),
    (entry('    "owners": "a@example.com"'), 4, ['field "owners"', "must be a list", "not text"]),
    (entry('    "owners": ["a@example"]'), 4, ['field "owners"', '"a@example" is not an email']),
    (entry('    "owners": ["a@example.com"],\n    "events": ["pushes"]'), 5,
     ['field "events"', '"pushes" is not an event', "push, tag_push, merge_request, pipeline"]),
    (entry('    "owners": ["a@example.com"],\n    "events": "push"'), 5, ['field "events"', "must be a list"]),
    (entry('    "owners": ["a@example.com"],\n    "events": []'), 5, ['field "events"', "empty"]),
    (entry('    "owners": ["a@example.com"],\n    "branches": [":main"]'), 5,
     ['field "branches"', '":main" is not a preset', ":default and :protected"]),
    (entry('    "owners": ["a@example.com"],\n    "branches": ["refs/heads/main"]'), 5, ["without refs/heads/"]),
    (entry('    "owners": ["a@example.com"],\n    "branches": ["my branch"]'), 5, ['"my branch" is not a branch']),
    (entry('    "owners": ["a@example.com"],\n    "branches": ["a..b"]'), 5, ['"a..b" is not a branch']),
    (entry('    "owners": ["a@example.com"],\n    "branches": ["release/"]'), 5, ['"release/" is not a branch']),
    (entry('    "owners": ["a@example.com"],\n    "branches": [5]'), 5, ["name or pattern in quotes", "number 5"]),
    (entry('    "branches": ["main"],\n    "owners": ["a@example.com"],\n    "branches": ["dev"]'), 6,
     ['field "branches" appears twice']),
    (entry('    "chats": ["https://example.com/webhook"]'), 4,
     ['field "chats", item 1', 'https://example.com/… is not a custom-bot webhook URL']),   # a path may be a secret
    (entry('    "chats": ["open.feishu.cn/open-apis/bot/v2/hook/abcsecret"]'), 4,
     ["chat:…/hook/abcs… is not an https URL"]),                      # the token masked without a scheme too
    (entry('    "chats": [{"url": "' + BOT + '", "secret": ""}]'), 4, ['"secret" must be']),
    (entry('    "chats": [{"url": "' + BOT + '", "sign": "x"}]'), 4, ['unknown field "sign"', '"url" and "secret"']),
    (entry('    "chats": [5]'), 4, ["bot webhook URL in quotes", "number 5"]),
    (entry('    "chats": [{"secret": "s-one"}]'), 4, ['"url" is missing']),
    (entry('    "chats": [{"url": 5, "secret": "s-one"}]'), 4, ['"url" must be', "number 5"]),
    (entry('    "chats": [{"url": 5}]'), 4, ['"url" must be', "number 5"]),
    (entry('    "chats": [\n      "' + BOT + '?x=1"\n    ]'), 4, ["chat:…/hook/0a1b…", "not a custom-bot webhook URL"]),
    (entry(""), 3, ['"client"', "names nobody to notify"]),
    (entry('    "owners": []'), 3, ["names nobody to notify"]),
    (entry('    "branches": ["main"]'), 3, ["names nobody to notify"]),
    ('{\n  "a": {"chats": [{"url": "' + BOT + '", "secret": "s-one"}]},\n'
     '  "b": {"chats": [{"url": "' + BOT + '", "secret": "s-two"}]}\n}', 3, ["different secret on line 2"]),
])
def test_invalid_entry_objects_name_file_line_key_and_field(tmp_path, text, line, words):
    path = tmp_path / "owners.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_owners(path)
    message = str(raised.value)
    assert message.startswith(f"{path}, line {line}: key ")
    for word in words:
        assert word in message
    assert "secret-token" not in message and "s-one" not in message and "s-two" not in message


def test_owners_of_an_object_entry_are_checked_like_plain_ones(tmp_path):
    owners = owners_of(tmp_path, {"client": {"owners": ["a@example.com", "ou_0123abcd"]}})
    assert notified(owners, push()) == ["a@example.com", "ou_0123abcd"]


def test_names_tells_whether_any_entry_names_a_project_whatever_its_filters(tmp_path):
    owners = owners_of(tmp_path, {"grouptwogame/*": {"chats": [BOT], "events": ["pipeline"]}, "yeshui": "a@b.cn"})
    assert owners.names(project("grouptwogame/client")) and owners.names(project("games/yeshui-v2", name="x"))
    assert not owners.names(project("other/thing", name="别的"))


@pytest.mark.parametrize("ref, protected_ref, hit", [
    ("release/1.0", True, True),      # GitLab says the ref is protected: a :protected entry hears its pipelines
    ("main", False, False),           # GitLab says it is not, default branch or not
    ("main", None, True),             # older GitLab sends no protected_ref: only the default branch counts
    ("dev", None, False),
])
def test_protected_filter_reads_a_pipelines_protected_ref(tmp_path, ref, protected_ref, hit):
    payload = load_payload("pipeline.json")
    payload["object_attributes"].update(status="failed", ref=ref)
    payload["project"]["default_branch"] = "main"
    if protected_ref is not None:
        payload["object_attributes"]["protected_ref"] = protected_ref
    owners = owners_of(tmp_path, {"gitlab-org/gitlab-test": {"owners": ["lead@example.com"],
                                                              "branches": [":protected"]}})
    assert notified(owners, parse_pipeline(payload)) == (["lead@example.com"] if hit else [])


@pytest.mark.parametrize("key, hit", [("sub/deep", True), ("a", False), ("grp", True), ("grp/sub", True),
                                      ("deep/tail", False), ("s/deep", False), ("grp/sub/deep/proj", True)])
def test_a_key_is_an_exact_match_only_as_a_run_of_whole_segments(tmp_path, key, hit):
    owners = owners_of(tmp_path, {key: "x@example.com"} if len(key) > 1 else {"zz": "x@example.com"})
    matches = owners.match(push(path="grp/sub/deep/proj", name="项目"))
    assert bool(matches) is hit and all(m.rule.startswith("exact") for m in matches)


def test_a_path_of_thousands_of_segments_is_matched_at_once(tmp_path):
    """GitLab allows 21 segments; a forged payload with thousands took seconds (all runs of segments were
    built) and held hundreds of MB in the match cache: GitLab's 10 s ran out and the worker grew."""
    import time
    owners = owners_of(tmp_path, {"s/proj": "x@example.com"})
    path = "grp/" + "s/" * 2000 + "proj"          # before: about 20 s
    started = time.perf_counter()
    assert [m.recipient for m in owners.match(push(path=path, name="n"))] == ["x@example.com"]
    assert time.perf_counter() - started < 0.5
