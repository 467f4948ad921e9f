"""The fake Feishu behaves like the real platform: tokens, lookups, sends, group bots, quotas and faults."""
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.fake_feishu import FakeFeishu, RateWindow, gen_sign

TOKEN = "/open-apis/auth/v3/tenant_access_token/internal"
LOOKUP = "/open-apis/contact/v3/users/batch_get_id"
SEND = "/open-apis/im/v1/messages"
SIGNED_AT = 1599360473  # the documented signature test vector's timestamp


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = SIGNED_AT + 10.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def card(*elements, **root) -> dict:
    """A card JSON 2.0 with the given body elements (one markdown line by default)."""
    return {"schema": "2.0", "header": {"title": {"tag": "plain_text", "content": "推送"}, "template": "blue"},
            "body": {"elements": list(elements) or [
                {"tag": "markdown", "content": "**main** 更新了 3 个提交"}]},
            **root}


def button(**fields) -> dict:
    return {"tag": "button", "text": {"tag": "plain_text", "content": "查看"}, "type": "primary", **fields}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make_fake(clock):
    started = []

    def make(**kwargs) -> FakeFeishu:
        started.append(FakeFeishu(clock=clock, **kwargs).start())
        return started[-1]

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def fake(make_fake):
    return make_fake()


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def issue(http, fake, app_id="cli_test_app", app_secret="test-secret") -> requests.Response:
    return http.post(fake.url + TOKEN, json={"app_id": app_id, "app_secret": app_secret}, timeout=5)


def bearer(http, fake) -> dict:
    return {"Authorization": "Bearer " + issue(http, fake).json()["tenant_access_token"]}


def lookup(http, fake, emails, headers=None, user_id_type="open_id") -> requests.Response:
    return http.post(fake.url + LOOKUP, params={"user_id_type": user_id_type}, json={"emails": emails},
                     headers=headers or bearer(http, fake), timeout=5)


def send(http, fake, receive_id, content=None, headers=None, params=None, timeout=5, **body) -> requests.Response:
    body = {"receive_id": receive_id, "msg_type": "interactive",
            "content": json.dumps(card(), ensure_ascii=False) if content is None else content, **body}
    return http.post(fake.url + SEND, params={"receive_id_type": "open_id"} if params is None else params,
                     json=body, headers=headers or bearer(http, fake), timeout=timeout)


def wait_for(condition, seconds=2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


# Tokens

def test_token_is_issued_with_its_lifetime(http, fake):
    reply = issue(http, fake)
    assert reply.status_code == 200 and reply.headers["X-Tt-Logid"]
    body = reply.json()
    assert (body["code"], body["msg"], body["expire"]) == (0, "ok", 7200)
    assert body["tenant_access_token"].startswith("t-")


def test_same_token_with_remaining_lifetime_while_30_minutes_are_left(http, fake, clock):
    first = issue(http, fake).json()
    clock.now += 1000
    again = issue(http, fake).json()
    assert again["tenant_access_token"] == first["tenant_access_token"] and again["expire"] == 6200


def test_new_token_when_under_30_minutes_are_left_and_the_old_one_stays_valid(http, fake, clock):
    old = issue(http, fake).json()["tenant_access_token"]
    clock.now += 7200 - 1799
    new = issue(http, fake).json()
    assert new["tenant_access_token"] != old and new["expire"] == 7200
    assert lookup(http, fake, ["x@example.com"], headers={"Authorization": "Bearer " + old}).json()["code"] == 0


def test_token_ttl_makes_short_lived_tokens(http, make_fake, clock):
    fake = make_fake(token_ttl=60)
    headers = bearer(http, fake)
    clock.now += 61
    assert lookup(http, fake, ["x@example.com"], headers=headers).json()["code"] == 99991663


def test_revoked_tokens_are_refused(http, fake):
    headers = bearer(http, fake)
    fake.revoke_tokens()
    reply = lookup(http, fake, ["x@example.com"], headers=headers)
    assert (reply.status_code, reply.json()["code"]) == (400, 99991663)


@pytest.mark.parametrize("app_id, app_secret, code", [("cli_other", "test-secret", 10003),
                                                      ("cli_test_app", "wrong", 10014)])
def test_bad_credentials_are_refused_in_the_body(http, fake, app_id, app_secret, code):
    reply = issue(http, fake, app_id, app_secret)
    assert reply.status_code == 200 and reply.json()["code"] == code and "tenant_access_token" not in reply.json()


@pytest.mark.parametrize("authorization, code", [
    (None, 99991661), ("Basic dXNlcg==", 99991661), ("Bearer ", 99991661),
    ("Bearer t-0123456789abcdef", 99991663), ("Bearer not-a-token", 99991671)])
def test_requests_without_a_valid_bearer_token_are_refused(http, fake, authorization, code):
    headers = {"Authorization": authorization} if authorization else {"X-Nothing": "1"}
    reply = lookup(http, fake, ["x@example.com"], headers=headers)
    assert reply.status_code == 400 and reply.json()["code"] == code
    assert reply.json()["error"]["log_id"] == reply.headers["X-Tt-Logid"]


# Email lookup

def test_lookup_answers_in_request_order_case_insensitively_echoing_the_email(http, fake):
    zhang = fake.add_user("zhangsan@example.com")
    reply = lookup(http, fake, ["nobody@example.com", "ZhangSan@Example.COM"]).json()
    assert reply["code"] == 0
    unknown, known = reply["data"]["user_list"]
    assert unknown == {"email": "nobody@example.com"}
    assert (known["user_id"], known["email"]) == (zhang, "ZhangSan@Example.COM")


@pytest.mark.parametrize("emails, user_id_type", [
    (["x@example.com"] * 51, "open_id"), ([], "open_id"), ("x@example.com", "open_id"), ([42], "open_id"),
    (["x@example.com"], "union_id"), (["x@example.com"], None)])
def test_lookup_refuses_bad_parameters(http, fake, emails, user_id_type):
    reply = lookup(http, fake, emails, user_id_type=user_id_type)
    assert reply.status_code == 400 and reply.json()["code"] == 99992402


def test_auto_users_resolve_any_email_to_a_stable_open_id_that_can_receive(http, make_fake):
    fake = make_fake(auto_users=True)
    first = lookup(http, fake, ["Anyone@example.com"]).json()["data"]["user_list"][0]["user_id"]
    assert lookup(http, fake, ["anyone@example.com"]).json()["data"]["user_list"][0]["user_id"] == first
    assert send(http, fake, first).json()["code"] == 0
    assert fake.messages[0]["to_email"] == "Anyone@example.com"


# Sending cards

def test_send_creates_a_message_and_answers_like_feishu(http, fake):
    open_id = fake.add_user("lisi@example.com")
    content = json.dumps(card(), ensure_ascii=False)
    reply = send(http, fake, open_id, content, uuid="push-1-lisi")
    data = reply.json()["data"]
    assert reply.status_code == 200 and reply.json()["code"] == 0 and reply.headers["X-Tt-Logid"]
    assert data["message_id"].startswith("om_") and data["chat_id"].startswith("oc_")
    assert data["create_time"].isdigit() and data["msg_type"] == "interactive"
    [message] = fake.messages
    assert message["message_id"] == data["message_id"] and message["to_email"] == "lisi@example.com"
    assert (message["content"], message["card"], message["uuid"]) == (content, card(), "push-1-lisi")


def test_send_by_email_reaches_the_same_user(http, fake):
    fake.add_user("wangwu@example.com")
    reply = send(http, fake, "WangWu@example.com", params={"receive_id_type": "email"})
    assert reply.json()["code"] == 0 and fake.messages[0]["to_email"] == "wangwu@example.com"


def deep(element, levels=3) -> dict:
    for _ in range(levels):
        element = {"tag": "column_set", "columns": [{"tag": "column", "elements": [element]}]}
    return element


@pytest.mark.parametrize("content, code, words", [
    (card(), 99992402, "content"),  # the card as an object, not a JSON string
    ("{not json", 230099, "200621"),
    (json.dumps({"header": {"title": {"tag": "plain_text", "content": "1.0"}}}), 230099, "elements"),
    (json.dumps({**card(), "schema": "3.0"}), 230099, "schema"),
    (json.dumps(card(elements=[])), 230099, "unsupported properties"),
    (json.dumps(card({"tag": "action", "actions": [button(url="https://x.example")]})), 230099, "200861"),
    (json.dumps(card(deep({"tag": "note", "elements": []}))), 230099, "200861"),
    (json.dumps(card({"tag": "collapsible_panel", "elements": [{"tag": "action", "actions": []}]})),
     230099, "200861"),
    (json.dumps(card(*[{"tag": "hr"}] * 201)), 230099, "11310"),
    (json.dumps(card(config={"update_multi": False})), 230099, "update_multi"),
    (json.dumps({**card(), "header": {"title": {"tag": "plain_text", "content": "x"}, "template": "pink"}}),
     230099, "template"),
    (json.dumps(card(button())), 230099, "behaviors"),
    (json.dumps(card(button(behaviors=[{"type": "open_url", "default_url": "javascript:alert(1)"}]))),
     230099, "http"),
    (json.dumps(card({"tag": "column", "elements": []})), 230099, "column"),
])
def test_send_refuses_cards_feishu_refuses(http, fake, content, code, words):
    reply = send(http, fake, fake.add_user("a@example.com"), content)
    assert reply.status_code == 400 and reply.json()["code"] == code and words in reply.text
    assert fake.messages == []


def test_a_card_refused_once_is_refused_every_time_and_a_good_one_is_taken_every_time(http, fake):
    """The fake remembers cards it has checked (the benchmark sends one card thousands of times): good ones only."""
    open_id = fake.add_user("a@example.com")
    bad, good = json.dumps(card(elements=[])), json.dumps(card())
    assert [send(http, fake, open_id, bad).status_code for _ in range(2)] == [400, 400]
    assert [send(http, fake, open_id, good).json()["code"] for _ in range(2)] == [0, 0]
    assert len(fake.messages) == 2


def test_send_takes_a_legacy_card_as_feishu_does(http, fake):
    """Card JSON 1.0 still works in Feishu, action and note included (the naive server sends one)."""
    legacy = {"config": {"wide_screen_mode": True}, "header": {"title": {"tag": "plain_text", "content": "1.0"}},
              "elements": [{"tag": "action", "actions": [{"tag": "button", "url": "https://x.example"}]}]}
    reply = send(http, fake, fake.add_user("a@example.com"), json.dumps(legacy))
    assert reply.json()["code"] == 0 and len(fake.messages) == 1


@pytest.mark.parametrize("params, body, code", [
    ({}, {}, 99992402), ({"receive_id_type": "phone"}, {}, 230001),
    ({"receive_id_type": "open_id"}, {"msg_type": "text"}, 230001),
    ({"receive_id_type": "open_id"}, {"uuid": "u" * 51}, 230001),
    ({"receive_id_type": "open_id"}, {"receive_id": "ou_nobody"}, 230001),
])
def test_send_refuses_bad_parameters(http, fake, params, body, code):
    reply = send(http, fake, **{"receive_id": fake.add_user("a@example.com"), **body}, params=params)
    assert reply.status_code == 400 and reply.json()["code"] == code and fake.messages == []


def test_good_2_0_cards_with_buttons_and_containers_are_accepted(http, fake):
    link = [{"type": "open_url", "default_url": "https://gitlab.example.com/a/b/-/compare/1...2"}]
    content = json.dumps(card(deep({"tag": "markdown", "content": "x"}), button(behaviors=link), {"tag": "hr"},
                              config={"update_multi": True, "summary": {"content": "推送"}}))
    assert send(http, fake, fake.add_user("a@example.com"), content).json()["code"] == 0


def test_content_over_30_kb_in_utf8_is_refused_though_short_in_characters(http, fake):
    content = json.dumps(card({"tag": "markdown", "content": "提交" * 5200}), ensure_ascii=False)
    assert len(content) < 30 * 1024 < len(content.encode("utf-8"))
    reply = send(http, fake, fake.add_user("a@example.com"), content)
    assert reply.status_code == 400 and reply.json()["code"] == 230025


def test_user_outside_the_availability_range_gets_230013(http, fake):
    reply = send(http, fake, fake.add_user("gone@example.com", available=False))
    assert reply.status_code == 400 and reply.json()["code"] == 230013 and fake.messages == []


def test_a_repeated_uuid_creates_nothing_new_within_the_hour(http, fake, clock):
    open_id = fake.add_user("a@example.com")
    first = send(http, fake, open_id, uuid="event-1:a").json()["data"]["message_id"]
    assert send(http, fake, open_id, uuid="event-1:a").json()["data"]["message_id"] == first
    assert len(fake.messages) == 1
    clock.now += 3601
    assert send(http, fake, open_id, uuid="event-1:a").json()["data"]["message_id"] != first


# Faults

def test_fail_next_answers_a_gateway_page_then_recovers(http, fake):
    open_id, headers = fake.add_user("a@example.com"), bearer(http, fake)
    fake.fail_next("send", status=502, times=2)
    for _ in range(2):
        reply = send(http, fake, open_id, headers=headers)
        assert reply.status_code == 502 and reply.headers["Content-Type"].startswith("text/html")
    assert send(http, fake, open_id, headers=headers).json()["code"] == 0
    assert len(fake.messages) == 1 and fake.refused == 2


def test_fail_next_with_a_code_and_headers(http, fake):
    headers = bearer(http, fake)
    fake.fail_next("send", status=429, code=99991400, msg="request trigger frequency limit",
                   headers={"x-ogw-ratelimit-reset": "3"})
    reply = send(http, fake, fake.add_user("a@example.com"), headers=headers)
    assert reply.status_code == 429 and reply.headers["x-ogw-ratelimit-reset"] == "3"
    assert reply.json() == {"code": 99991400, "msg": "request trigger frequency limit"}
    assert fake.rate_limited == 1 and fake.messages == []


def test_down_answers_503_and_creates_nothing_until_it_is_back(http, fake):
    open_id, headers = fake.add_user("a@example.com"), bearer(http, fake)
    fake.set_down(True)
    assert send(http, fake, open_id, headers=headers).status_code == 503 and fake.messages == []
    fake.set_down(False)
    assert send(http, fake, open_id, headers=headers).json()["code"] == 0


def test_a_hung_send_still_creates_the_message_after_the_client_gave_up(http, fake):
    open_id, headers = fake.add_user("a@example.com"), bearer(http, fake)
    fake.hang_sends(0.3)
    with pytest.raises(requests.ReadTimeout):
        send(http, fake, open_id, headers=headers, timeout=0.05)
    assert fake.messages == []
    assert wait_for(lambda: len(fake.messages) == 1)


def test_rtt_delays_every_api_answer(http, make_fake):
    fake = make_fake(rtt=0.05)
    started = time.perf_counter()
    issue(http, fake)
    assert time.perf_counter() - started >= 0.05


# Quotas

def test_more_than_5_sends_a_second_to_one_user_get_230020(http, make_fake, clock):
    fake = make_fake(quotas=True)
    open_id, headers = fake.add_user("a@example.com"), bearer(http, fake)
    codes = [send(http, fake, open_id, headers=headers).json()["code"] for _ in range(6)]
    assert codes == [0] * 5 + [230020]
    clock.now += 1
    assert send(http, fake, open_id, headers=headers).json()["code"] == 0
    assert fake.rate_limited == 1


def test_more_than_50_sends_a_second_get_429_with_the_gateway_headers(http, make_fake):
    fake = make_fake(quotas=True)
    users, headers = [fake.add_user(f"u{i}@example.com") for i in range(11)], bearer(http, fake)
    replies = [send(http, fake, users[i % 11], headers=headers) for i in range(51)]
    assert [r.status_code for r in replies] == [200] * 50 + [429]
    assert replies[-1].json() == {"code": 99991400, "msg": "request trigger frequency limit"}
    limited = replies[-1].headers
    assert (limited["x-ogw-ratelimit-limit"], limited["x-ogw-ratelimit-reset"]) == ("50", "1")


def test_rate_window_slides_and_says_how_long_until_a_slot_frees():
    window = RateWindow(1000, 60)
    for second in range(20):
        for _ in range(50):
            assert window.wait(second) == 0.0
            window.record(second)
    assert window.wait(20) == 40
    assert window.wait(59.5) == 0.5 and window.wait(60) == 0.0


# Group custom bots

def post(http, url, card_body=None, **extra) -> requests.Response:
    return http.post(url, json={"msg_type": "interactive", "card": card_body or card(), **extra}, timeout=5)


def test_signature_matches_the_documented_test_vector():
    assert gen_sign(SIGNED_AT, "demo") == "l1N0gAcBjdwBvGm1xMjOF0XSyaLRpR7tuO5dHfhAYc8="


def test_bot_post_is_accepted_and_recorded(http, fake):
    reply = post(http, fake.add_bot("hook-1"))
    assert reply.status_code == 200 and reply.json() == {
        "StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}
    assert [(m["token"], m["card"]) for m in fake.bot_messages] == [("hook-1", card())]


@pytest.mark.parametrize("fields, code", [
    ({"timestamp": str(SIGNED_AT), "sign": "l1N0gAcBjdwBvGm1xMjOF0XSyaLRpR7tuO5dHfhAYc8="}, 0),
    ({"timestamp": SIGNED_AT, "sign": "l1N0gAcBjdwBvGm1xMjOF0XSyaLRpR7tuO5dHfhAYc8="}, 0),
    ({"timestamp": str(SIGNED_AT), "sign": "bad"}, 19021), ({}, 19021),
    ({"timestamp": str(SIGNED_AT - 3600), "sign": gen_sign(SIGNED_AT - 3600, "demo")}, 19021),
])
def test_signed_bot_checks_timestamp_and_sign(http, fake, fields, code):
    reply = post(http, fake.add_bot("signed", secret="demo"), **fields)
    assert reply.status_code == 200 and reply.json()["code"] == code


@pytest.mark.parametrize("body, code", [
    ({"msg_type": "interactive", "card": card({"tag": "markdown", "content": "长" * 7000})}, 9499),
    ({"msg_type": "interactive", "content": json.dumps(card())}, 19002),
    ({"msg_type": "interactive", "card": card({"tag": "note", "elements": []})}, 230099),
])
def test_bot_refuses_bad_bodies_in_the_body_code(http, fake, body, code):
    reply = http.post(fake.add_bot("hook-1"), data=json.dumps(body, ensure_ascii=False).encode(),
                      headers={"Content-Type": "application/json"}, timeout=5)
    assert reply.status_code == 200 and reply.json()["code"] == code and fake.bot_messages == []


def test_unknown_bot_token_is_refused(http, fake):
    fake.add_bot("hook-1")
    assert post(http, fake.url + "/open-apis/bot/v2/hook/nope").json()["code"] == 19001


def test_bot_quota_answers_11232(http, make_fake, clock):
    url = make_fake(quotas=True).add_bot("hook-1")
    assert [post(http, url).json()["code"] for _ in range(6)] == [0] * 5 + [11232]


# Control over HTTP, bookkeeping, the server itself

def test_state_lists_every_card_and_the_counters(http, fake):
    send(http, fake, fake.add_user("a@example.com"), uuid="u-1")
    post(http, fake.add_bot("hook-1"))
    http.post(fake.url + "/open-apis/unknown", json={}, timeout=5)
    state = http.get(fake.url + "/_fake/state", timeout=5).json()
    assert [(m["to_email"], m["to_chat"], m["uuid"], m["card"]) for m in state["messages"]] == [
        ("a@example.com", None, "u-1", card()), (None, "hook-1", None, card())]
    assert state["counts"] == {"token": 1, "batch_get_id": 0, "send": 1, "bot": 1, "other": 1}
    assert (state["refused"], state["rate_limited"]) == (1, 0)
    assert [(r["kind"], r["status"], r["code"]) for r in fake.requests][-1] == ("other", 404, None)


def test_control_mirrors_the_methods(http, fake):
    control = lambda **command: http.post(fake.url + "/_fake/control", json=command, timeout=5)  # noqa: E731
    open_id = control(add_user={"email": "a@example.com"}).json()["open_id"]
    headers = bearer(http, fake)
    control(fail_next={"kind": "send", "status": 500})
    assert send(http, fake, open_id, headers=headers).status_code == 500
    control(down=True)
    assert send(http, fake, open_id, headers=headers).status_code == 503
    control(down=False, revoke_tokens=True)
    assert send(http, fake, open_id, headers=headers).json()["code"] == 99991663
    assert control(reset=True, rtt=0.0).json()["ok"] and fake.requests == []
    assert control(explode=True).status_code == 400


def test_accepted_sockets_have_tcp_nodelay_and_kept_alive_calls_are_quick(http, fake):
    issue(http, fake)
    [connection] = fake._server.connections
    assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    started = time.perf_counter()
    for _ in range(20):
        issue(http, fake)
    assert (time.perf_counter() - started) / 20 < 0.03  # Nagle against delayed ACK would cost ~40 ms each
    assert len(fake._server.connections) == 1  # one kept-alive connection served them all


def test_stop_cuts_kept_alive_connections(http, make_fake):
    fake = make_fake()
    issue(http, fake)
    fake.stop()
    with pytest.raises(requests.ConnectionError):
        issue(http, fake)


def test_cli_prints_its_url_and_serves(http, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "tests.fake_feishu", "--port", "0", "--rtt", "0"],
                               cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert http.get(url + "/_fake/state", timeout=5).json()["counts"]["send"] == 0
    finally:
        process.kill()
        process.wait()
