"""The pure side of --wire-hooks: which hook each project needs, and what its current one looks like."""
from __future__ import annotations

import unicodedata
from datetime import datetime, timezone

import pytest

from gitlab_feishu.events import Project
from gitlab_feishu.hookplan import Listing, Step, check, desired_hook, normalize_url, plan
from gitlab_feishu.wiring import steps_report
from gitlab_feishu.setting_values import EVENT_KINDS
from tests.fake_gitlab import gitlab_hook

OURS = "https://hooks.example.cn/gitlab-webhook"
DESIRED = desired_hook("https://hooks.example.cn", frozenset(EVENT_KINDS))
PROJECT = Project(path="grouptwogame/yeshui-client", name="Y_野水发财（客户端）", id=7)
NOW = datetime(2030, 1, 1, 9, 0, tzinfo=timezone.utc)
RIGHT = dict(push_events=True, tag_push_events=True, merge_requests_events=True, pipeline_events=True)


def our_hook(id: int = 12, url: str = OURS, **fields) -> dict:
    return gitlab_hook(id, url, PROJECT.id, **{**RIGHT, **fields})


@pytest.mark.parametrize("hooks, action, why", [
    ([], "create", "new hook: push_events, tag_push_events, merge_requests_events, pipeline_events"),
    ([gitlab_hook(3, "https://ci.example.cn/hook")], "create", "1 other hook left alone"),
    ([gitlab_hook(3, "https://hooks.example.cn/webhook")], "create", "1 other hook left alone"),
    ([gitlab_hook(3, "http://hooks.example.cn/gitlab-webhook")], "create", "1 other hook left alone"),
    ([our_hook()], "ok", "hook #12 up to date, secret unknown"),
    ([our_hook(url="HTTPS://Hooks.Example.CN/gitlab-webhook/")], "ok", "hook #12 up to date"),
    ([our_hook(url="https://hooks.example.cn:443/gitlab-webhook")], "ok", "hook #12 up to date"),
    ([our_hook(token_present=True)], "ok", "secret set"),
    ([our_hook(token_present=True, signing_token_present=True)], "ok", "secret set, signing token set"),
    ([gitlab_hook(3, "https://ci.example.cn/hook"), our_hook()], "ok", "up to date, secret unknown; 1 other"),
    ([our_hook(push_events=False)], "update", "hook #12: switch on push_events"),
    ([our_hook(pipeline_events=False, push_events=False, note_events=True, job_events=True)], "update",
     "hook #12: switch on push_events, pipeline_events; switch off job_events, note_events"),
    ([our_hook(enable_ssl_verification=False)], "ok", "hook #12 up to date"),   # cleared for a self-signed certificate
    ([our_hook(token_present=False)], "update", "hook #12: set the secret token"),
    ([our_hook(13), our_hook(12)], "ok", "hooks #13 also point here, so GitLab sends every event twice"),
    ([our_hook(alert_status="disabled")], "ok", "GitLab has disabled it, see --check"),
])
def test_plan(hooks, action, why):
    step = plan(Listing(PROJECT, tuple(hooks)), DESIRED, NOW)
    assert (step.action, step.project) == (action, PROJECT)
    assert why in step.why


SIGNED = desired_hook("https://hooks.example.cn", frozenset(EVENT_KINDS), signed=True)


@pytest.mark.parametrize("hook, action, why", [
    (our_hook(token_present=True, signing_token_present=False), "update", "hook #12: set the signing token"),
    (our_hook(token_present=True, signing_token_present=True), "ok", "secret set, signing token set"),
    # Before 19.0 GitLab does not say, and cannot sign: the update is tried, and fails saying so (test_wiring).
    (our_hook(), "update", "hook #12: set the signing token"),
])
def test_plan_with_signing_required(hook, action, why):
    step = plan(Listing(PROJECT, (hook,)), SIGNED, NOW)
    assert step.action == action and why in step.why


def test_check_flags_a_hook_without_the_signing_token_when_signing_is_required():
    status = check(Listing(PROJECT, (our_hook(token_present=True, signing_token_present=False),)), SIGNED, NOW)
    assert status.attention and status.secret == "set, no signing token"
    assert "run --wire-hooks to fix it" in status.hints


def test_check_says_a_gitlab_that_reports_no_signing_tokens_cannot_sign():
    status = check(Listing(PROJECT, (our_hook(),)), SIGNED, NOW)
    assert status.attention and "before 19.0 it cannot sign" in " ".join(status.hints)
    assert "run --wire-hooks to fix it" not in status.hints


def test_check_on_a_gitlab_that_cannot_sign_still_says_what_wire_hooks_would_fix():
    hook = {**our_hook(), "pipeline_events": False}
    status = check(Listing(PROJECT, (hook,)), SIGNED, NOW)
    assert "run --wire-hooks to fix it" in status.hints and "before 19.0 it cannot sign" in " ".join(status.hints)


def test_plan_skips_a_project_whose_hooks_could_not_be_read():
    step = plan(Listing(PROJECT, problem="no permission: needs Maintainer"), DESIRED, NOW)
    assert (step.action, step.why) == ("skip", "no permission: needs Maintainer")


def test_a_new_hook_gets_our_url_the_handled_triggers_and_ssl_verification():
    step = plan(Listing(PROJECT), desired_hook("https://hooks.example.cn", frozenset({"push"})), NOW)
    assert step.attributes == {"url": OURS, "push_events": True, "tag_push_events": False,
                               "merge_requests_events": False, "pipeline_events": False,
                               "enable_ssl_verification": True}


def test_an_update_switches_off_every_trigger_the_service_does_not_handle():
    step = plan(Listing(PROJECT, (our_hook(note_events=True, emoji_events=True),)), DESIRED, NOW)
    assert step.hook_id == 12
    assert step.attributes == {"url": OURS, **RIGHT, "note_events": False, "emoji_events": False}


@pytest.mark.parametrize("verifies", [True, False])
def test_an_update_leaves_the_hooks_ssl_verification_as_it_is(verifies):
    # Cleared, as the README's setup says for a self-signed certificate, it must stay cleared.
    hook = our_hook(push_events=False, enable_ssl_verification=verifies)
    step = plan(Listing(PROJECT, (hook,)), DESIRED, NOW)
    assert step.action == "update" and "enable_ssl_verification" not in step.attributes


def test_the_plan_never_holds_a_secret():
    step = plan(Listing(PROJECT), DESIRED, NOW)
    assert "token" not in step.attributes


@pytest.mark.parametrize("public_url, url, ssl", [
    ("https://hooks.example.cn", OURS, True),
    ("https://hooks.example.cn/", OURS, True),
    ("https://hooks.example.cn/gitlab-webhook", OURS, True),
    ("https://example.cn/notify", "https://example.cn/notify/gitlab-webhook", True),
    ("http://10.0.0.5:5000", "http://10.0.0.5:5000/gitlab-webhook", False),
])
def test_desired_hook_url(public_url, url, ssl):
    desired = desired_hook(public_url, frozenset(EVENT_KINDS))
    assert desired.url == url
    assert ("enable_ssl_verification" in desired.attributes(new=True)) is ssl


@pytest.mark.parametrize("url, normalized", [
    ("https://hooks.example.cn/gitlab-webhook", OURS),
    ("HTTPS://HOOKS.example.cn/gitlab-webhook/", OURS),
    ("https://hooks.example.cn:443/gitlab-webhook", OURS),
    ("https://hooks.example.cn:8443/gitlab-webhook", "https://hooks.example.cn:8443/gitlab-webhook"),
    ("http://hooks.example.cn:80/gitlab-webhook", "http://hooks.example.cn/gitlab-webhook"),
    ("https://hooks.example.cn/GitLab-Webhook", "https://hooks.example.cn/GitLab-Webhook"),
    ("https://hooks.example.cn/gitlab-webhook?x=1", OURS + "?x=1"),
    ("https://hooks.example.cn:bad/gitlab-webhook", "https://hooks.example.cn:bad/gitlab-webhook"),
])
def test_normalize_url(url, normalized):
    assert normalize_url(url) == normalized


@pytest.mark.parametrize("hooks, columns, attention", [
    ([], ("missing", "-", "-", "-"), True),
    ([gitlab_hook(3, "https://ci.example.cn/hook")], ("missing (1 other hook)", "-", "-", "-"), True),
    ([our_hook()], ("#12", "unknown", "ok", "active"), False),
    ([our_hook(token_present=True)], ("#12", "set", "ok", "active"), False),
    ([our_hook(token_present=False)], ("#12", "missing", "ok", "active"), True),
    ([our_hook(pipeline_events=False, note_events=True)],
     ("#12", "unknown", "missing pipeline_events, extra note_events", "active"), True),
    ([our_hook(enable_ssl_verification=False)],
     ("#12", "unknown", "SSL verification off (right only for a self-signed certificate)", "active"), False),
    ([our_hook(alert_status="temporarily_disabled", disabled_until="2030-01-01T10:30:00.000Z")],
     ("#12", "unknown", "ok", "disabled until 2030-01-01 10:30 UTC"), True),
    ([our_hook(alert_status="temporarily_disabled", disabled_until=None)],
     ("#12", "unknown", "ok", "disabled (temporarily)"), True),
    ([our_hook(alert_status="disabled")], ("#12", "unknown", "ok", "disabled (permanently)"), True),
    ([our_hook(alert_status="executable", disabled_until="2029-12-31T10:30:00Z")],
     ("#12", "unknown", "ok", "active"), False),
])
def test_check(hooks, columns, attention):
    status = check(Listing(PROJECT, tuple(hooks)), DESIRED, NOW)
    assert (status.hook, status.secret, status.triggers, status.state) == columns
    assert status.attention is attention


OLD_ADDRESS = "http://user:pw@10.0.0.5:5000/gitlab-webhook"


def test_plan_points_at_a_hook_to_an_earlier_address_of_the_service_without_touching_it():
    step = plan(Listing(PROJECT, (gitlab_hook(3, OLD_ADDRESS), our_hook())), DESIRED, NOW)
    assert step.action == "ok"
    assert "hook #3 at http://10.0.0.5:5000/gitlab-webhook also ends in /gitlab-webhook" in step.why
    assert "pw" not in step.why


@pytest.mark.parametrize("hooks", [(gitlab_hook(3, OLD_ADDRESS), our_hook()), (gitlab_hook(3, OLD_ADDRESS),)],
                         ids=["beside ours", "ours missing"])
def test_check_points_at_a_hook_to_an_earlier_address_of_the_service(hooks):
    status = check(Listing(PROJECT, hooks), DESIRED, NOW)
    [note] = [hint for hint in status.hints if "hook #3" in hint]
    assert "http://10.0.0.5:5000/gitlab-webhook" in note and "GitLab sends every event to both" in note
    assert "pw" not in note


def test_a_hook_to_an_earlier_address_alone_needs_no_attention():
    assert check(Listing(PROJECT, (gitlab_hook(3, OLD_ADDRESS), our_hook())), DESIRED, NOW).attention is False


def test_check_tells_how_to_re_enable_a_disabled_hook():
    status = check(Listing(PROJECT, (our_hook(alert_status="disabled"),)), DESIRED, NOW)
    assert any("Settings > Webhooks > Test > Push events" in hint for hint in status.hints)


def test_check_lists_a_project_it_cannot_read_as_needing_attention():
    status = check(Listing(PROJECT, problem="no permission"), DESIRED, NOW)
    assert (status.hook, status.state, status.attention) == ("?", "no permission", True)


def test_the_table_lines_up_under_paths_with_chinese_characters():
    """A console shows a Chinese character two columns wide: the next column starts in one place for every row."""
    steps = [Step(Project("grouptwogame/yeshui-client", "野水发财"), "create", "no hook yet"),
             Step(Project("测试项目", "测试项目"), "ok", "hook #3 is right")]
    lines, _ = steps_report(steps, dry_run=True)
    starts = {line.index(action) + sum(unicodedata.east_asian_width(c) == "W" for c in line[:line.index(action)])
              for line, action in zip(lines[1:3], ("create", "ok"))}
    assert len(starts) == 1
