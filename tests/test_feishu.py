"""Feishu client: token cache and refresh, batch email lookup, card sends, error classification."""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Callable

import pytest
import requests
import responses
from responses import matchers, registries

from gitlab_feishu.feishu import NOT_CACHED, FeishuClient, FeishuError
from gitlab_feishu.pacing import MAX_HOLD

BASE = "http://127.0.0.1:9"
TOKEN_URL = f"{BASE}/open-apis/auth/v3/tenant_access_token/internal"
LOOKUP_URL = f"{BASE}/open-apis/contact/v3/users/batch_get_id"
SEND_URL = f"{BASE}/open-apis/im/v1/messages"
SECRET = "s3cret-app-secret"
CARD = json.dumps({"schema": "2.0", "body": {"elements": [{"tag": "markdown", "content": "野水发财 推送"}]}},
                  ensure_ascii=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock) -> FeishuClient:
    return FeishuClient(BASE, "cli_app", SECRET, clock=clock, open_id_ttl=3600, unknown_ttl=300)


def token_ok(token: str = "t-1", expire: int = 7200, **kwargs) -> responses.BaseResponse:
    return responses.post(TOKEN_URL, json={"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire},
                          **kwargs)


def send_ok(message_id: str = "om_1", **kwargs) -> responses.BaseResponse:
    return responses.post(SEND_URL, json={"code": 0, "msg": "success", "data": {"message_id": message_id}}, **kwargs)


def lookup_echo() -> responses.BaseResponse:
    """Feishu's batch_get_id: emails at known.example resolve, others come back without user_id."""
    def answer(request):
        emails = json.loads(request.body)["emails"]
        users = [{"email": e.lower(), "user_id": "ou_" + e.split("@")[0].lower()}
                 if e.lower().endswith("@known.example") else {"email": e} for e in emails]
        return 200, {}, json.dumps({"code": 0, "msg": "success", "data": {"user_list": users}})
    return responses.add_callback(responses.POST, LOOKUP_URL, callback=answer)


def feishu_error(code: int, msg: str = "failed", status: int = 400, headers: dict | None = None,
                 log_id: str = "") -> dict:
    body = {"code": code, "msg": msg}
    if log_id:
        body["error"] = {"log_id": log_id}
    return {"status": status, "json": body, "headers": headers or {}}


# --- tenant token ---------------------------------------------------------------------------------------------

@responses.activate
def test_token_is_fetched_with_app_credentials_and_reused(client):
    rsp = token_ok(match=[matchers.json_params_matcher({"app_id": "cli_app", "app_secret": SECRET})])
    assert client.tenant_token() == "t-1"
    assert client.tenant_token() == "t-1"
    assert rsp.call_count == 1


@pytest.mark.parametrize("expire, still_cached_at, refreshed_at", [
    (7200, 6899, 6901),   # refreshed 5 minutes before the end
    (1000, 699, 701),     # expire is the remaining lifetime, not always 7200
    (100, 49, 51),        # a nearly spent token: refreshed halfway
])
@responses.activate(registry=registries.OrderedRegistry)
def test_token_is_refreshed_shortly_before_its_remaining_lifetime_ends(client, clock, expire, still_cached_at,
                                                                       refreshed_at):
    first, second = token_ok("t-1", expire), token_ok("t-2")
    start = clock.now
    client.tenant_token()
    clock.now = start + still_cached_at
    assert client.tenant_token() == "t-1"
    clock.now = start + refreshed_at
    assert client.tenant_token() == "t-2"
    assert (first.call_count, second.call_count) == (1, 1)


@pytest.mark.parametrize("code", [10003, 10014, 10015, 99991543])
@responses.activate
def test_bad_credentials_name_the_code_and_the_settings(client, code):
    responses.post(TOKEN_URL, json={"code": code, "msg": "app secret invalid"})
    with pytest.raises(FeishuError) as caught:
        client.tenant_token()
    error = caught.value
    assert (error.code, error.retryable) == (code, False)
    assert str(code) in str(error) and "FEISHU_APP_ID" in str(error) and "FEISHU_APP_SECRET" in str(error)
    assert SECRET not in str(error)


@responses.activate
def test_token_server_error_is_retryable(client):
    responses.post(TOKEN_URL, status=503, body="upstream unavailable")
    with pytest.raises(FeishuError) as caught:
        client.tenant_token()
    assert caught.value.retryable and caught.value.http_status == 503


def at_once(count: int, call: Callable[[], object]) -> list:
    """What `call` returned, or the FeishuError it raised, in each of `count` threads started together."""
    threads_in, results, lock = threading.Barrier(count), [], threading.Lock()

    def run():
        threads_in.wait()
        try:
            result = call()
        except FeishuError as exc:
            result = exc
        with lock:
            results.append(result)
    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@responses.activate
def test_concurrent_cold_callers_share_one_token_request(client):
    def slow_token(request):
        threading.Event().wait(0.1)    # a slow answer, so the other threads pile up behind this request
        return 200, {}, json.dumps({"code": 0, "tenant_access_token": "t-1", "expire": 7200})
    rsp = responses.add_callback(responses.POST, TOKEN_URL, callback=slow_token)
    assert at_once(8, client.tenant_token) == ["t-1"] * 8
    assert rsp.call_count == 1


@pytest.mark.parametrize("status, body", [
    (429, {"code": 99991400, "msg": "request trigger frequency limit"}),
    (503, {"code": 1, "msg": "service unavailable"}),
])
@responses.activate
def test_callers_waiting_for_a_token_request_that_fails_share_its_error(client, status, body):
    """A token endpoint refusing for a quota was asked again by every thread queued behind the refused request."""
    def slow_refusal(request):
        threading.Event().wait(0.1)    # a slow answer, so the other threads pile up behind this request
        return status, {"x-ogw-ratelimit-reset": "3"}, json.dumps(body)
    rsp = responses.add_callback(responses.POST, TOKEN_URL, callback=slow_refusal)
    errors = at_once(8, client.tenant_token)
    assert rsp.call_count == 1 and [getattr(e, "code", e) for e in errors] == [body["code"]] * 8


@responses.activate(registry=registries.OrderedRegistry)
def test_a_waiting_caller_tries_itself_when_the_fetch_it_waited_for_ran_out_of_its_own_time(client):
    """A timeout is the fetching caller's deadline, not Feishu's answer: a caller with more time asks again."""
    def slow_timeout(request):
        threading.Event().wait(0.1)    # the other callers pile up behind this request
        raise requests.ReadTimeout("read timed out")
    responses.add_callback(responses.POST, TOKEN_URL, callback=slow_timeout)
    token_ok("t-2")
    results = at_once(4, client.tenant_token)
    assert sorted(r if isinstance(r, str) else f"retryable={r.retryable}" for r in results) == [
        "retryable=True", "t-2", "t-2", "t-2"]


@responses.activate(registry=registries.OrderedRegistry)
def test_a_token_quota_reset_is_believed_no_longer_than_a_minute(client, clock):
    responses.post(TOKEN_URL, status=429, headers={"x-ogw-ratelimit-reset": "3600"},
                   json={"code": 99991400, "msg": "request trigger frequency limit"})
    token_ok("t-2")
    with pytest.raises(FeishuError):
        client.tenant_token()
    clock.now += MAX_HOLD
    assert client.tenant_token() == "t-2"


@responses.activate(registry=registries.OrderedRegistry)
def test_a_rate_limited_token_request_is_not_repeated_before_feishus_reset(client, clock):
    refused = responses.post(TOKEN_URL, status=429, headers={"x-ogw-ratelimit-reset": "3"},
                             json={"code": 99991400, "msg": "request trigger frequency limit"})
    granted = token_ok("t-2")
    for _ in range(2):
        with pytest.raises(FeishuError) as caught:
            client.tenant_token()
    assert refused.call_count == 1 and caught.value.retry_after == pytest.approx(3.0)
    clock.now += 3
    assert client.tenant_token() == "t-2" and granted.call_count == 1


@pytest.mark.parametrize("code", [99991661, 99991663, 99991664, 99991668, 99991671, 99991677])
@responses.activate(registry=registries.OrderedRegistry)
def test_rejected_token_is_refreshed_once_and_the_call_retried(client, code):
    old = token_ok("t-old")
    rejected = responses.post(SEND_URL, **feishu_error(code, "Invalid access token for authorization"),
                              match=[matchers.header_matcher({"Authorization": "Bearer t-old"})])
    new = token_ok("t-new")
    sent = send_ok(match=[matchers.header_matcher({"Authorization": "Bearer t-new"})])
    assert client.send_card("ou_a", CARD, "uuid-1") == "om_1"
    assert [r.call_count for r in (old, rejected, new, sent)] == [1, 1, 1, 1]


@responses.activate(registry=registries.OrderedRegistry)
def test_token_rejected_twice_raises_without_a_third_try(client):
    for token in ("t-old", "t-new"):
        token_ok(token)
        responses.post(SEND_URL, **feishu_error(99991663, "Invalid access token for authorization"))
    with pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1")
    assert caught.value.code == 99991663
    assert "t-old" not in str(caught.value) and "t-new" not in str(caught.value)
    assert len(responses.calls) == 4


# --- email -> open_id -------------------------------------------------------------------------------------------

@responses.activate
def test_several_emails_are_resolved_in_one_call(client):
    token_ok()
    rsp = responses.post(LOOKUP_URL, json={"code": 0, "data": {"user_list": [
        {"email": "a@known.example", "user_id": "ou_a"}, {"email": "b@known.example", "user_id": "ou_b"}]}},
        match=[matchers.query_param_matcher({"user_id_type": "open_id"}),
               matchers.header_matcher({"Authorization": "Bearer t-1"}),
               matchers.json_params_matcher({"emails": ["a@known.example", "b@known.example"],
                                             "include_resigned": False})])
    assert client.resolve_open_ids(["a@known.example", "b@known.example"]) == {
        "a@known.example": "ou_a", "b@known.example": "ou_b"}
    assert rsp.call_count == 1


@responses.activate
def test_more_than_50_emails_are_looked_up_in_chunks_of_50(client):
    token_ok()
    rsp = lookup_echo()
    emails = [f"user{i}@known.example" for i in range(120)]
    result = client.resolve_open_ids(emails)
    assert rsp.call_count == 3
    assert [len(json.loads(call.request.body)["emails"]) for call in responses.calls[1:]] == [50, 50, 20]
    assert result["user119@known.example"] == "ou_user119"


@responses.activate
def test_results_map_by_email_case_insensitively_and_keep_the_callers_spelling(client):
    token_ok()
    lookup_echo()
    assert client.resolve_open_ids(["Zhang.San@Known.Example"]) == {"Zhang.San@Known.Example": "ou_zhang.san"}
    assert client.cached_open_id("zhang.san@known.example") == "ou_zhang.san"


@responses.activate
def test_cached_emails_make_no_call_at_all(client):
    token = token_ok()
    lookup = lookup_echo()
    client.resolve_open_ids(["a@known.example", "b@other.example"])
    assert client.resolve_open_ids(["b@other.example", "A@known.example"]) == {
        "b@other.example": None, "A@known.example": "ou_a"}
    assert client.resolve_open_ids([]) == {}
    assert (token.call_count, lookup.call_count) == (1, 1)


@responses.activate
def test_unknown_email_is_cached_briefly_then_looked_up_again(client, clock):
    token_ok()
    lookup = lookup_echo()
    assert client.resolve_open_ids(["nobody@other.example", "a@known.example"]) == {
        "nobody@other.example": None, "a@known.example": "ou_a"}
    clock.now += 299
    client.resolve_open_ids(["nobody@other.example", "a@known.example"])
    assert lookup.call_count == 1
    clock.now += 2
    client.resolve_open_ids(["nobody@other.example", "a@known.example"])
    assert lookup.call_count == 2
    assert json.loads(responses.calls[-1].request.body)["emails"] == ["nobody@other.example"]


@responses.activate
def test_cached_open_id_tells_known_unknown_and_not_cached_apart(client, clock):
    token_ok()
    lookup_echo()
    assert client.cached_open_id("a@known.example") is NOT_CACHED
    client.resolve_open_ids(["a@known.example", "nobody@other.example"])
    calls = len(responses.calls)
    assert client.cached_open_id("a@known.example") == "ou_a"
    assert client.cached_open_id("nobody@other.example") is None
    clock.now += 3601
    assert client.cached_open_id("a@known.example") is NOT_CACHED
    assert len(responses.calls) == calls


# --- sending --------------------------------------------------------------------------------------------------

@responses.activate
def test_send_posts_the_card_string_as_is_with_the_uuid_and_returns_message_id(client):
    token_ok()
    rsp = send_ok("om_42", match=[
        matchers.query_param_matcher({"receive_id_type": "open_id"}),
        matchers.header_matcher({"Authorization": "Bearer t-1", "Content-Type": "application/json; charset=utf-8"}),
        matchers.json_params_matcher({"receive_id": "ou_a", "msg_type": "interactive", "content": CARD,
                                      "uuid": "push-1-ou_a"})])
    assert client.send_card("ou_a", CARD, "push-1-ou_a") == "om_42"
    assert rsp.call_count == 1


@responses.activate
def test_chinese_travels_as_utf8_not_as_unicode_escapes(client):
    token_ok()
    send_ok()
    client.send_card("ou_a", CARD, "uuid-1")
    body = responses.calls[-1].request.body
    assert "野水发财".encode() in body and b"\\u" not in body


@responses.activate
def test_warm_path_makes_only_the_send_call(client):
    token_ok()
    lookup_echo()
    client.resolve_open_ids(["a@known.example"])
    before = len(responses.calls)
    send_ok()
    open_id = client.resolve_open_ids(["a@known.example"])["a@known.example"]
    client.send_card(open_id, CARD, "uuid-1")
    assert [call.request.url.split("?")[0] for call in responses.calls[before:]] == [SEND_URL]


# --- errors ----------------------------------------------------------------------------------------------------

SCOPE_MSG = ("Access denied. One of the following scopes is required: [contact:user.id:readonly]."
             "应用尚未开通所需的应用身份权限：[contact:user.id:readonly]")


@pytest.mark.parametrize("status, body, headers, retryable, retry_after, hint", [
    (400, {"code": 230013, "msg": "Bot has NO availability to this user."}, {}, False, None, "可用范围"),
    (400, {"code": 99991672, "msg": SCOPE_MSG}, {}, False, None, "add contact:user.id:readonly under 权限管理"),
    (400, {"code": 99991672, "msg": "Access denied. One of the following scopes is required: "
                                    "[im:message, im:message:send_as_bot]."},
     {}, False, None, "add im:message or im:message:send_as_bot under"),
    (400, {"code": 230006, "msg": "Bot ability is not activated."}, {}, False, None, "机器人"),
    (400, {"code": 230001, "msg": "ext=invalid receive_id"}, {}, False, None, "open_id"),
    (400, {"code": 230034, "msg": "receive_id invalid"}, {}, False, None, "open_id"),
    (400, {"code": 230099, "msg": "Failed to create card content, ext=ErrCode: 200621"}, {}, False, None, "card"),
    (400, {"code": 230025, "msg": "message content too long"}, {}, False, None, "30 KB"),
    (400, {"code": 230053, "msg": "user stopped bot messages"}, {}, False, None, "stopped receiving"),
    (400, {"code": 230029, "msg": "user resigned"}, {}, False, None, "left the company"),
    (400, {"code": 230035, "msg": "no permission"}, {}, False, None, "may not message"),
    (400, {"code": 230027, "msg": "lack of necessary permissions"}, {}, False, None, "permission"),
    (400, {"code": 230038, "msg": "cross tenant p2p"}, {}, False, None, "another Feishu organisation"),
    (400, {"code": 230028, "msg": "The messages do NOT pass the audit"}, {}, False, None, "data-loss prevention"),
    (400, {"code": 1234567, "msg": "something new"}, {}, False, None, "error code docs"),
    (400, {"code": 99992361, "msg": "open_id cross app"}, {}, False, None, "another Feishu app"),
    (400, {"code": 99991401, "msg": "ip 1.2.3.4 is denied by app setting"}, {}, False, None, "IP allow-list"),
    (400, {"code": 99991403, "msg": "This month's API call quota has been exceeded"}, {}, False, None, "monthly"),
    (400, {"code": 99991662, "msg": "app not in use"}, {}, False, None, "disabled"),
    (404, {"code": 99991201, "msg": "resource not find"}, {}, False, None, "FEISHU_BASE_URL"),
    (429, {"code": 99991400, "msg": "request trigger frequency limit"}, {"x-ogw-ratelimit-reset": "7"},
     True, 7.0, "rate limit"),
    (400, {"code": 99991400, "msg": "request trigger frequency limit"}, {"x-ogw-ratelimit-reset": "3"},
     True, 3.0, "rate limit"),
    (400, {"code": 230020, "msg": "This operation triggers the frequency limit."}, {}, True, 1.0, "5 per second"),
    (400, {"code": 230049, "msg": "message is being sent"}, {}, True, None, "same uuid"),
    (400, {"code": 18121, "msg": "same create request is being processed"}, {}, True, None, "same uuid"),
    (500, {"code": 1234567, "msg": "internal error"}, {}, True, None, "retry later"),
    (502, "<html>Bad Gateway</html>", {}, True, None, "retry later"),
    (429, "slow down", {"x-ogw-ratelimit-reset": "2"}, True, 2.0, "retry later"),
    (404, "<html>Not Found</html>", {}, False, None, "FEISHU_BASE_URL"),
    (200, "<html>captive portal</html>", {}, True, None, "retry later"),
    (200, {"code": 0, "msg": "success", "data": {}}, {}, True, None, "retry later"),
])
@responses.activate
def test_error_classification(client, status, body, headers, retryable, retry_after, hint):
    token_ok()
    kind = {"json": body} if isinstance(body, dict) else {"body": body}
    responses.post(SEND_URL, status=status, headers=headers, **kind)
    with pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1")
    error = caught.value
    assert (error.retryable, error.retry_after) == (retryable, retry_after)
    assert hint in str(error)
    if isinstance(body, dict) and body["code"]:
        assert error.code == body["code"] and f"Feishu {body['code']}: {body['msg']}" in str(error)


@pytest.mark.parametrize("status, body, rate_limited", [
    (429, {"code": 99991400, "msg": "request trigger frequency limit"}, True),
    (400, {"code": 99991400, "msg": "request trigger frequency limit"}, True),
    (400, {"code": 230020, "msg": "This operation triggers the frequency limit."}, True),
    (429, "slow down", True),
    (500, {"code": 1234567, "msg": "internal error"}, False),
    (502, "<html>Bad Gateway</html>", False),
    (400, {"code": 230013, "msg": "Bot has NO availability to this user."}, False),
])
@responses.activate
def test_rate_limit_refusals_say_so(client, status, body, rate_limited):
    """So that every send under that quota waits out the reset, not only the refused one."""
    token_ok()
    responses.post(SEND_URL, status=status, **({"json": body} if isinstance(body, dict) else {"body": body}))
    with pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1")
    assert caught.value.rate_limited is rate_limited


@responses.activate
def test_error_names_code_msg_log_id_and_hint_in_one_line_and_logs_it(client, caplog):
    token_ok()
    responses.post(SEND_URL, **feishu_error(230013, "Bot has NO availability to this user.", log_id="2024ABC"))
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu.feishu"), pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1")
    text = str(caught.value)
    assert text.startswith("sending the card: Feishu 230013: Bot has NO availability to this user. (log id 2024ABC): ")
    assert "\n" not in text
    assert text in caplog.text
    assert "t-1" not in caplog.text and SECRET not in caplog.text and "Bearer" not in caplog.text


@responses.activate
def test_an_empty_msg_leaves_no_dangling_colon(client):
    token_ok()
    responses.post(SEND_URL, **feishu_error(230013, "", log_id="2024ABC"))
    with pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1")
    assert str(caught.value).startswith("sending the card: Feishu 230013 (log id 2024ABC): ")


@responses.activate
def test_log_id_falls_back_to_the_response_header(client):
    token_ok()
    responses.post(SEND_URL, **feishu_error(230013, headers={"X-Tt-Logid": "2024HDR"}))
    with pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1")
    assert caught.value.log_id == "2024HDR"


@responses.activate
def test_missing_scope_without_a_list_names_both_scopes_the_service_needs(client):
    token_ok()
    responses.post(SEND_URL, **feishu_error(99991672, "Access denied."))
    with pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1")
    assert "contact:user.id:readonly" in str(caught.value) and "im:message:send_as_bot" in str(caught.value)


@pytest.mark.parametrize("failure, words", [
    (requests.exceptions.ReadTimeout("read timed out"), "same uuid"),
    (requests.exceptions.ConnectTimeout("connect timed out"), "ConnectTimeout"),
    (requests.exceptions.ConnectionError("connection refused"), "cannot reach Feishu"),
])
@responses.activate
def test_network_failures_are_retryable(client, failure, words):
    token_ok()
    responses.post(SEND_URL, body=failure)
    with pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1")
    assert caught.value.retryable and words in str(caught.value)


@responses.activate
def test_a_timed_out_token_fetch_does_not_talk_of_a_uuid(client):
    responses.post(TOKEN_URL, body=requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(FeishuError) as caught:
        client.tenant_token()
    assert caught.value.retryable and "ReadTimeout" in str(caught.value) and "uuid" not in str(caught.value)


@responses.activate
def test_log_level_debug_shows_each_call_with_its_status_time_and_log_id(client, clock, caplog):
    def slow_answer(request):
        clock.now += 0.042                 # a round trip the line must measure
        return 200, {"X-Tt-Logid": "2026abc"}, json.dumps({"code": 0, "data": {"message_id": "om_1"}})

    token_ok()
    responses.add_callback(responses.POST, SEND_URL, callback=slow_answer)
    with caplog.at_level(logging.DEBUG, logger="gitlab_feishu.feishu"):
        client.send_card("ou_a", CARD, "uuid-1")
    assert "sending the card: HTTP 200, code 0, 42 ms, log id 2026abc" in caplog.text


# --- deadline budget and session --------------------------------------------------------------------------------

@pytest.mark.parametrize("budget, timeout", [(None, (3.05, 10.0)), (5.0, (3.05, 5.0)), (2.0, (2.0, 2.0))])
@responses.activate
def test_timeouts_are_cut_to_the_budget(client, budget, timeout):
    expected = [matchers.request_kwargs_matcher({"timeout": timeout})]
    token, send = token_ok(match=expected), send_ok(match=expected)
    client.send_card("ou_a", CARD, "uuid-1", budget=budget)
    assert (token.call_count, send.call_count) == (1, 1)


@pytest.mark.parametrize("budget", [0, -1.5])
@responses.activate
def test_no_budget_left_raises_without_a_call(client, budget):
    with pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1", budget=budget)
    assert caught.value.retryable and "deadline" in str(caught.value)
    with pytest.raises(FeishuError):
        client.resolve_open_ids(["a@known.example"], budget=budget)
    assert len(responses.calls) == 0


@responses.activate
def test_budget_spent_on_the_token_leaves_none_for_the_send(client, clock):
    def token_then_time_passes(request):
        clock.now += 5
        return 200, {}, json.dumps({"code": 0, "tenant_access_token": "t-1", "expire": 7200})
    responses.add_callback(responses.POST, TOKEN_URL, callback=token_then_time_passes)
    send = send_ok()
    with pytest.raises(FeishuError) as caught:
        client.send_card("ou_a", CARD, "uuid-1", budget=4)
    assert caught.value.retryable and send.call_count == 0


def test_own_session_pools_64_connections_and_never_retries_by_itself():
    client = FeishuClient(BASE, "cli_app", SECRET)
    adapter = client._session.get_adapter(BASE)
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 64
    assert adapter.max_retries.total == 0
    assert SECRET not in repr(client)


# --- the cache shared with the other processes -----------------------------------------------------------------

@pytest.fixture
def shared(tmp_path, clock):
    from gitlab_feishu.shared_cache import SharedCache

    return SharedCache(tmp_path / "feishu_cache.sqlite3", clock=clock)


def sharing(clock, shared) -> FeishuClient:
    """Another process's client: its own memory, the same shared cache."""
    return FeishuClient(BASE, "cli_app", SECRET, clock=clock, open_id_ttl=3600, unknown_ttl=300, shared=shared)


@responses.activate
def test_a_process_that_never_called_feishu_starts_warm(clock, shared):
    token, lookup = token_ok(), lookup_echo()
    first, second = sharing(clock, shared), sharing(clock, shared)
    first.resolve_open_ids(["a@known.example", "ghost@else.example"])
    assert second.tenant_token() == "t-1"
    assert second.resolve_open_ids(["A@known.example", "ghost@else.example"]) == {
        "A@known.example": "ou_a", "ghost@else.example": None}
    assert token.call_count == 1 and lookup.call_count == 1


@responses.activate
def test_shared_answers_expire_like_the_process_own(clock, shared):
    token, lookup = token_ok(expire=7200), lookup_echo()
    sharing(clock, shared).resolve_open_ids(["a@known.example"])
    clock.now += 3601                  # past open_id_ttl; the token still has an hour
    later = sharing(clock, shared)
    later.resolve_open_ids(["a@known.example"])
    assert lookup.call_count == 2 and token.call_count == 1
    clock.now += 7200 - 3601 - 30      # 30 s left on the shared token: too little to start with
    sharing(clock, shared).tenant_token()
    assert token.call_count == 2


@responses.activate(registry=registries.OrderedRegistry)
def test_a_token_feishu_refuses_is_dropped_for_every_process(clock, shared):
    token_ok("t-old")
    responses.post(SEND_URL, **feishu_error(99991663, "Invalid access token"))
    token_ok("t-new")
    send_ok()
    sharing(clock, shared).send_card("ou_a", CARD, "u-1")
    assert sharing(clock, shared).tenant_token() == "t-new"


@responses.activate
def test_checking_credentials_asks_feishu_whatever_token_is_cached(clock, shared):
    rsp = token_ok()
    client = sharing(clock, shared)
    client.tenant_token()
    clock.now += 61
    client.check_credentials()
    assert rsp.call_count == 2


@responses.activate
def test_a_process_starting_within_a_minute_of_anothers_check_reuses_its_answer(clock, shared, monkeypatch):
    rsp = token_ok()
    assert sharing(clock, shared).check_credentials() == "tenant token fetched"
    clock.now += 59
    monkeypatch.setattr(os, "getpid", lambda: 1)       # the check runs in another process
    assert sharing(clock, shared).check_credentials() == "tenant token fetched by another process moments ago"
    FeishuClient(BASE, "cli_app", "another-secret", clock=clock, shared=shared).check_credentials()
    assert rsp.call_count == 2                  # the changed secret is checked for itself


@responses.activate
def test_shared_answers_belong_to_one_app(clock, shared):
    """open_ids differ per app: after FEISHU_APP_ID changes nothing cached for the old app is used."""
    token, lookup = token_ok(), lookup_echo()
    sharing(clock, shared).resolve_open_ids(["a@known.example"])
    other_app = FeishuClient(BASE, "cli_other", SECRET, clock=clock, shared=shared)
    other_app.resolve_open_ids(["a@known.example"])
    assert token.call_count == 2 and lookup.call_count == 2


@responses.activate
def test_rechecking_asks_again_about_an_email_cached_as_unknown(clock, shared):
    lookup = lookup_echo()
    token_ok()
    sharing(clock, shared).resolve_open_ids(["ghost@else.example"])
    again = sharing(clock, shared)
    assert again.resolve_open_ids(["ghost@else.example"]) == {"ghost@else.example": None}
    assert lookup.call_count == 1
    again.resolve_open_ids(["ghost@else.example"], recheck_unknown=True)
    sharing(clock, shared).resolve_open_ids(["ghost@else.example"])
    assert lookup.call_count == 2          # the recheck's answer is shared in turn


@responses.activate
def test_a_forgotten_open_id_is_looked_up_again_by_every_process(clock, shared):
    lookup = lookup_echo()
    token_ok()
    client = sharing(clock, shared)
    client.resolve_open_ids(["a@known.example"])
    client.forget_open_id("a@known.example")
    sharing(clock, shared).resolve_open_ids(["a@known.example"])
    assert lookup.call_count == 2


@responses.activate
@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_ca_bundle_requests_reads_from_the_environment_is_trusted(monkeypatch, clock, variable):
    # A network that re-signs HTTPS names its CA there, as for any program using requests.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv(variable, "/etc/ssl/company-ca.pem")
    token_ok()
    FeishuClient(BASE, "cli_app", SECRET, clock=clock).tenant_token()
    assert responses.calls[0].request.req_kwargs["verify"] == "/etc/ssl/company-ca.pem"


@responses.activate
def test_certificates_are_verified_without_a_ca_bundle(monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    token_ok()
    FeishuClient(BASE, "cli_app", SECRET).tenant_token()
    assert responses.calls[0].request.req_kwargs["verify"] is True


@responses.activate
@pytest.mark.parametrize("no_proxy, proxied", [("", True), ("127.0.0.1", False)],
                         ids=["through the proxy", "NO_PROXY names Feishu's host"])
def test_the_proxy_requests_reads_from_the_environment_is_used(monkeypatch, no_proxy, proxied):
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    token_ok()
    FeishuClient(BASE, "cli_app", SECRET).tenant_token()
    used = responses.calls[0].request.req_kwargs["proxies"].get("http")
    assert used == ("http://proxy.corp.example:3128" if proxied else None)


@responses.activate
def test_a_lookup_turn_is_taken_only_for_a_call_to_feishu(clock, shared):
    """The warm path in another worker: the shared cache answers, so no turn under the lookup quota is taken
    (a pacing write, and a turn out of 50/s, for no call); a call takes one turn per 50 emails."""
    token_ok()
    lookup = lookup_echo()
    turns = []
    first, second = sharing(clock, shared), sharing(clock, shared)
    first.resolve_open_ids(["a@known.example"], before_lookup=lambda: turns.append(1))
    assert len(turns) == 1
    second.resolve_open_ids(["a@known.example"], before_lookup=lambda: turns.append(1))
    assert len(turns) == 1 and lookup.call_count == 1
    first.resolve_open_ids([f"u{i}@known.example" for i in range(60)], before_lookup=lambda: turns.append(1))
    assert len(turns) == 3 and lookup.call_count == 3
