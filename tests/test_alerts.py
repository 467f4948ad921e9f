"""Admin alerts: permanent failures and a queue backlog make one card for the admins, once per problem per hour."""
from __future__ import annotations

import dataclasses
import json

import pytest

from gitlab_feishu.alerts import BACKLOG_SECONDS, LABELS, TEXTS, Problem, classify, render_alert
from gitlab_feishu.app import create_app
from gitlab_feishu.feishu import UNKNOWN_EMAIL, FeishuError
from gitlab_feishu.rows import QUEUED, SENT, Delivery, NewDelivery
from gitlab_feishu.worker import QUEUE_WATCH_INTERVAL
from tests.conftest import gitlab_headers, load_payload
from tests.fake_feishu import check_card

ADMIN = "ops@example.com"
MINUTE = 60.0
SCOPE_DENIED = ("Access denied. One of the following scopes is required: [im:message, im:message:send_as_bot]. "
                "应用尚未开通所需的应用身份权限")


@pytest.fixture
def feishu(fake):
    fake.reset()
    for email in ("mike@example.com", "lisi@example.com", ADMIN):
        fake.add_user(email)
    fake.add_user("away@example.com", available=False)         # outside the app's availability range: 230013
    return fake


@pytest.fixture
def make_app(settings, feishu, clock, owners_file):
    """A live app on the fake Feishu and the fake clock; `owners` are the owners of mike/diaspora."""
    apps = []

    def make(owners=("mike@example.com",), **changes):
        owners_file.write_text(json.dumps({"mike/diaspora": list(owners)}), encoding="utf-8")
        changes.setdefault("admin_emails", (ADMIN,))
        app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url, **changes), clock=clock,
                         background=False)
        apps.append(app)
        return app
    yield make
    for app in apps:
        app.extensions["gitlab_feishu"].worker.stop()


def push(app) -> dict:
    """A push to mike/diaspora, with a new Idempotency-Key each time."""
    return app.test_client().post("/gitlab-webhook", json=load_payload("push.json"), headers=gitlab_headers()).json


def run_worker(app) -> None:
    """Let the retry worker send what is due, alerts included (queued, not sent inline): due at once,
    with the clock standing still."""
    app.extensions["gitlab_feishu"].worker.run_once()


def alert_cards(fake, to=ADMIN) -> list[dict]:
    return [m["card"] for m in fake.messages if m["to_email"] == to]


def title(card: dict) -> str:
    return card["header"]["title"]["content"]


def text(card: dict) -> str:
    return json.dumps(card, ensure_ascii=False)


def alert_rows(app) -> list[Delivery]:
    return [row for row in app.extensions["gitlab_feishu"].outbox.pending() if row.event_key.startswith("alert:")]


def test_a_permanent_failure_sends_the_admins_one_card_saying_what_to_do(make_app, feishu, clock):
    app = make_app(owners=["mike@example.com", "away@example.com"])
    response = push(app)
    assert [d["result"] for d in response["deliveries"]] == ["sent", "failed"]
    run_worker(app)
    [card] = alert_cards(feishu)
    assert title(card) == "away@example.com 不在应用的可用范围内"
    assert card["header"]["template"] == "red"
    assert "可用范围" in text(card) and "230013" in text(card) and "mike/diaspora" in text(card)
    assert "--retry-failed" in text(card)


@pytest.mark.parametrize(("first_at", "gap", "cards"), [
    (0, 30 * MINUTE, 1),                 # the same problem twice within the hour: one card
    (50 * MINUTE, 20 * MINUTE, 1),       # across the turn of a clock hour, still within the hour
    (0, 61 * MINUTE, 2),                 # again after the hour: another card
])
def test_the_same_problem_is_alerted_at_most_once_an_hour(make_app, feishu, clock, first_at, gap, cards):
    app = make_app(owners=["away@example.com"])
    clock.advance(first_at)
    push(app)
    run_worker(app)
    clock.advance(gap)
    push(app)
    run_worker(app)
    assert len(alert_cards(feishu)) == cards


def test_distinct_problems_are_alerted_separately(make_app, feishu, clock):
    app = make_app(owners=["away@example.com", "ghost@example.com"])
    push(app)
    run_worker(app)
    assert sorted(title(card) for card in alert_cards(feishu)) == [
        "away@example.com 不在应用的可用范围内", "飞书中找不到 ghost@example.com"]


def test_one_person_named_in_two_cases_is_one_problem(make_app, feishu, clock, owners_file):
    # Emails are case-insensitive (Feishu finds Ghost@Example.com as ghost@example.com): one unknown person is
    # one problem however owners.json and users.json spell them, in one project or in two.
    app = make_app(owners=["Ghost@Example.com", "Away@Example.com"])
    push(app)
    run_worker(app)
    owners_file.write_text(json.dumps({"mike/diaspora": ["ghost@example.com", "away@example.com"]}), encoding="utf-8")
    clock.advance(MINUTE)
    push(app)
    run_worker(app)
    assert sorted(title(card) for card in alert_cards(feishu)) == [
        "Away@Example.com 不在应用的可用范围内", "飞书中找不到 Ghost@Example.com"]


def test_a_missing_permission_is_one_problem_naming_the_scope(make_app, feishu, clock):
    app = make_app(owners=["mike@example.com", "lisi@example.com"])
    feishu.fail_next("send", status=400, code=99991672, msg=SCOPE_DENIED, times=2)
    assert [d["result"] for d in push(app)["deliveries"]] == ["failed", "failed"]
    run_worker(app)
    [card] = alert_cards(feishu)
    assert title(card) == "飞书应用缺少权限 im:message 或 im:message:send_as_bot"          # in Chinese throughout
    assert "权限管理" in text(card)


def test_an_admin_given_by_open_id_hears_that_the_contact_permission_is_missing(make_app, feishu, clock):
    # Every email lookup fails, an admin's too: only one named by open_id can be told.
    admin_open_id = feishu.add_user("lead@example.com")
    app = make_app(admin_emails=(admin_open_id,))
    feishu.fail_next("batch_get_id", status=400, code=99991672, times=10,
                     msg="Access denied. One of the following scopes is required: [contact:user.id:readonly].")
    assert [d["result"] for d in push(app)["deliveries"]] == ["failed"]
    run_worker(app)
    [card] = alert_cards(feishu, to="lead@example.com")
    assert title(card) == "飞书应用缺少权限 contact:user.id:readonly"


def test_a_refused_card_is_alerted(make_app, feishu, clock):
    app = make_app(card_lang="en")
    feishu.fail_next("send", status=400, code=230099, msg="Failed to create card content, ext=ErrCode: 200621")
    push(app)
    run_worker(app)
    [card] = alert_cards(feishu)
    assert title(card) == "Feishu refused a notification card (230099)"
    assert "report the error below" in text(card)


def test_no_alert_without_admin_emails(make_app, feishu, clock):
    app = make_app(owners=["away@example.com"], admin_emails=())
    push(app)
    run_worker(app)
    assert alert_rows(app) == []
    assert feishu.calls("send") == 1                # the owner's card, refused; nothing else


@pytest.mark.parametrize("admin", ["nobody@example.com", "away@example.com"])
def test_an_alert_that_fails_raises_no_further_alert(make_app, feishu, clock, admin):
    app = make_app(owners=["ghost@example.com"], admin_emails=(admin,))
    push(app)
    run_worker(app)
    for _ in range(3):
        clock.advance(2 * 3600)
        run_worker(app)
    [row] = alert_rows(app)
    assert row.status == "failed" and row.event_key.startswith("alert:unknown-email:ghost@example.com:")
    assert feishu.messages == []


# --- queue backlog ---------------------------------------------------------------------------------------------

def fill_queue(app, n: int, key: str = "idem:backlog") -> list[Delivery]:
    """`n` deliveries waiting for a retry, due far ahead so only the watch sees them."""
    planned = [NewDelivery("dm", f"ou_{i}", "exact: demo", "{}", f"uuid-{key}-{i}") for i in range(n)]
    outbox = app.extensions["gitlab_feishu"].outbox
    rows = outbox.begin_event(key, "push", "mike/diaspora", planned, lease_owner="elsewhere", lease_seconds=0,
                              retry_window=86400)[0]
    for row in rows:
        outbox.finish(row.id, QUEUED, attempts=1, error="HTTP 503", next_attempt_at=outbox.clock() + 1800)
    return rows


def watch(app, clock, seconds: float) -> None:
    """Let `seconds` of housekeeping pass, at the worker's watch interval."""
    worker = app.extensions["gitlab_feishu"].worker
    for _ in range(int(seconds // QUEUE_WATCH_INTERVAL)):
        worker.housekeeping()
        clock.advance(QUEUE_WATCH_INTERVAL)
    worker.housekeeping()


def test_queue_backlog_alerts_only_after_staying_above_the_threshold(make_app, feishu, clock):
    app = make_app(alert_queue_threshold=3)
    fill_queue(app, 4)
    watch(app, clock, BACKLOG_SECONDS - QUEUE_WATCH_INTERVAL)
    assert alert_rows(app) == []
    watch(app, clock, QUEUE_WATCH_INTERVAL)
    [row] = alert_rows(app)
    assert row.recipient == ADMIN and "待发送通知积压：4 条" in row.content


def test_queue_backlog_timer_restarts_when_the_queue_drains(make_app, feishu, clock):
    app = make_app(alert_queue_threshold=3)
    outbox = app.extensions["gitlab_feishu"].outbox
    rows = fill_queue(app, 4)
    watch(app, clock, BACKLOG_SECONDS - QUEUE_WATCH_INTERVAL)  # above for 4.5 minutes
    outbox.finish(rows[0].id, SENT, attempts=1)                # 3 left: not above the threshold at the next look
    watch(app, clock, QUEUE_WATCH_INTERVAL)
    fill_queue(app, 1, key="idem:more")                        # above again from the look after
    watch(app, clock, BACKLOG_SECONDS)
    assert alert_rows(app) == []
    watch(app, clock, QUEUE_WATCH_INTERVAL)
    assert len(alert_rows(app)) == 1


def test_queue_backlog_alerts_once_an_hour_while_it_lasts(make_app, feishu, clock):
    app = make_app(alert_queue_threshold=3)
    fill_queue(app, 4)
    watch(app, clock, BACKLOG_SECONDS)
    watch(app, clock, 3600 - QUEUE_WATCH_INTERVAL)
    assert len(alert_rows(app)) == 1
    watch(app, clock, QUEUE_WATCH_INTERVAL)
    assert len(alert_rows(app)) == 2


def test_queue_backlog_card_is_delivered_by_the_worker(make_app, feishu, clock):
    app = make_app(alert_queue_threshold=3, card_lang="en")
    fill_queue(app, 4)
    watch(app, clock, BACKLOG_SECONDS)
    run_worker(app)
    [card] = alert_cards(feishu)
    assert title(card) == "Notification backlog: 4 queued" and card["header"]["template"] == "orange"


# --- problems and cards, pure --------------------------------------------------------------------------------

def row(recipient: str = "zhangsan@example.com", *, channel: str = "dm", rule: str = "exact: demo") -> Delivery:
    return Delivery(id=1, event_key="idem:1", channel=channel, recipient=recipient, rule=rule, content="{}",
                    uuid="u", status="failed", attempts=1, rounds=1, next_attempt_at=0, lease_until=None,
                    last_error=None, created_at=0, give_up_at=0)


def feishu_error(code=None, *, retryable=False, http_status=400, msg="refused"):
    return FeishuError(f"sending the card: Feishu {code}: {msg}", code=code, http_status=http_status,
                       retryable=retryable)


@pytest.mark.parametrize(("error", "key", "kind"), [
    (UNKNOWN_EMAIL, "unknown-email:zhangsan@example.com", "unknown_email"),
    (feishu_error(230013), "230013:zhangsan@example.com", "availability"),
    (feishu_error(99991672, msg=SCOPE_DENIED), "99991672:im:message or im:message:send_as_bot", "permission"),
    (feishu_error(230099), "card:230099", "card"),
    (feishu_error(230025), "card:230025", "card"),
    (feishu_error(200621), "card:200621", "card"),
    (feishu_error(230006), "230006:*", "app"),                      # bot capability off: everyone
    (feishu_error(99991401), "99991401:*", "app"),                  # the app's IP allow-list: everyone
    (feishu_error(10014), "10014:*", "app"),                        # the app secret: everyone
    (feishu_error(230053), "230053:zhangsan@example.com", "person"),  # this user stopped the bot
    (feishu_error(230029), "230029:zhangsan@example.com", "person"),  # left the company
    (feishu_error(1234567), "1234567:zhangsan@example.com", "other"),
    (feishu_error(None, http_status=404), "HTTP 404:*", "other"),
    (feishu_error(None, retryable=True, http_status=503), "expired", "expired"),   # retry window closed
])
def test_classify(error, key, kind):
    problem = classify(row(), error)
    assert (problem.key, problem.kind) == (key, kind)


@pytest.mark.parametrize(("rule", "file"), [("exact: demo", "owners.json"), ("fuzzy: 野水", "owners.json"),
                                            ("reviewer: zhangsan", "users.json"), ("assignee: lisi", "users.json"),
                                            ("triggered: wangwu", "users.json")])
@pytest.mark.parametrize("lang", list(LABELS))
def test_an_unknown_email_alert_names_the_file_that_lists_it(rule, file, lang):
    card = render_alert(classify(row(rule=rule), UNKNOWN_EMAIL), lang, "https://open.feishu.cn/app/cli_test_app")
    text = json.dumps(card, ensure_ascii=False)
    [other] = {"owners.json", "users.json"} - {file}
    assert file in text and other not in text


SCOPE_DENIED_WITH_LINK = ("Access denied. One of the following scopes is required: [im:message, im:message:send_as_bot]."
                          "应用尚未开通所需的应用身份权限：[im:message, im:message:send_as_bot]，点击链接申请并开通任一权限即可："
                          "https://open.feishu.cn/app/cli_test_app/auth?q=im:message,im:message:send_as_bot"
                          "&op_from=openapi&token_type=tenant")


@pytest.mark.parametrize(("console", "opens"), [
    ("https://open.feishu.cn/app/cli_test_app",
     "https://open.feishu.cn/app/cli_test_app/auth?q=im:message,im:message:send_as_bot&op_from=openapi&token_type=tenant"),
    ("https://open.larksuite.com/app/cli_test_app", "https://open.larksuite.com/app/cli_test_app"),   # not its console
])
def test_a_missing_permission_alert_opens_feishus_own_request_page(console, opens):
    problem = classify(row(), feishu_error(99991672, msg=SCOPE_DENIED_WITH_LINK))
    card = render_alert(problem, "zh", console)
    check_card(card)
    [button] = [element for element in card["body"]["elements"] if element["tag"] == "button"]
    assert button["behaviors"][0]["default_url"] == opens


@pytest.mark.parametrize("link", [
    "https://evil.example\uff0f@open.feishu.cn/app/cli_test_app/auth?q=im:message",   # urlsplit raises ValueError
    "https://open.feishu.cn/app/another_app/auth?q=im:message",                          # another app's page
    "https://open.feishu.cn/app/cli_test_app/../../evil/app/x/auth?q=1",                 # dots leave the app's page
    "https://open.feishu.cn/app/cli_test_app/%2E%2e/%2e%2e/evil/app/x/auth?q=1",         # so do encoded dots
    "https://open.feishu.cn/app/cli_test_app/..\\..\\evil/app/x/auth?q=1",               # a backslash is a slash
])
def test_a_scope_link_elsewhere_falls_back_to_the_console_and_the_alert_is_raised(link):
    problem = classify(row(), feishu_error(99991672, msg=SCOPE_DENIED_WITH_LINK.split("https://")[0] + link))
    card = render_alert(problem, "zh", "https://open.feishu.cn/app/cli_test_app")
    check_card(card)
    [button] = [element for element in card["body"]["elements"] if element["tag"] == "button"]
    assert button["behaviors"][0]["default_url"] == "https://open.feishu.cn/app/cli_test_app"


def test_an_alert_for_every_delivery_names_no_one_recipient():
    for error in (feishu_error(99991672, msg=SCOPE_DENIED), feishu_error(230099)):
        text = json.dumps(render_alert(classify(row(), error), "zh", "https://open.feishu.cn/app/x"), ensure_ascii=False)
        assert "zhangsan" not in text


def test_the_error_detail_keeps_feishus_words_not_the_english_hint():
    error = feishu_error(230013, msg="Bot has NO availability to this user.")
    error.hint, error.log_id = "add them under Availability", "20261128ABC"
    problem = classify(row(), error)
    assert "add them under" not in problem.detail and "20261128ABC" in problem.detail


def test_a_group_bot_refusing_a_bad_body_is_not_a_settings_problem():
    bot = row("https://open.feishu.cn/open-apis/bot/v2/hook/0a1b2c3d-secret", channel="chat")
    assert classify(bot, feishu_error(9499)).kind == "other"


@pytest.mark.parametrize("code", [19001, 19021, 19022, 19024])
def test_a_group_bot_failure_says_to_look_in_the_group_not_the_developer_console(code):
    bot = row("https://open.feishu.cn/open-apis/bot/v2/hook/0a1b2c3d-secret", channel="chat")
    problem = classify(bot, feishu_error(code))
    assert problem.kind == "chat" and "0a1b2c3d-secret" not in problem.key
    card = render_alert(problem, "zh", "https://open.feishu.cn/app/cli_test_app")
    check_card(card)
    text = json.dumps(card, ensure_ascii=False)
    assert "群机器人" in text and "owners.json" in text
    assert "0a1b2c3d-secret" not in text and "button" not in text


EXAMPLES = [Problem("k", "unknown_email", {"recipient": "a@example.com", "file": "owners.json"}, UNKNOWN_EMAIL,
                    "group/p"),
            Problem("k", "availability", {"recipient": "a@example.com", "code": 230013}, "x"),
            Problem("k", "permission", {"recipient": "a", "code": 99991672, "scopes": "im:message",
                                        "scopes_zh": "im:message"}, "x"),
            Problem("k", "card", {"recipient": "a", "code": 230099}, "x"),
            Problem("k", "expired", {}, "x"),
            Problem("k", "other", {"recipient": "a", "code": 1234567}, "x"),
            Problem("k", "person", {"recipient": "a", "code": 230053, "action_zh": "解除屏蔽", "action_en": "unblock"},
                    "x"),
            Problem("k", "app", {"code": 230006, "action_zh": "启用机器人", "action_en": "enable the bot"}, "x"),
            Problem("k", "chat", {"recipient": "chat:…/hook/0a1b…", "code": 19021}, "x"),
            Problem("k", "backlog", {"queued": 150, "threshold": 100, "minutes": 5})]


@pytest.mark.parametrize("lang", list(LABELS))
@pytest.mark.parametrize("problem", EXAMPLES, ids=[p.kind for p in EXAMPLES])
def test_every_alert_card_is_one_feishu_accepts(problem, lang):
    card = render_alert(problem, lang, "https://open.feishu.cn/app/cli_test_app")
    check_card(card)
    assert title(card) == TEXTS[problem.kind][lang][0].format(**problem.values)


@pytest.mark.parametrize("lang", list(LABELS))
def test_a_refused_card_does_not_suggest_retry_failed_which_would_send_it_again(lang):
    card = render_alert(classify(row(), feishu_error(230099)), lang, "https://open.feishu.cn/app/cli_test_app")
    assert "--retry-failed" not in text(card)


@pytest.mark.parametrize(("lang", "words"), [("zh", "重新开启接收消息"), ("en", "turn its messages back on")])
def test_a_person_who_stopped_the_bot_is_told_apart_in_the_cards_language(lang, words):
    error = feishu_error(230053, msg="The user has stopped the bot from sending messages to him.")
    card = render_alert(classify(row(), error), lang, "https://open.feishu.cn/app/cli_test_app")
    action = card["body"]["elements"][0]["content"].split("\n")[1]
    assert words in action and "230053" in title(card) and "--retry-failed" in text(card)
    assert "developer console" not in action and "开发者后台" not in action       # nothing to do there


@pytest.mark.parametrize(("lang", "words"), [("zh", "中启用「机器人」"), ("en", "Enable the Bot")])
def test_an_app_wide_problem_says_what_to_do_in_the_cards_language_and_names_no_recipient(lang, words):
    error = feishu_error(230006, msg="Bot ability is not activated.")
    card = render_alert(classify(row(), error), lang, "https://open.feishu.cn/app/cli_test_app")
    body = text(card)
    assert words in body and "Bot ability is not activated." in body
    assert "zhangsan@example.com" not in body


def test_alert_card_escapes_feishus_text():
    problem = Problem("k", "other", {"recipient": "a@example.com", "code": 1}, "**bold** <at id=all></at> [x](y)")
    body = text(render_alert(problem, "en", "https://open.feishu.cn/app/cli_test_app"))
    assert "<at" not in body and "**bold**" not in body and "[x](y)" not in body


@pytest.mark.parametrize("code", [230029, 230038])
@pytest.mark.parametrize("lang", list(LABELS))
def test_a_person_who_left_or_is_in_another_tenant_is_not_sent_to_retry_failed(code, lang):
    """The fix names someone else in owners.json/users.json; --retry-failed resends the stored rows to the same
    person, and Feishu refuses them again."""
    card = render_alert(classify(row(), feishu_error(code)), lang, "https://open.feishu.cn/app/cli_test_app")
    assert "--retry-failed" not in text(card)
