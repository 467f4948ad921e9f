"""Quiet rules: [skip notify] pushes, IGNORE_PUSHERS, NOTIFY_SELF."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gitlab_feishu.events import Commit, Person, PipelineEvent, Project, PushEvent
from gitlab_feishu.owners import Match
from gitlab_feishu.quiet import asks_for_silence, ignored_actor, is_self, quiet_reason, split_self

JOHN = Person(name="John Smith", username="jsmith", email="john@example.com")
HIDDEN = Person(name="张三", username="zhangsan", email="")          # GitLab hides emails by default
USERS = {"zhangsan": "zhangsan@example.com", "lisi": "ou_lisi0001"}


def commits(*messages: str) -> tuple[Commit, ...]:
    return tuple(Commit(id=f"{i:040x}", message=m) for i, m in enumerate(messages, 1))


@dataclass(frozen=True)
class StandIn:
    """An MR, pipeline or tag push as the quiet rules see it."""
    kind: str
    actor: Person
    project: Project = field(default_factory=lambda: Project("g/p", "p"))
    commits: tuple = ()
    total_commits: int = 0


@pytest.mark.parametrize("messages, total, silent", [
    (["fix [skip notify]"], 1, True),
    (["[SKIP NOTIFY] bump", "docs [Skip notify]\n\nbody"], 2, True),
    (["typo\n\n[skip notify]"], 1, True),                           # anywhere in the message
    (["修正 [通知跳过]"], 1, True),
    (["修正 【通知跳过】", "文档 ［通知跳过］"], 2, True),          # a Chinese input method's brackets
    (["fix [skip notify]", "real change"], 2, False),               # one loud commit is enough
    (["fix [skip notify]"] * 20, 25, False),                        # GitLab cut the list: the rest unknown
    (["fix [skip notify]"] * 2, 4, True),                           # GitLab's documented push.json counts 4
    (["skip notify", "[skip-notify]", "[skip ci]"], 3, False),
    ([], 0, False),                                                 # no commits: a new or deleted branch
])
def test_skip_markers(messages, total, silent):
    assert asks_for_silence(commits(*messages), total) is silent


def test_skip_markers_apply_to_pushes_only():
    loud = StandIn("tag_push", JOHN, commits=commits("release [skip notify]"))
    assert quiet_reason(loud, frozenset()) is None
    push = PushEvent(project=Project("g/p", "p"), actor=JOHN, ref="refs/heads/main", before="1" * 40,
                     after="2" * 40, commits=commits("x [skip notify]"), total_commits=1)
    assert "[skip notify]" in quiet_reason(push, frozenset())


@pytest.mark.parametrize("ignore, actor, found", [
    ({"jsmith"}, JOHN, "jsmith"),
    ({"john@example.com"}, JOHN, "john@example.com"),
    ({"john@example.com"}, Person(username="jsmith", email="John@Example.com"), "John@Example.com"),
    ({"ci-bot"}, JOHN, None),
    ({"zhangsan@example.com"}, HIDDEN, None),                      # hidden, no users file: cannot be matched
    (set(), JOHN, None),
    ({""}, Person(), None),
])
def test_ignored_actors(ignore, actor, found):
    assert ignored_actor(actor, frozenset(ignore)) == found


def test_an_ignored_email_is_found_through_the_users_file():
    # GitLab hides the pusher's email ("" or [REDACTED]); users.json knows it by username.
    assert ignored_actor(HIDDEN, frozenset({"zhangsan@example.com"}), USERS.get) == "zhangsan@example.com"
    assert ignored_actor(HIDDEN, frozenset({"lisi@example.com"}), USERS.get) is None
    reason = quiet_reason(StandIn("merge_request", HIDDEN), frozenset({"zhangsan@example.com"}), USERS.get)
    assert reason == "zhangsan@example.com is listed in IGNORE_PUSHERS"


@pytest.mark.parametrize("kind", ["push", "tag_push", "merge_request", "pipeline"])
def test_an_ignored_actor_silences_every_kind(kind):
    reason = quiet_reason(StandIn(kind, Person(username="gitlab-ci-bot")), frozenset({"gitlab-ci-bot"}))
    assert reason == "gitlab-ci-bot is listed in IGNORE_PUSHERS"


@pytest.mark.parametrize("recipient, actor, users, mine", [
    ("john@example.com", JOHN, None, True),
    ("John@Example.COM", JOHN, None, True),
    ("mike@example.com", JOHN, None, False),
    ("zhangsan@example.com", HIDDEN, None, False),                 # hidden, no users file: cannot tell
    ("zhangsan@example.com", HIDDEN, USERS, True),                 # the users file maps the username
    ("ou_lisi0001", Person(username="lisi"), USERS, True),         # to an open_id too
    ("ou_lisi0001", Person(username="wangwu"), USERS, False),
    ("john@example.com", Person(username="jsmith"), {"jsmith": "JOHN@example.com"}.get, True),
])
def test_is_self(recipient, actor, users, mine):
    address_of = users.get if isinstance(users, dict) else users
    assert is_self(recipient, actor, address_of) is mine


def test_split_self_keeps_group_chats():
    matches = [Match("john@example.com", "exact: p"), Match("mike@example.com", "exact: p"),
               Match("https://open.feishu.cn/open-apis/bot/v2/hook/x", "exact: p", "chat")]
    kept, skipped = split_self(matches, StandIn("push", JOHN))
    assert [m.recipient for m in skipped] == ["john@example.com"]
    assert [m.channel for m in kept] == ["dm", "chat"]


@pytest.mark.parametrize("rule, spared", [("exact: p", False), ("triggered: jsmith", True)])
def test_split_self_spares_the_trigger_of_a_failed_pipeline_only_in_that_role(rule, spared):
    """users.json's trigger card tells them their pipeline broke; an owner who triggered it caused an event."""
    event = PipelineEvent(project=Project("g/p", "p"), actor=JOHN, id=1, status="failed", ref="main", tag=False,
                          url="")
    matches = [Match("john@example.com", rule), Match("mike@example.com", "exact: p")]
    kept, skipped = split_self(matches, event)
    assert [m.recipient for m in skipped] == ([] if spared else ["john@example.com"])
