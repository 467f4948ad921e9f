"""Group bots: the webhook client against `responses` mocks, and the Deliverer's chat path with stubs."""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import responses

from gitlab_feishu.chats import MAX_BODY_BYTES, BotClient, bot_url_problem, gen_sign, mask_chat_url
from gitlab_feishu.delivery import Deliverer
from gitlab_feishu.feishu import FeishuError
from gitlab_feishu.outbox import Outbox
from gitlab_feishu.rows import NewDelivery
from gitlab_feishu.service import LEASE_SLACK
from gitlab_feishu.pacing import bot_quotas

TOKEN = "7c1f0e2a-9b3d-4e5f-8a6b-0c1d2e3f4a5b"
URL = f"https://open.feishu.cn/open-apis/bot/v2/hook/{TOKEN}"
CARD = {"schema": "2.0", "header": {"title": {"tag": "plain_text", "content": "推送"}}, "body": {"elements": []}}
NOW = 1_800_000_000


def client() -> BotClient:
    return BotClient(clock=lambda: NOW + 0.75)


def sent_body() -> dict:
    return json.loads(responses.calls[-1].request.body)


# --- signing, body, masking --------------------------------------------------------------------

@pytest.mark.parametrize("timestamp, secret, sign", [
    (100, "demo", "jquNHnVOwmDRfw+vqTIrY5dooJAgi5EcRtLsQE4wfXg="),          # vectors from Feishu's algorithm
    (1599360473, "demo", "l1N0gAcBjdwBvGm1xMjOF0XSyaLRpR7tuO5dHfhAYc8="),
])
def test_gen_sign_matches_feishus_algorithm(timestamp, secret, sign):
    assert gen_sign(timestamp, secret) == sign


@responses.activate
def test_a_signed_bot_gets_timestamp_and_sign_and_the_card_as_an_object():
    responses.post(URL, json={"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"})
    client().post_card(URL, "bot-secret", CARD, budget=5)
    body = sent_body()
    assert body == {"timestamp": str(NOW), "sign": gen_sign(NOW, "bot-secret"), "msg_type": "interactive",
                    "card": CARD}
    assert responses.calls[-1].request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "推送".encode() in responses.calls[-1].request.body           # UTF-8, not \u escapes


@responses.activate
def test_an_unsigned_bot_gets_no_sign_fields():
    responses.post(URL, json={"code": 0, "msg": "success", "data": {}})
    client().post_card(URL, None, CARD)
    assert sent_body() == {"msg_type": "interactive", "card": CARD}


@pytest.mark.parametrize("url, masked", [
    (URL, "chat:…/hook/7c1f…"),
    ("http://127.0.0.1:5/open-apis/bot/v2/hook/ab", "chat:…/hook/ab…"),
    ("https://example.com/other", "chat:…"),
])
def test_chat_urls_are_shown_masked(url, masked):
    assert mask_chat_url(url) == masked


@pytest.mark.parametrize("url, problem", [
    (URL, None),
    ("https://open.larksuite.com/open-apis/bot/v2/hook/abc", None),
    ("https://open.larkoffice.com/open-apis/bot/v2/hook/abc", None),
    ("http://127.0.0.1:8080/open-apis/bot/v2/hook/test_bot-1", None),
    ("ftp://open.feishu.cn/open-apis/bot/v2/hook/abc", "not an https URL"),
    ("https:///open-apis/bot/v2/hook/abc", "not an https URL"),
    ("http://open.feishu.cn/open-apis/bot/v2/hook/abc", "in clear text"),
    ("http://10.0.0.5/open-apis/bot/v2/hook/abc", "in clear text"),
    ("http://127.evil.example/open-apis/bot/v2/hook/abc", "in clear text"),    # a name, not a loopback address
    ("http://[::1]:8080/open-apis/bot/v2/hook/abc", None),
    ("https://open.feishu.cn/open-apis/bot/v2/hook/", "not a custom-bot webhook URL"),
    ("https://open.feishu.cn/open-apis/bot/v2/hook/a/b", "not a custom-bot webhook URL"),
    ("https://open.feishu.cn/open-apis/im/v1/messages", "not a custom-bot webhook URL"),
    (URL + "?debug=1", "not a custom-bot webhook URL"),
    ("http://[::1/open-apis/bot/v2/hook/x", "not an https URL"),
])
def test_bot_url_validation(url, problem):
    found = bot_url_problem(url)
    assert (found is None) if problem is None else (problem in found)


# --- answers: success is the body's code, not the HTTP status ---------------------------------

@pytest.mark.parametrize("status, body, retryable, words", [
    (200, {"code": 11232, "data": {}, "msg": f"frequency limited psm[lark.oapi]appID[{TOKEN}]"}, True,
     ["Feishu 11232", "rate limit"]),
    (200, {"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time"}, False,
     ["19021", '{"url": ..., "secret": ...}', "clock"]),
    (200, {"code": 19022, "msg": "Ip Not Allowed"}, False, ["IP allow-list"]),
    (200, {"code": 19024, "msg": "Key Words Not Found"}, False, ["keyword"]),
    (200, {"code": 9499, "msg": "Bad Request", "data": {}}, False, ["9499", "20 KB"]),
    (400, {"code": 9499, "msg": "Bad Request"}, False, ["9499"]),
    (200, {"code": 9499, "msg": "too many request"}, True, ["9499", "rate limit"]),     # a burst, not the body
    (200, {"code": 19001, "msg": "param invalid: incoming webhook access token invalid"}, False, ["copy it again"]),
    (200, {"code": 77777, "msg": "something new"}, False, ["77777", "custom bot guide"]),
    (502, {"code": 77777, "msg": "upstream"}, True, ["HTTP 502"]),
    (503, "<html>503</html>", True, ["HTTP 503 without an error code"]),
    (429, "", True, ["HTTP 429"]),
    (404, "<html>404</html>", False, ["check the webhook URL"]),
    (200, "not json", False, ["HTTP 200 without an error code"]),
])
@responses.activate
def test_failures_say_whether_a_retry_can_help(status, body, retryable, words):
    responses.post(URL, status=status, **({"json": body} if isinstance(body, dict) else {"body": body}))
    with pytest.raises(FeishuError) as raised:
        client().post_card(URL, None, CARD)
    assert raised.value.retryable is retryable
    for word in words:
        assert word in str(raised.value)
    assert TOKEN not in str(raised.value) and "chat:…/hook/7c1f…" in str(raised.value)


@pytest.mark.parametrize("status, body, rate_limited", [
    (200, {"code": 11232, "data": {}, "msg": "frequency limited psm[lark.oapi]"}, True),
    (200, {"code": 9499, "msg": "too many request"}, True),
    (429, "", True),
    (200, {"code": 9499, "msg": "Bad Request", "data": {}}, False),
    (503, "<html>503</html>", False),
    (200, {"code": 19021, "msg": "sign match fail"}, False),
])
@responses.activate
def test_rate_limit_refusals_say_so(status, body, rate_limited):
    responses.post(URL, status=status, **({"json": body} if isinstance(body, dict) else {"body": body}))
    with pytest.raises(FeishuError) as raised:
        client().post_card(URL, None, CARD)
    assert raised.value.rate_limited is rate_limited


@responses.activate
def test_a_read_timeout_is_retryable_and_warns_of_a_possible_duplicate():
    responses.post(URL, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(FeishuError) as raised:
        client().post_card(URL, None, CARD, budget=1)
    assert raised.value.retryable and "twice" in str(raised.value)


@responses.activate
def test_connection_errors_never_quote_the_token():
    responses.post(URL, body=requests.ConnectionError(
        f"HTTPSConnectionPool(host='open.feishu.cn'): Max retries exceeded with url: /open-apis/bot/v2/hook/{TOKEN}"))
    with pytest.raises(FeishuError) as raised:
        client().post_card(URL, None, CARD)
    assert raised.value.retryable and TOKEN not in str(raised.value) and "7c1f…" in str(raised.value)


@responses.activate
def test_a_redirect_is_not_followed_and_fails_for_good():
    """A card goes to the bot's URL or nowhere: a redirect could aim the signed card at any internal address."""
    responses.post(URL, status=307, headers={"Location": "http://127.0.0.1:6379/internal/admin"})
    with pytest.raises(FeishuError, match="HTTP 307") as raised:
        client().post_card(URL, None, CARD)
    assert not raised.value.retryable and len(responses.calls) == 1


def test_a_url_requests_cannot_use_fails_for_good_saying_so():
    url = f"https://{'a' * 64}.feishu.cn/open-apis/bot/v2/hook/{TOKEN}"      # a host label over 63 characters
    with pytest.raises(FeishuError, match="the webhook URL cannot be used") as raised:
        client().post_card(url, None, CARD)
    assert not raised.value.retryable and TOKEN not in str(raised.value)


@responses.activate
def test_a_body_over_20_kb_is_refused_before_sending():
    big = {**CARD, "body": {"elements": [{"tag": "markdown", "content": "字" * MAX_BODY_BYTES}]}}
    with pytest.raises(FeishuError, match="over the group bot's 20 KB limit") as raised:
        client().post_card(URL, None, big)
    assert not raised.value.retryable and len(responses.calls) == 0


def test_no_budget_left_sends_nothing():
    with pytest.raises(FeishuError, match="no time left") as raised:
        client().post_card(URL, None, CARD, budget=0)
    assert raised.value.retryable


# --- the Deliverer's chat path ----------------------------------------------------------------

class StubBots:
    longest_post = BotClient().longest_post

    def __init__(self):
        self.posts: list[tuple[str, str | None, dict]] = []
        self.budgets: list[float | None] = []
        self.answers: list[Exception] = []
        self.answering = threading.Event()       # cleared: the bot takes its time until it is set
        self.answering.set()

    def post_card(self, url, secret, card, budget=None):
        self.posts.append((url, secret, card))
        self.budgets.append(budget)
        self.answering.wait(timeout=10)
        if self.answers:
            raise self.answers.pop(0)


class NoFeishu:
    def resolve_open_ids(self, emails, budget=None):
        raise AssertionError("a group chat needs no email lookup")

    def send_card(self, *args, **kwargs):
        raise AssertionError("a group chat is not sent as a DM")


class RecordingPacer:
    def __init__(self):
        self.quotas = []

    def wait_turn(self, quotas, deadline):
        self.quotas.append(quotas)
        return 0.0


@pytest.fixture
def chat_setup(tmp_path, clock):
    outbox = Outbox(tmp_path / "outbox.sqlite3", clock=clock)
    bots, pacer, secrets = StubBots(), RecordingPacer(), {URL: "first"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        deliverer = Deliverer(outbox, NoFeishu(), pool=pool, retry_base=5.0, pacer=pacer, clock=clock,
                              sleep=clock.sleep, chats=bots, chat_secret=secrets.get)
        rows = outbox.begin_event("idem:chat", "push", "g/p", [NewDelivery("chat", URL, "exact: g", json.dumps(CARD),
                                                                           "gf-unused")],
                                  lease_owner="me", lease_seconds=15, retry_window=86400)[0]
        yield deliverer, rows, bots, pacer, secrets, outbox


def test_a_chat_row_is_posted_to_its_bot_paced_by_the_bots_quota(chat_setup, clock):
    deliverer, rows, bots, pacer, _, outbox = chat_setup
    [outcome] = deliverer.deliver(rows, deadline=clock() + 5).values()
    assert outcome.status == "sent" and bots.posts == [(URL, "first", CARD)]
    assert pacer.quotas == [bot_quotas(URL)]
    assert outbox.event_rows("idem:chat")[0].status == "sent"


def test_a_post_still_under_way_at_the_deadline_is_not_cut_off_and_its_answer_is_recorded(chat_setup, clock, caplog):
    """A bot has no uuid: cutting its post off at the webhook's deadline and retrying showed the card twice
    whenever the group's bot answered late, but within its own timeouts."""
    deliverer, rows, bots, _, _, outbox = chat_setup
    caplog.set_level(logging.INFO)
    bots.answering.clear()
    [outcome] = deliverer.deliver(rows, deadline=clock() + 0.3).values()
    assert outcome.status == "queued" and "recorded when it comes" in outcome.error
    assert bots.budgets == [None]              # bounded by the bot client's own timeouts, not the deadline
    bots.answering.set()
    deliverer.pool.shutdown(wait=True)
    assert outbox.event_rows("idem:chat")[0].status == "sent" and len(bots.posts) == 1
    assert "for idem:chat sent after GitLab was answered" in caplog.text


@pytest.mark.parametrize("left, posted", [(20.0, True), (10.0, False)])
def test_a_retry_round_starts_a_group_post_only_while_all_of_it_fits(chat_setup, clock, left, posted):
    """A stopping process waits for its retry round, not for a post the round left under way (killed, it would
    be posted again by another process)."""
    deliverer, rows, bots, _, _, outbox = chat_setup
    [outcome] = deliverer.deliver(rows, deadline=clock() + left, retry_inline=False).values()
    assert (len(bots.posts) == 1) is posted and outcome.status == ("sent" if posted else "queued")
    if not posted:
        [row] = outbox.event_rows("idem:chat")
        assert row.attempts == 0 and row.next_attempt_at <= clock()     # the next round, at once
        assert row.last_error == "no thread free to post in time for this retry round"


def test_a_group_post_left_for_the_next_round_keeps_the_error_it_last_met(chat_setup, clock):
    deliverer, rows, bots, _, _, outbox = chat_setup
    bots.answers = [FeishuError("Feishu 11232: frequency limited", code=11232, retryable=True)]
    deliverer.deliver(rows, deadline=clock() + 0.1)              # one inline try, then queued
    clock.advance(60)
    [row] = outbox.claim_due(owner="w", lease_seconds=60)
    deliverer.deliver([row], deadline=clock() + 10, retry_inline=False)
    [row] = outbox.event_rows("idem:chat")
    assert row.last_error == "Feishu 11232: frequency limited" and len(bots.posts) == 1


class OneDM:
    def resolve_open_ids(self, emails, budget=None, **kwargs):
        return {email: "ou_" + email.split("@")[0] for email in emails}

    def send_card(self, open_id, content, uuid, budget=None):
        return "om_1"


def test_a_slow_group_bot_does_not_hold_the_threads_owners_dms_need(tmp_path, clock):
    outbox = Outbox(tmp_path / "outbox.sqlite3", clock=clock)
    bots = StubBots()
    bots.answering.clear()
    planned = [NewDelivery("chat", URL, "exact: g", json.dumps(CARD), "u0"),
               NewDelivery("chat", URL.replace("7c1f", "8d2e"), "exact: g", json.dumps(CARD), "u1")]
    dms = [NewDelivery("dm", f"{name}@example.com", "exact: g", json.dumps(CARD), f"u-{name}") for name in "ab"]
    with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as chat_pool:
        deliverer = Deliverer(outbox, OneDM(), pool=pool, retry_base=5.0, clock=clock, sleep=clock.sleep,
                              chats=bots, chat_pool=chat_pool)
        posts = outbox.begin_event("idem:g", "push", "g/p", planned, lease_owner="me", lease_seconds=15,
                                   retry_window=86400)[0]
        outcomes = deliverer.deliver(posts, deadline=clock() + 0.3)
        # The first post holds the only posting thread; the second never started, and says so.
        assert sorted(o.error.split(";")[0] for o in outcomes.values()) == [
            "still sending when the deadline came", "the group's bot had not answered when the deadline came"]
        rows = outbox.begin_event("idem:d", "push", "g/p", dms, lease_owner="me", lease_seconds=15,
                                  retry_window=86400)[0]
        assert [o.status for o in deliverer.deliver(rows, deadline=clock() + 5).values()] == ["sent", "sent"]
        bots.answering.set()


def test_an_inline_rows_lease_outlasts_a_post_started_just_before_the_deadline():
    """Or the retry worker could claim the row and post again while the first post is still under way."""
    assert LEASE_SLACK > BotClient().longest_post


def test_the_secret_is_read_at_each_send_so_fixing_owners_json_fixes_the_retry(chat_setup, clock):
    deliverer, rows, bots, _, secrets, _ = chat_setup
    bots.answers = [FeishuError("Feishu 11232", code=11232, retryable=True)] * 30
    deliverer.deliver(rows, deadline=clock() + 1)
    secrets[URL] = "rotated"
    bots.answers = []
    clock.advance(60)
    [row] = deliverer.outbox.claim_due(owner="w", lease_seconds=60)
    assert deliverer.deliver([row], deadline=clock() + 5)[row.id].status == "sent"
    assert bots.posts[0][1] == "first" and bots.posts[-1][1] == "rotated"


def test_a_permanent_bot_error_fails_and_the_log_shows_the_url_masked(chat_setup, clock, caplog):
    deliverer, rows, bots, _, _, _ = chat_setup
    bots.answers = [FeishuError(f"posting the card to {mask_chat_url(URL)}: Feishu 19021", code=19021)]
    [outcome] = deliverer.deliver(rows, deadline=clock() + 5).values()
    assert outcome.status == "failed" and len(bots.posts) == 1
    assert "chat:…/hook/7c1f…" in caplog.text and TOKEN not in caplog.text


@responses.activate
def test_a_gateway_rate_limit_answer_carries_its_reset_time():
    responses.post(URL, status=429, headers={"x-ogw-ratelimit-reset": "3"},
                   json={"code": 99991400, "msg": "request trigger frequency limit"})
    with pytest.raises(FeishuError) as caught:
        client().post_card(URL, None, CARD)
    assert caught.value.retryable and caught.value.retry_after == 3.0
