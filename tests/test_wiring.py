"""`--wire-hooks`: against GitLab's REST API shapes (tests/fake_gitlab.py), never a real GitLab."""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from datetime import datetime, timezone

import pytest
import requests
import responses
from responses import matchers

from gitlab_feishu import cli
from gitlab_feishu.settings import ConfigError, Settings
from gitlab_feishu.wiring import wire_hooks
from tests.conftest import SECRET
from tests.fake_gitlab import API, API_TOKEN, BASE, FakeGitLab, gitlab_hook, gitlab_project

OURS = "https://hooks.example.cn/gitlab-webhook"
RIGHT = dict(push_events=True, tag_push_events=True, merge_requests_events=True, pipeline_events=True)
YESHUI = gitlab_project(1, "grouptwogame/yeshui-client", "Y_野水发财（客户端）")    # fuzzy: Y_野水发财
NAINA = gitlab_project(2, "grouptwogame/naina", "N_奶奶的小农院")                  # exact: N_奶奶的小农院
DIASPORA = gitlab_project(3, "mike/diaspora", "Diaspora")                       # exact: mike/diaspora
UNOWNED = gitlab_project(4, "other/tools", "Tools")                             # nobody's
SUBTOOL = gitlab_project(5, "grouptwogame/sub/tool", "Tool")                    # in a subgroup
LOOKALIKE = gitlab_project(6, "other/grouptwogame-tools", "GT tools")           # fuzzy: grouptwogame
NOW = datetime(2030, 1, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def wiring_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, gitlab_url=BASE, gitlab_api_token=API_TOKEN,
                               public_url="https://hooks.example.cn")


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def run(settings: Settings, **mode) -> int:
    return wire_hooks(settings, clock=lambda: NOW, **mode)


def changes(rsps) -> list[tuple[str, str]]:
    return [(call.request.method, call.request.path_url) for call in rsps.calls
            if call.request.method in ("POST", "PUT", "DELETE")]


def row(output: str, path: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(path + " "))


def paths(output: str) -> list[str]:
    """The projects of the table, in its order."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("project ")) + 1
    end = next(i for i, line in enumerate(lines) if re.match(r"\d+ projects?: ", line))
    return [line.split()[0] for line in lines[start:end]]


def requested(rsps, part: str) -> list[str]:
    return [call.request.url for call in rsps.calls if part in call.request.url]


def with_owners(settings: Settings, tmp_path, owners: dict) -> Settings:
    path = tmp_path / "wiring_owners.json"
    path.write_text(json.dumps(owners, ensure_ascii=False), encoding="utf-8")
    return dataclasses.replace(settings, owners_file=path)


def every_api_get(rsps, **answer) -> None:
    """GitLab (or whatever is at GITLAB_URL) answering every GET of the API the same way."""
    rsps.add(responses.GET, re.compile(rf"{re.escape(API)}/.*"), **answer)


def test_creates_the_hook_with_our_url_secret_and_triggers(wiring_settings, rsps, capsys):
    gitlab = FakeGitLab(rsps, [YESHUI, UNOWNED])
    assert run(wiring_settings) == 0
    [hook] = gitlab.hooks[1]
    assert hook["url"] == OURS and hook["token"] == SECRET
    assert {k: hook[k] for k in RIGHT} == RIGHT and hook["enable_ssl_verification"] is True
    assert gitlab.hooks[4] == []
    assert "created" in row(capsys.readouterr().out, "grouptwogame/yeshui-client")


def test_never_asks_for_the_hooks_of_a_project_owners_json_does_not_name(wiring_settings, rsps):
    FakeGitLab(rsps, [YESHUI, UNOWNED])
    run(wiring_settings, dry_run=True)
    assert not [call for call in rsps.calls if "/projects/4/" in call.request.url]


def test_lists_only_unarchived_projects_the_tokens_user_is_a_member_of(wiring_settings, rsps):
    FakeGitLab(rsps, [YESHUI])
    run(wiring_settings, dry_run=True)
    listing = next(call.request for call in rsps.calls if call.request.path_url.startswith("/api/v4/projects?"))
    assert listing.headers["PRIVATE-TOKEN"] == API_TOKEN
    assert all(part in listing.url for part in ("membership=True", "archived=False", "per_page=100"))


def test_updates_our_hook_when_its_triggers_are_wrong(wiring_settings, rsps, capsys):
    gitlab = FakeGitLab(rsps, [NAINA], {2: [gitlab_hook(7, OURS, 2, **{**RIGHT, "pipeline_events": False,
                                                                        "note_events": True})]})
    assert run(wiring_settings) == 0
    assert changes(rsps) == [("PUT", "/api/v4/projects/2/hooks/7")]
    sent = json.loads(rsps.calls[-1].request.body)
    assert sent["pipeline_events"] is True and sent["note_events"] is False and sent["token"] == SECRET
    assert [hook["id"] for hook in gitlab.hooks[2]] == [7]
    assert "updated" in row(capsys.readouterr().out, "grouptwogame/naina")


def test_leaves_a_right_hook_alone(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [NAINA], {2: [gitlab_hook(7, OURS + "/", 2, **RIGHT)]})
    assert run(wiring_settings) == 0
    assert changes(rsps) == []
    assert "ok" in row(capsys.readouterr().out, "grouptwogame/naina")


def test_never_touches_a_hook_pointing_elsewhere(wiring_settings, rsps):
    foreign = gitlab_hook(5, "https://ci.example.cn/build", 3, note_events=True, enable_ssl_verification=False)
    gitlab = FakeGitLab(rsps, [DIASPORA], {3: [dict(foreign)]})
    assert run(wiring_settings) == 0
    assert changes(rsps) == [("POST", "/api/v4/projects/3/hooks")]
    assert gitlab.hooks[3][0] == foreign


def test_a_project_without_permission_is_listed_and_the_rest_goes_on(wiring_settings, rsps, capsys):
    gitlab = FakeGitLab(rsps, [YESHUI, NAINA, DIASPORA], forbidden=(2,))
    assert run(wiring_settings) == 1
    out = capsys.readouterr().out
    assert "no permission" in row(out, "grouptwogame/naina") and "Maintainer" in out
    assert len(gitlab.hooks[1]) == len(gitlab.hooks[3]) == 1


def test_follows_pagination_over_every_page_of_projects(wiring_settings, rsps, capsys):
    gitlab = FakeGitLab(rsps, [YESHUI, UNOWNED, NAINA, DIASPORA], page_size=2)
    assert run(wiring_settings) == 0
    pages = [call.request.url for call in rsps.calls if call.request.path_url.startswith("/api/v4/projects?")]
    assert len(pages) == 2 and "page=2" in pages[1]
    assert all(len(gitlab.hooks[i]) == 1 for i in (1, 2, 3))
    assert "3 projects: created 3." in capsys.readouterr().out


def test_dry_run_shows_the_plan_and_changes_nothing(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [YESHUI, NAINA], {2: [gitlab_hook(7, OURS, 2, push_events=False)]})
    assert run(wiring_settings, dry_run=True) == 0
    assert changes(rsps) == []
    out = capsys.readouterr().out
    assert "create" in row(out, "grouptwogame/yeshui-client")
    assert "hook #7: switch on push_events" in row(out, "grouptwogame/naina")
    assert "Dry run: nothing was changed." in out


@pytest.mark.parametrize("scopes", [("read_api",), ("read_api", "read_repository"), ()])
def test_a_dry_run_says_when_the_token_could_not_make_the_changes(wiring_settings, rsps, capsys, scopes):
    FakeGitLab(rsps, [YESHUI], scopes=scopes)
    assert run(wiring_settings, dry_run=True) == 1
    captured = capsys.readouterr()
    assert "create" in row(captured.out, "grouptwogame/yeshui-client")
    assert "not `api`: the real run would stop" in captured.err and "`api` scope" in captured.err


@pytest.mark.parametrize("scopes", [("api",), None])     # None: a GitLab before 15.5 does not say
def test_a_dry_run_trusts_a_token_with_the_api_scope_or_one_gitlab_does_not_describe(wiring_settings, rsps,
                                                                                        capsys, scopes):
    FakeGitLab(rsps, [YESHUI], scopes=scopes)
    assert run(wiring_settings, dry_run=True) == 0
    assert "scope" not in capsys.readouterr().err


def test_a_dry_run_with_nothing_to_change_needs_no_api_scope(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [YESHUI], {1: [gitlab_hook(7, OURS, 1, **RIGHT, token="x")]}, reports_token=True,
               scopes=("read_api",))
    assert run(wiring_settings, dry_run=True) == 0


def test_a_second_run_changes_nothing(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [YESHUI, NAINA, DIASPORA], {2: [gitlab_hook(7, OURS, 2)]}, reports_token=True)
    run(wiring_settings)
    first = len(changes(rsps))
    capsys.readouterr()
    assert run(wiring_settings) == 0
    assert first == 3 and len(changes(rsps)) == first
    out = capsys.readouterr().out
    assert "3 projects: ok 3." in out and "secret set" in row(out, "grouptwogame/naina")


SIGNING_TOKEN = "whsec_" + "c2lnbmluZy1rZXktb2YtMzItYnl0ZXMtZm9yLXRlc3Q="


def test_with_signing_required_hooks_get_the_signing_token(wiring_settings, rsps):
    """Otherwise every delivery of a hook made here would be refused with 401."""
    gitlab = FakeGitLab(rsps, [YESHUI, NAINA], {2: [gitlab_hook(7, OURS, 2, **RIGHT, token="x")]},
                        reports_token=True)
    assert run(dataclasses.replace(wiring_settings, gitlab_signing_token=SIGNING_TOKEN)) == 0
    assert [hook["signing_token"] for hook in gitlab.hooks[1] + gitlab.hooks[2]] == [SIGNING_TOKEN] * 2


def test_with_signing_required_a_second_run_changes_nothing(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [YESHUI, NAINA], reports_token=True)
    signed = dataclasses.replace(wiring_settings, gitlab_signing_token=SIGNING_TOKEN)
    run(signed)
    first = len(changes(rsps))
    capsys.readouterr()
    assert run(signed) == 0 and len(changes(rsps)) == first == 2
    assert "secret set, signing token set" in row(capsys.readouterr().out, "grouptwogame/naina")


def test_a_gitlab_that_ignores_the_signing_token_is_reported_not_updated_silently_each_run(
        wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [NAINA], reports_token=True, signs=False)
    assert run(dataclasses.replace(wiring_settings, gitlab_signing_token=SIGNING_TOKEN)) == 1
    line = row(capsys.readouterr().out, "grouptwogame/naina")
    assert "failed" in line and "GitLab ignored the signing token" in line


def test_a_gitlab_before_19_given_a_signing_token_is_reported_failed_not_done(wiring_settings, rsps, capsys):
    """It ignores the token and reports nothing about it: its unsigned deliveries would all be refused."""
    FakeGitLab(rsps, [NAINA], reports_token=False, signs=False)
    assert run(dataclasses.replace(wiring_settings, gitlab_signing_token=SIGNING_TOKEN)) == 1
    line = row(capsys.readouterr().out, "grouptwogame/naina")
    assert "failed" in line and "GitLab before 19.0 cannot sign" in line


def test_check_reports_each_hook_and_exits_zero_when_all_is_well(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [NAINA], {2: [gitlab_hook(7, OURS, 2, **RIGHT, token="x")]}, reports_token=True)
    assert run(wiring_settings, check_only=True) == 0
    assert changes(rsps) == []
    assert row(capsys.readouterr().out, "grouptwogame/naina").split() == [
        "grouptwogame/naina", "#7", "set", "ok", "active"]


def test_check_shows_a_disabled_hook_with_how_to_re_enable_it(wiring_settings, rsps, capsys):
    disabled = gitlab_hook(7, OURS, 2, **RIGHT, alert_status="temporarily_disabled",
                           disabled_until="2030-01-01T09:20:00.000Z")
    FakeGitLab(rsps, [YESHUI, NAINA], {2: [disabled]})
    assert run(wiring_settings, check_only=True) == 1
    out = capsys.readouterr().out
    assert "disabled until 2030-01-01 09:20 UTC" in row(out, "grouptwogame/naina")
    assert "grouptwogame/naina: GitLab stopped sending" in out and "Test > Push events" in out
    assert "missing" in row(out, "grouptwogame/yeshui-client")
    assert '"unknown"' in out                      # GitLab before 19.0 does not say whether a secret is set


def test_a_bad_token_says_so_and_which_scope_it_needs(wiring_settings, rsps, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    every_api_get(rsps, status=401, json={"message": "401 Unauthorized"})
    assert run(wiring_settings) == 1
    err = capsys.readouterr().err
    assert "GITLAB_API_TOKEN" in err and "invalid, expired or revoked" in err and "`api` scope" in err
    assert "Traceback" not in err
    assert API_TOKEN not in err + caplog.text


def test_a_token_without_the_api_scope_stops_with_the_scope_it_needs(wiring_settings, rsps, capsys):
    rsps.add(responses.POST, f"{API}/projects/1/hooks", status=403, json={     # a read_api token
        "error": "insufficient_scope", "scope": "api",
        "error_description": "The request requires higher privileges than provided by the access token."})
    FakeGitLab(rsps, [YESHUI])
    assert run(wiring_settings) == 1
    assert "lacks the `api` scope" in capsys.readouterr().err


@pytest.mark.parametrize("failure, reason", [
    (requests.exceptions.ConnectionError("refused"), "connection failed"),
    (requests.exceptions.ConnectTimeout("slow"), "no answer within"),
])
def test_unreachable_gitlab_names_gitlab_url(wiring_settings, rsps, capsys, failure, reason):
    every_api_get(rsps, body=failure)
    assert run(wiring_settings) == 1
    err = capsys.readouterr().err
    assert f"GitLab at GITLAB_URL={BASE} is unreachable" in err and reason in err


def test_a_gitlab_certificate_python_does_not_trust_says_how_to_trust_it(wiring_settings, rsps, capsys):
    # A self-signed certificate or a company CA: requests (python-gitlab) trusts a CA file named by
    # REQUESTS_CA_BUNDLE in the environment.
    every_api_get(rsps, body=requests.exceptions.SSLError("certificate verify failed: self-signed certificate"))
    assert run(wiring_settings) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TLS certificate" in err and "REQUESTS_CA_BUNDLE" in err


@pytest.mark.parametrize("openssl_says", [
    "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)",      # OpenSSL 1.1 to 3.1
    "[SSL] record layer failure (_ssl.c:1033)",                            # OpenSSL 3.2 and later
])
def test_an_https_gitlab_url_at_a_plain_http_port_says_to_write_http(wiring_settings, rsps, capsys, openssl_says):
    # What requests raises when the port answers plain HTTP.
    every_api_get(rsps, body=requests.exceptions.SSLError(f"Caused by SSLError(SSLError(1, '{openssl_says}'))"))
    assert run(wiring_settings) == 1
    err = capsys.readouterr().err
    assert "plain HTTP" in err and "http://" in err and "REQUESTS_CA_BUNDLE" not in err


def test_gitlab_failing_on_a_later_page_of_projects_is_reported_like_on_the_first(wiring_settings, rsps, capsys):
    rsps.add(responses.GET, f"{API}/projects", body=requests.exceptions.ConnectionError("reset"),
             match=[matchers.query_param_matcher({"page": "2"}, strict_match=False)])
    FakeGitLab(rsps, [YESHUI, NAINA], page_size=1)
    assert run(wiring_settings) == 1
    assert "unreachable" in capsys.readouterr().err
    assert changes(rsps) == []


def test_a_gitlab_url_that_is_not_gitlab_says_so(wiring_settings, rsps, capsys):
    every_api_get(rsps, status=404, json={"message": "404 Not Found"})
    assert run(wiring_settings) == 1
    err = capsys.readouterr().err
    assert "could not list the projects: GitLab answered 404 Not Found" in err and "GITLAB_URL=" in err


def test_a_web_page_instead_of_the_api_is_not_printed(wiring_settings, rsps, capsys):
    every_api_get(rsps, status=404, body="<!DOCTYPE html>\n<html><head><title>Not Found</title></head></html>")
    assert run(wiring_settings) == 1
    err = capsys.readouterr().err
    assert "GitLab answered 404 with a web page instead of an API answer" in err and "GITLAB_URL=" in err
    assert "<html" not in err


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gitlab_behind_its_own_web_server_down_is_not_blamed_on_gitlab_url(wiring_settings, rsps, capsys, status):
    every_api_get(rsps, status=status, body="<html><body><h1>502 Bad Gateway</h1></body></html>")
    assert run(wiring_settings) == 1
    err = capsys.readouterr().err
    assert f"GitLab answered {status} with a web page" in err and "may be restarting or down" in err
    assert "GitLab's address?" not in err


def test_no_owners_json_match_at_all_is_an_error(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [UNOWNED])
    assert run(wiring_settings) == 1
    assert "none of the 1 projects" in capsys.readouterr().err


def test_names_the_owners_json_keys_that_matched_no_project(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [YESHUI])
    assert run(wiring_settings, dry_run=True) == 0
    out = capsys.readouterr().out
    assert "name none of these projects: N_奶奶的小农院, 测试项目 (projects the token's user is not a member" in out
    # a project's own path that GitLab denies knowing: a private project hides itself from non-members
    assert "name none of these projects: mike/diaspora (GitLab answered 404: no such project, or a private" in out


def test_never_prints_the_api_token_or_the_secret(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [YESHUI, NAINA], {2: [gitlab_hook(7, OURS, 2)]})
    run(wiring_settings)
    run(wiring_settings, check_only=True)
    captured = capsys.readouterr()
    assert API_TOKEN not in captured.out + captured.err and SECRET not in captured.out + captured.err


@pytest.mark.parametrize("missing", ["gitlab_url", "gitlab_api_token", "public_url", "gitlab_webhook_secret"])
def test_a_missing_setting_is_named(wiring_settings, missing):
    with pytest.raises(ConfigError, match=missing.upper()):
        wire_hooks(dataclasses.replace(wiring_settings, **{missing: ""}))


def test_the_command_line_exits_2_on_a_missing_setting(settings, monkeypatch, capsys):
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls: settings))
    assert cli.main(["--wire-hooks", "--dry-run"]) == 2
    assert "GITLAB_URL" in capsys.readouterr().err


def test_dry_run_and_check_need_wire_hooks(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--check"])
    assert "--wire-hooks" in capsys.readouterr().err


def test_a_key_shadowed_by_an_exact_group_key_still_counts_as_used(wiring_settings, rsps, capsys, tmp_path):
    owners = tmp_path / "group_owners.json"
    owners.write_text(json.dumps({"grouptwogame": "lead@example.com", "Y_野水发财": "zhangsan@example.com"},
                                 ensure_ascii=False), encoding="utf-8")
    FakeGitLab(rsps, [YESHUI])
    run(dataclasses.replace(wiring_settings, owners_file=owners), dry_run=True)
    assert "name none of these projects" not in capsys.readouterr().out


def test_a_hook_gitlab_refuses_to_create_is_listed_and_the_rest_goes_on(wiring_settings, rsps, capsys):
    rsps.add(responses.POST, f"{API}/projects/1/hooks", status=422, json={
        "message": {"url": ["is blocked: Requests to the local network are not allowed"]}})
    gitlab = FakeGitLab(rsps, [YESHUI, NAINA])
    assert run(wiring_settings) == 1
    failed = row(capsys.readouterr().out, "grouptwogame/yeshui-client")
    assert "failed" in failed and "422" in failed and "Requests to the local network are not allowed" in failed
    assert len(gitlab.hooks[2]) == 1


def test_a_hook_url_gitlab_blocks_says_which_admin_setting_allows_it(wiring_settings, rsps, capsys):
    # GitLab's own answer (lib/api/helpers/web_hooks_helpers.rb, save_hook) when the URL fails its
    # validation, e.g. a private address while "Allow requests to the local network" is off.
    rsps.add(responses.POST, f"{API}/projects/1/hooks", status=422, json={"message": "Invalid url given"})
    FakeGitLab(rsps, [YESHUI, NAINA])
    assert run(wiring_settings) == 1
    failed = row(capsys.readouterr().out, "grouptwogame/yeshui-client")
    assert "Invalid url given" in failed and "PUBLIC_URL" in failed
    assert "Allow requests to the local network from webhooks and integrations" in failed


@pytest.mark.parametrize("key, wired", [
    # the group and its subgroup through the API, and (as routing does) a member project whose path holds the key
    ("grouptwogame", ["grouptwogame/naina", "grouptwogame/sub/tool", "other/grouptwogame-tools"]),
    ("grouptwogame/sub", ["grouptwogame/sub/tool"]),
])
def test_a_group_key_covers_its_projects_and_subgroups_the_user_is_no_member_of(wiring_settings, rsps, capsys,
                                                                                 tmp_path, key, wired):
    FakeGitLab(rsps, [NAINA, SUBTOOL, LOOKALIKE, UNOWNED], members=(2, 4, 6))
    assert run(with_owners(wiring_settings, tmp_path, {key: "lead@example.com"}), dry_run=True) == 0
    out = capsys.readouterr().out
    assert paths(out) == wired and f"{len(wired)} project{'s' * (len(wired) > 1)}: create {len(wired)}." in out   # naina once
    [group] = requested(rsps, "/groups/")
    assert all(part in group for part in ("include_subgroups=True", "with_shared=False", "archived=False"))


def test_a_project_path_key_is_read_by_its_path_even_when_the_user_is_no_member(wiring_settings, rsps, capsys,
                                                                                tmp_path):
    archived = gitlab_project(7, "mike/old", "Old", archived=True)
    FakeGitLab(rsps, [DIASPORA, archived], members=())
    owners = {"mike/diaspora": "mike@example.com", "mike/old": "mike@example.com"}
    assert run(with_owners(wiring_settings, tmp_path, owners), dry_run=True) == 0
    out = capsys.readouterr().out
    assert paths(out) == ["mike/diaspora"] and "name none of these projects: mike/old (" in out
    assert requested(rsps, "/projects/mike%2Fdiaspora") and not requested(rsps, "/groups/mike%2Fdiaspora")


@pytest.mark.parametrize("admin, listed_with, wired", [
    (True, "archived=False", ["grouptwogame/yeshui-client", "grouptwogame/naina", "mike/diaspora"]),
    (False, "membership=True", ["grouptwogame/yeshui-client", "mike/diaspora"]),   # diaspora by its path
])
def test_an_admin_lists_every_project_anyone_else_their_own(wiring_settings, rsps, capsys, admin, listed_with,
                                                             wired):
    FakeGitLab(rsps, [YESHUI, NAINA, DIASPORA], admin=admin, members=(1,))
    run(wiring_settings, dry_run=True)
    [listing] = requested(rsps, "/v4/projects?")
    assert listed_with in listing and ("membership" in listing) is not admin
    assert paths(capsys.readouterr().out) == wired
    assert bool(requested(rsps, "/projects/mike%2Fdiaspora")) is not admin    # an admin's listing has them all


@pytest.mark.parametrize("refused, shown, status", [
    ((), "name none of these projects: gone-group (", 0),            # 404: no such group the user can see
    (("gone-group",), ": could not list the group's projects: GitLab answered 403 Forbidden", 1),
])
def test_a_group_key_gitlab_refuses_is_reported_and_the_rest_goes_on(wiring_settings, rsps, capsys, tmp_path,
                                                                     refused, shown, status):
    gitlab = FakeGitLab(rsps, [YESHUI], refused_groups=refused)
    owners = {"gone-group": "lead@example.com", "Y_野水发财": "zhangsan@example.com"}
    assert run(with_owners(wiring_settings, tmp_path, owners)) == status
    out = capsys.readouterr().out
    assert shown in out and "created" in row(out, "grouptwogame/yeshui-client") and len(gitlab.hooks[1]) == 1


def test_projects_are_listed_for_a_pattern_key(wiring_settings, rsps, capsys, tmp_path):
    FakeGitLab(rsps, [gitlab_project(9, "x/app", "App")])
    assert run(with_owners(wiring_settings, tmp_path, {"x/*": "lead@example.com"}), dry_run=True) == 0
    assert paths(capsys.readouterr().out) == ["x/app"]
    assert requested(rsps, "/v4/projects?") and requested(rsps, "/user")


def test_a_key_too_short_to_match_is_not_looked_up_nor_listed_as_unused(wiring_settings, rsps, capsys, tmp_path):
    FakeGitLab(rsps, [gitlab_project(9, "x/app", "App"), YESHUI])  # the group "x" exists, but "x" never matches
    owners = {"x": "lead@example.com", "grouptwogame/yeshui-client": "zhangsan@example.com"}
    assert run(with_owners(wiring_settings, tmp_path, owners), dry_run=True) == 0
    out = capsys.readouterr().out
    assert paths(out) == ["grouptwogame/yeshui-client"] and "name none of these projects" not in out
    assert not requested(rsps, "/groups/x")


@pytest.mark.parametrize("failure", [
    dict(body=requests.exceptions.ConnectionError("reset")),
    dict(status=401, json={"message": "401 Unauthorized"}),           # the token revoked meanwhile
])
def test_an_error_that_stops_the_run_midway_still_shows_what_was_done(wiring_settings, rsps, capsys, failure):
    rsps.add(responses.POST, f"{API}/projects/2/hooks", **failure)
    test_project = gitlab_project(8, "qa/ceshi", "测试项目")
    gitlab = FakeGitLab(rsps, [YESHUI, NAINA, DIASPORA, test_project], {3: [gitlab_hook(7, OURS, 3, **RIGHT)]})
    assert run(wiring_settings) == 1
    captured = capsys.readouterr()
    assert [row(captured.out, path).split()[1:3] for path in paths(captured.out)] == [
        ["created", "new"], ["not", "done"], ["ok", "hook"], ["not", "done"]]
    assert "create interrupted by the error below" in row(captured.out, "grouptwogame/naina")
    assert "create not tried after the error below" in row(captured.out, "qa/ceshi")
    assert "4 projects: created 1, not done 2, ok 1." in captured.out and captured.err.startswith("error: ")
    assert changes(rsps) == [("POST", "/api/v4/projects/1/hooks"), ("POST", "/api/v4/projects/2/hooks")]
    assert len(gitlab.hooks[1]) == 1 and gitlab.hooks[8] == []


@pytest.mark.parametrize("answer", [
    dict(body=requests.exceptions.ConnectionError("refused")),        # an API stand-in without GET /user
    dict(status=404, json={"message": "404 Not Found"}),
])
def test_a_gitlab_that_does_not_say_who_the_token_is_lists_the_users_own_projects(wiring_settings, rsps, capsys,
                                                                                   answer):
    rsps.add(responses.GET, f"{API}/user", **answer)                 # registered first, so answered first
    gitlab = FakeGitLab(rsps, [YESHUI, UNOWNED])
    assert run(wiring_settings) == 0
    assert "membership=True" in requested(rsps, "/v4/projects?")[0] and len(gitlab.hooks[1]) == 1


def test_a_project_path_key_the_listing_holds_is_not_looked_up_again(wiring_settings, rsps, capsys):
    FakeGitLab(rsps, [YESHUI, NAINA, DIASPORA])
    run(wiring_settings, dry_run=True)
    assert "mike/diaspora" in paths(capsys.readouterr().out)
    assert not requested(rsps, "/projects/mike%2Fdiaspora") and not requested(rsps, "/groups/")


@pytest.mark.parametrize("token", ["glpat-复制错了", "glpat-abc def", "glpat-ａｂｃ"])
def test_a_token_with_characters_no_gitlab_token_has_stops_before_any_request(wiring_settings, rsps, token):
    with pytest.raises(ConfigError, match="GITLAB_API_TOKEN holds characters no GitLab token has") as raised:
        wire_hooks(dataclasses.replace(wiring_settings, gitlab_api_token=token))
    assert token not in str(raised.value) and not rsps.calls


@pytest.mark.parametrize("mode", [dict(dry_run=True), dict(check_only=True), {}])
def test_every_table_starts_with_the_hook_url(wiring_settings, rsps, capsys, mode):
    FakeGitLab(rsps, [YESHUI])
    run(wiring_settings, **mode)
    assert capsys.readouterr().out.startswith(f"Hook URL: {OURS}\n")


def test_ctrl_c_during_a_real_run_still_shows_what_was_done(wiring_settings, rsps, capsys):
    def interrupted(request):
        raise KeyboardInterrupt

    rsps.add_callback(responses.POST, f"{API}/projects/2/hooks", callback=interrupted)
    FakeGitLab(rsps, [YESHUI, NAINA, DIASPORA])
    assert run(wiring_settings) == 1
    captured = capsys.readouterr()
    assert [row(captured.out, path).split()[1] for path in paths(captured.out)] == ["created", "not", "not"]
    assert "error: interrupted (Ctrl+C); run it again: a second run does only what is left" in captured.err


@pytest.mark.parametrize("mode", [{}, {"dry_run": True}, {"check_only": True}])
def test_ctrl_c_while_reading_gitlab_says_nothing_was_changed_in_one_line(wiring_settings, rsps, capsys, mode):
    def interrupted(request):
        raise KeyboardInterrupt

    rsps.add_callback(responses.GET, f"{API}/projects/2/hooks", callback=interrupted)
    FakeGitLab(rsps, [YESHUI, NAINA])
    assert run(wiring_settings, **mode) == 1
    captured = capsys.readouterr()
    assert captured.err == ("error: interrupted (Ctrl+C) while reading GitLab, before any change: nothing was "
                            "changed\n")
    assert changes(rsps) == []


@pytest.mark.parametrize("reports_token, noted", [(True, False), (False, True)])    # GitLab 19.0+, before
def test_the_secret_token_note_stays_only_while_gitlab_does_not_say_whether_a_hook_has_one(
        wiring_settings, rsps, capsys, reports_token, noted):
    FakeGitLab(rsps, [YESHUI], reports_token=reports_token)
    run(wiring_settings)
    first = capsys.readouterr().out
    run(wiring_settings)                          # nothing to create or update: the note is about "unknown"
    second = capsys.readouterr().out
    assert "Secret token: sent with every hook" in first and ("Secret token" in second) is noted


def test_finds_our_hook_on_a_later_page_of_hooks(wiring_settings, rsps, capsys):
    others = [gitlab_hook(id, f"https://ci.example.cn/hooks/{id}", 1) for id in range(1, 26)]
    FakeGitLab(rsps, [YESHUI], {1: others + [gitlab_hook(99, OURS, 1, **RIGHT)]})   # GitLab pages hooks by 20
    assert run(wiring_settings) == 0 and changes(rsps) == []
    assert "hook #99 up to date" in row(capsys.readouterr().out, "grouptwogame/yeshui-client")


@pytest.mark.parametrize("mode", [{}, {"dry_run": True}, {"check_only": True}])
def test_a_gitlab_url_that_redirects_to_https_stops_every_mode_with_the_address_to_use(wiring_settings, rsps,
                                                                                       capsys, mode):
    # Omnibus GitLab answers http:// with 301 to https://: GETs follow it, but python-gitlab refuses the POST
    # and PUT of the real run, so every change would fail; say so at once, in every mode.
    plain = BASE.replace("https://", "http://")
    rsps.add_callback(responses.GET, re.compile(rf"{re.escape(plain)}/.*"),
                      callback=lambda request: (301, {"Location": request.url.replace(plain, BASE)}, ""))
    FakeGitLab(rsps, [YESHUI, NAINA])
    assert run(dataclasses.replace(wiring_settings, gitlab_url=plain), **mode) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"set GITLAB_URL={BASE}" in err
    assert changes(rsps) == []


def test_a_moved_project_redirect_within_gitlab_is_followed(wiring_settings, rsps, capsys, tmp_path):
    # GitLab 16.7+ answers a project's old path with 301 to /projects/:id on the same address.
    rsps.add(responses.GET, f"{API}/projects/grouptwogame%2Fold-naina", status=301,
             headers={"Location": f"{API}/projects/2"})
    FakeGitLab(rsps, [NAINA])
    settings = with_owners(wiring_settings, tmp_path, {"grouptwogame/old-naina": "a@example.com",
                                                       "grouptwogame/naina": "b@example.com"})
    assert run(settings, dry_run=True) == 0
    assert "redirects" not in capsys.readouterr().err

