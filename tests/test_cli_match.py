"""`python webhook_server.py --match PROJECT_PATH [--branch B] [--event E]`: explaining a routing decision."""
from __future__ import annotations

import dataclasses
import json

import pytest

from gitlab_feishu import cli
from gitlab_feishu.settings import Settings

BOT = "https://open.feishu.cn/open-apis/bot/v2/hook/5e6f7a8b-token-kept-secret"
OWNERS = {
    "grouptwogame/*": "lead@example.com",
    "grouptwogame": {"owners": ["ci@example.com"], "events": ["pipeline"]},
    "client": {"owners": ["dev@example.com"], "chats": [BOT], "branches": [":default", "release/*"]},
    "客户端": "fuzzy@example.com",
}


@pytest.fixture
def run(settings, monkeypatch, capsys):
    """Run the CLI over `owners` (the shipped test OWNERS by default); returns (exit code, stdout, stderr)."""
    def run_cli(*argv: str, owners: dict | str = OWNERS, settings: Settings = settings):
        text = owners if isinstance(owners, str) else json.dumps(owners, ensure_ascii=False)
        settings.owners_file.write_text(text, encoding="utf-8")
        monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls, *a, **k: settings))
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run_cli


def test_match_explains_every_entry_and_filter(run):
    code, out, _ = run("--match", "grouptwogame/client", "--branch", "main")
    assert code == 0
    assert out.splitlines() == [
        "grouptwogame/client (client), push to main, default branch main:",
        "  exact: grouptwogame/* -> lead@example.com",
        "  exact: grouptwogame (events: pipeline) filtered out: event push",
        "  exact: client (branches: :default, release/*) -> dev@example.com",
        "  exact: client (branches: :default, release/*) -> chat:…/hook/5e6f…",
        "  fuzzy tier not used: exact matches exist",
        "notifies: lead@example.com, dev@example.com, chat:…/hook/5e6f…",
    ]


@pytest.mark.parametrize("argv, lines", [
    (["--branch", "feature/x"], ["exact: client (branches: :default, release/*) filtered out: branch feature/x"]),
    (["--branch", "release/2.0"], ["-> dev@example.com"]),
    (["--branch", "refs/heads/release/2.0"], ["push to release/2.0", "-> dev@example.com"]),   # as GitLab's ref
    (["--branch", "trunk", "--default-branch", "trunk"], ["-> dev@example.com"]),
    (["--event", "pipeline", "--branch", "dev"], ["exact: grouptwogame (events: pipeline) -> ci@example.com"]),
    (["--event", "tag_push"], ["tag push, default branch main", "exact: client (branches: :default, release/*) -> "]),
    ([], ["branch filters were not checked: pass --branch"]),
])
def test_match_options_change_the_decision(run, argv, lines):
    code, out, _ = run("--match", "grouptwogame/client", *argv)
    assert code == 0
    for line in lines:
        assert line in out


def test_match_says_when_nobody_is_notified(run):
    code, out, _ = run("--match", "other/thing", "--name", "别的")
    assert code == 0
    assert "no entry matches other/thing (别的), exactly or fuzzily" in out and "nobody is notified" in out


def test_match_says_when_the_event_kind_is_turned_off_for_everyone(run, settings):
    settings = dataclasses.replace(settings, notify_events=frozenset({"push", "merge_request"}))
    code, out, _ = run("--match", "grouptwogame/client", "--event", "pipeline", "--branch", "dev",
                       settings=settings)
    assert code == 0 and out.splitlines()[-1] == "nobody is notified: pipeline events are turned off (NOTIFY_EVENTS)"


def test_match_uses_the_fuzzy_tier_only_without_exact_matches(run):
    _, out, _ = run("--match", "games/yeshui", "--name", "客户端（新版）")
    assert "no exact match: fuzzy tier used" in out and "fuzzy: 客户端 -> fuzzy@example.com" in out


def test_match_never_shows_a_bot_token(run):
    _, out, err = run("--match", "grouptwogame/client", "--branch", "main")
    assert "token-kept-secret" not in out + err


def test_an_invalid_owners_file_exits_non_zero_naming_file_and_line(run, settings):
    code, out, err = run("--match", "grouptwogame/client", owners='{\n  "client": {"events": ["pushes"]}\n}')
    assert code == 2 and out == ""
    assert f"{settings.owners_file}, line 2: key \"client\", field \"events\"" in err


def test_an_unknown_event_is_refused_by_the_parser(run):
    with pytest.raises(SystemExit) as raised:
        run("--match", "g/p", "--event", "issue")
    assert raised.value.code == 2


def test_match_protected_follows_what_gitlab_would_say(run):
    owners = {"platform": {"owners": ["ops@example.com"], "branches": [":protected"]}}
    code, out, _ = run("--match", "platform/infra-tools", "--branch", "develop", owners=owners)
    assert "nobody is notified" in out and "pass --protected yes or no" in out
    code, out, _ = run("--match", "platform/infra-tools", "--branch", "develop", "--protected", "yes", owners=owners)
    assert out.splitlines()[-1] == "notifies: ops@example.com" and "--protected" not in out
    code, out, _ = run("--match", "platform/infra-tools", "--branch", "main", "--protected", "no", owners=owners)
    assert "filtered out: branch main" in out and "nobody is notified" in out


def test_match_says_protected_is_not_used_for_a_merge_request(run):
    owners = {"platform": {"owners": ["ops@example.com"], "branches": [":protected"]}}
    code, out, _ = run("--match", "platform/infra-tools", "--branch", "develop", "--event", "merge_request",
                       "--protected", "yes", owners=owners)
    assert "--protected was not used" in out and "nobody is notified" in out
