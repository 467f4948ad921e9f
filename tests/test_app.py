"""POST /gitlab-webhook and GET /healthz through Flask's test client, against the fake Feishu."""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import sqlite3
import threading
import time

import pytest

from gitlab_feishu.app import create_app
from gitlab_feishu.outbox import LOCK_WAIT, Outbox
from tests.conftest import OWNER_OPEN_ID, OWNERS, SECRET, another_program_locks, gitlab_headers, load_payload


@pytest.fixture
def client(app):
    return app.test_client()


def post(client, payload, headers=None, **kwargs):
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload, ensure_ascii=False)
    return client.post("/gitlab-webhook", data=body, headers=headers or gitlab_headers(), **kwargs)


def test_push_sends_one_card_to_its_owner(client, feishu):
    response = post(client, load_payload("chinese_push.json"))
    assert response.status_code == 200
    assert response.json == {
        "status": "sent", "event": "push", "project": "grouptwogame/yeshui-client",
        "deliveries": [{"to": "zhangsan@example.com", "rule": "fuzzy: Y_野水发财", "result": "sent"}]}
    [message] = feishu.messages
    assert message["to_email"] == "zhangsan@example.com"
    assert message["card"]["schema"] == "2.0"


def test_every_owner_of_the_project_gets_a_card(client, feishu):
    response = post(client, load_payload("chinese_push_redacted.json"))
    assert [(d["to"], d["rule"], d["result"]) for d in response.json["deliveries"]] == [
        ("lisi@example.com", "exact: N_奶奶的小农院", "sent"), ("wangwu@example.com", "exact: N_奶奶的小农院", "sent")]
    assert sorted(m["to_email"] for m in feishu.messages) == ["lisi@example.com", "wangwu@example.com"]


def test_gitlabs_built_in_test_sample_is_named_as_such_on_recent_events(client, feishu):
    """Settings > Webhooks > Test on a project without commits sends GitLab's hard-coded sample project."""
    payload = load_payload("push.json")
    payload["project"].update(id=15, name="gitlab", path_with_namespace="gitlab/gitlab",
                              web_url="http://test.example.com/gitlab/gitlab")
    response = post(client, payload)
    assert response.json["status"] == "ignored" and "GitLab's built-in sample" in response.json["reason"]
    assert feishu.messages == []


def test_open_id_owner_is_sent_to_without_lookup(client, feishu):
    response = post(client, load_payload("push.json"))
    assert {d["to"]: d["result"] for d in response.json["deliveries"]} == {
        "mike@example.com": "sent", OWNER_OPEN_ID: "sent"}
    assert [r["kind"] for r in feishu.requests].count("batch_get_id") == 1     # for mike only


def test_warm_caches_make_one_feishu_call_per_owner(client, feishu):
    post(client, load_payload("chinese_push_redacted.json"))
    before = {kind: feishu.calls(kind) for kind in ("token", "batch_get_id", "send")}
    post(client, load_payload("chinese_push_redacted.json"))
    assert feishu.calls("token") == before["token"]
    assert feishu.calls("batch_get_id") == before["batch_get_id"]
    assert feishu.calls("send") == before["send"] + 2


def test_unknown_email_is_reported_and_nothing_is_sent_to_it(client, feishu, owners_file):
    owners_file.write_text(json.dumps({"mike/diaspora": ["mike@example.com", "ghost@example.com"]}), "utf-8")
    app = create_app(client.application.extensions["gitlab_feishu"].settings, background=False)
    response = post(app.test_client(), load_payload("push.json"))
    assert response.json["status"] == "partial"
    ghost = response.json["deliveries"][1]
    assert ghost["result"] == "failed" and "not found in Feishu" in ghost["error"]
    assert [m["to_email"] for m in feishu.messages] == ["mike@example.com"]



@pytest.mark.parametrize("fixture", ["chinese_push.json", "chinese_pipeline_failed.json"])
def test_an_outbox_another_program_keeps_locked_is_answered_in_time_with_what_to_do(settings, feishu, fixture):
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url), background=False)
    payload = load_payload(fixture)
    started = time.monotonic()
    with another_program_locks(settings.data_dir / "outbox.sqlite3"):
        response = post(app.test_client(), payload, gitlab_headers(f"{payload['object_kind'].title()} Hook"))
    assert time.monotonic() - started < LOCK_WAIT + 0.5         # GitLab gives up after 10 s
    assert response.status_code == 200 and response.json["status"] == "failed"
    assert "locked by another program" in response.json["reason"] and "resend" in response.json["reason"]
    assert all(d["result"] == "failed" for d in response.json["deliveries"])
    assert feishu.messages == []


@pytest.mark.parametrize("error", [sqlite3.OperationalError("database or disk is full"),
                                   sqlite3.DatabaseError("database disk image is malformed"),
                                   sqlite3.OperationalError("no such table: events")])    # the file deleted
def test_an_outbox_that_cannot_be_written_is_answered_with_the_key_to_resend(settings, feishu, monkeypatch,
                                                                            caplog, error):
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url), background=False)
    monkeypatch.setattr(Outbox, "begin_event", lambda self, *args, **kwargs: (_ for _ in ()).throw(error))
    headers = gitlab_headers(key="6a0bd3f2-outbox-error")
    response = post(app.test_client(), load_payload("chinese_push.json"), headers)
    assert response.status_code == 200 and response.json["status"] == "failed"
    assert str(error) in response.json["reason"] and "resend this delivery from GitLab" in response.json["reason"]
    assert response.json["project"] == "grouptwogame/yeshui-client"
    assert "idem:6a0bd3f2-outbox-error for grouptwogame/yeshui-client" in caplog.text and feishu.messages == []


def test_healthz_is_degraded_while_the_outbox_cannot_record_webhooks(settings, feishu, monkeypatch):
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url), background=False)
    client = app.test_client()
    assert client.get("/healthz").json["outbox_write_error"] is None
    full = sqlite3.OperationalError("database or disk is full")
    with monkeypatch.context() as patched:
        patched.setattr(Outbox, "begin_event", lambda self, *args, **kwargs: (_ for _ in ()).throw(full))
        post(client, load_payload("chinese_push.json"), gitlab_headers())
        health = client.get("/healthz").json
    assert health["status"] == "degraded" and "the disk is full" in health["outbox_write_error"]["error"]
    assert post(client, load_payload("chinese_push.json"), gitlab_headers()).json["status"] == "sent"
    health = client.get("/healthz").json
    assert health["status"] == "ok" and health["outbox_write_error"] is None


@pytest.mark.parametrize("token", [None, "", "wrong", SECRET + " ", SECRET.upper(), "tökén",
                                   "令牌".encode("utf-8").decode("latin-1")])
def test_missing_or_wrong_token_is_refused(client, feishu, token):
    response = post(client, load_payload("push.json"), gitlab_headers(token=token))
    assert response.status_code == 401
    assert response.json["status"] == "error" and "X-Gitlab-Token" in response.json["reason"]
    assert feishu.calls("send") == 0


@pytest.mark.parametrize("header", ["秘密token".encode("utf-8").decode("latin-1"),   # as a WSGI server hands it over
                                    "秘密token"])                                     # as text
def test_a_non_ascii_secret_matches_the_bytes_gitlab_sends(settings, feishu, header):
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url, gitlab_webhook_secret="秘密token"),
                     background=False)
    assert post(app.test_client(), load_payload("push.json"), gitlab_headers(token=header)).status_code == 200


@pytest.mark.parametrize("pacing", [True, False])
def test_pacing_turned_off_is_said_at_start(settings, caplog, pacing):
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        create_app(dataclasses.replace(settings, feishu_pacing=pacing), background=False)
    assert ("FEISHU_PACING=off" in caplog.text) is not pacing


def test_without_a_secret_any_token_is_accepted(settings, feishu, caplog):
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url, gitlab_webhook_secret=""),
                         background=False)
    assert "GITLAB_WEBHOOK_SECRET is not set" in caplog.text
    assert post(app.test_client(), load_payload("push.json"), gitlab_headers(token=None)).status_code == 200


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"\xff\xfe\xfa", b"[" * 100_000, b'{"a": 1e999999'])
def test_body_that_is_not_json_is_refused(client, body):
    response = post(client, body)
    assert response.status_code == 400 and response.json["reason"] == "body is not JSON"


class CutShortBody(io.RawIOBase):
    """The start of a body, then its end: the client went away, or went silent and the read was cut off
    (gthread_worker)."""

    def __init__(self, start: bytes, ending: Exception | None):
        self.rest, self.ending = start, ending

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.rest:
            size = min(len(buffer), len(self.rest))
            buffer[:size], self.rest = self.rest[:size], self.rest[size:]
            return size
        if self.ending:
            raise self.ending
        return 0


@pytest.mark.parametrize("ending", [None, ConnectionResetError(104, "the client sent nothing for 10 s")])
def test_body_cut_short_is_refused_saying_so(client, caplog, ending):
    # As gunicorn hands a body over: it ends the stream itself (wsgi.input_terminated).
    body = CutShortBody(b'{"object_kind": "push", "ref": "refs/heads/ma', ending)
    response = client.post("/gitlab-webhook", data=b"{}", headers=gitlab_headers(), environ_overrides={
        "wsgi.input": body, "wsgi.input_terminated": True, "CONTENT_LENGTH": "2000"})
    assert response.status_code == 400
    assert response.json["reason"].startswith("the body ended before its Content-Length")
    assert [r.levelname for r in caplog.records] == ["WARNING"] and not caplog.records[0].exc_info


def test_json_after_a_utf8_bom_is_accepted(client, feishu):
    body = b"\xef\xbb\xbf" + json.dumps(load_payload("chinese_push.json"), ensure_ascii=False).encode("utf-8")
    assert post(client, body).json["status"] == "sent"


def test_body_over_25_mb_is_refused_before_reading(client):
    response = client.post("/gitlab-webhook", data=b"{}", headers=gitlab_headers(),
                           environ_overrides={"CONTENT_LENGTH": str(25 * 1024 * 1024 + 1)})
    assert response.status_code == 413


def test_checks_run_in_order_size_token_json(client):
    too_big = {"CONTENT_LENGTH": str(26 * 1024 * 1024)}
    assert client.post("/gitlab-webhook", data=b"x", headers=gitlab_headers(token="bad"),
                       environ_overrides=too_big).status_code == 413
    assert post(client, b"not json", gitlab_headers(token="bad")).status_code == 401


@pytest.mark.parametrize(("payload", "event", "reason"), [
    ({"object_kind": "issue"}, "Issue Hook", "issue events are not handled"),
    ({"object_kind": "note"}, "Note Hook", "note events are not handled"),
    (load_payload("push.json"), "Issue Hook", "does not match"),
    ([1, 2, 3], "Push Hook", "not a JSON object"),
    ('"push"', "Push Hook", "not a JSON object"),
    ({}, "Push Hook", "no object_kind"),
    ({"object_kind": "push", "project": "nope"}, "Push Hook", "no project"),
    ({"object_kind": "push", "project": {"path_with_namespace": "mike/diaspora"}}, "Push Hook", "no ref"),
])
def test_unhandled_or_odd_payloads_are_ignored_with_a_reason(client, feishu, payload, event, reason):
    response = post(client, payload, gitlab_headers(event))
    assert response.status_code == 200
    assert response.json["status"] == "ignored" and reason in response.json["reason"]
    assert feishu.calls("send") == 0


def test_an_ignored_answer_names_the_event_and_project_the_payload_gives(client):
    payload = {"object_kind": "issue", "project": {"path_with_namespace": "mike/diaspora"}}
    response = post(client, payload, gitlab_headers("Issue Hook"))
    assert (response.json["event"], response.json["project"]) == ("issue", "mike/diaspora")


def test_push_to_a_project_nobody_owns_is_ignored(client, feishu):
    payload = load_payload("push.json")
    payload["project"].update(path_with_namespace="other/thing", name="Thing")
    response = post(client, payload)
    assert response.json["status"] == "ignored" and "other/thing" in response.json["reason"]


def test_system_hook_push_is_handled(client, feishu):
    assert post(client, load_payload("push.json"), gitlab_headers("System Hook")).json["status"] == "sent"


def test_system_hook_push_as_gitlab_documents_it_without_object_kind_is_handled(client, feishu):
    # doc/administration/system_hooks.md, "Push events": event_name "push" and no object_kind.
    payload = load_payload("push.json")
    del payload["object_kind"]
    response = post(client, payload, gitlab_headers("System Hook"))
    assert response.json["status"] == "sent" and response.json["event"] == "push"


def test_other_system_hook_events_are_ignored_by_name(client, feishu):
    payload = {"event_name": "repository_update", "project": {"path_with_namespace": "mike/diaspora"},
               "changes": [], "refs": ["refs/heads/master"]}
    response = post(client, payload, gitlab_headers("System Hook"))
    assert response.json["status"] == "ignored"
    assert response.json["reason"] == "repository_update events are not handled"
    assert response.json["event"] == "repository_update"
    assert feishu.calls("send") == 0


def test_event_kind_turned_off_is_ignored(settings, feishu):
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url, notify_events=frozenset({"pipeline"})),
                     background=False)
    response = post(app.test_client(), load_payload("push.json"))
    assert response.json["status"] == "ignored" and "NOTIFY_EVENTS" in response.json["reason"]


def test_dry_run_logs_the_card_and_sends_nothing(settings, feishu, caplog):
    app = create_app(dataclasses.replace(settings, feishu_app_id="", feishu_base_url=feishu.url), background=False)
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        response = post(app.test_client(), load_payload("chinese_push.json"))
    assert response.json["status"] == "dry_run"
    assert response.json["deliveries"] == [{"to": "zhangsan@example.com", "rule": "fuzzy: Y_野水发财",
                                            "result": "dry_run"}]
    assert "修复：登录界面在 1080p 下按钮错位" in caplog.text and '"schema":"2.0"' in caplog.text
    assert feishu.requests == []
    [summary] = [r.getMessage() for r in caplog.records if " key=" in r.getMessage()]
    assert summary.startswith("push grouptwogame/yeshui-client refs/heads/feature/登录界面 by 张三 (zhangsan) key=idem:")
    assert summary.endswith("-> zhangsan@example.com (fuzzy: Y_野水发财) dry_run")


@pytest.mark.parametrize("drop", [(), ("Idempotency-Key",), ("Idempotency-Key", "X-Gitlab-Event-UUID")])
def test_a_delivery_repeated_three_times_makes_one_card(client, feishu, drop):
    """GitLab's Resend keeps Idempotency-Key; without it the event UUID, then the payload, identify it."""
    headers = gitlab_headers()
    for name in drop:
        del headers[name]
    responses = [post(client, load_payload("push.json"), {**headers, "X-Gitlab-Webhook-UUID": str(i)})
                 for i in range(3)]
    assert [r.json["status"] for r in responses] == ["sent"] * 3
    assert "repeat" in responses[2].json["reason"]
    assert len(feishu.messages) == 2          # two owners, once each


def test_a_blank_idempotency_key_does_not_merge_different_events(client, feishu):
    first, second = load_payload("push.json"), load_payload("push.json")
    second["after"] = "f" * 40
    headers = {**gitlab_headers(), "Idempotency-Key": " "}
    del headers["X-Gitlab-Event-UUID"]
    assert [post(client, payload, headers).json["status"] for payload in (first, second)] == ["sent", "sent"]
    assert len(feishu.messages) == 4          # two owners, two events


def test_a_resend_while_the_card_waits_for_a_retry_says_it_is_still_in_progress(client, feishu):
    feishu.set_down(True)
    headers = gitlab_headers()
    assert post(client, load_payload("push.json"), headers).json["status"] == "queued"
    again = post(client, load_payload("push.json"), headers).json
    assert again["status"] == "queued" and again["reason"].startswith("repeat of a delivery still in progress")
    assert feishu.messages == []


def test_recursive_hooks_sharing_an_event_uuid_are_not_taken_for_repeats(client, feishu):
    """Before 17.4 there is no Idempotency-Key, and GitLab gives a hook's follow-up events its Event-UUID."""
    first, second = load_payload("push.json"), load_payload("push.json")
    second["after"] = "f" * 40
    headers = gitlab_headers()
    del headers["Idempotency-Key"]
    assert [post(client, payload, headers).json.get("reason") for payload in (first, second)] == [None, None]
    assert len(feishu.messages) == 4          # two owners, two events


def test_create_app_takes_the_settings_by_their_environment_names(settings):
    app = create_app({"OWNERS_FILE": str(settings.owners_file), "DATA_DIR": str(settings.data_dir),
                      "GITLAB_WEBHOOK_SECRET": SECRET}, background=False)
    health = app.test_client().get("/healthz").json
    assert health["mode"] == "dry-run" and health["owners"]["entries"] == len(OWNERS)


def test_healthz_reports_mode_owners_and_outbox_without_secrets(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json["mode"] == "live"
    assert response.json["owners"]["entries"] == len(OWNERS)
    assert response.json["outbox"] == {"queued": 0, "failed": 0}
    assert SECRET not in response.text and "test-secret" not in response.text


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nope", 404), ("GET", "/gitlab-webhook", 405),
                                                        ("PUT", "/gitlab-webhook", 405)])
def test_http_errors_are_json(client, method, path, status):
    response = client.open(path, method=method)
    assert response.status_code == status and response.json["status"] == "error"


@pytest.mark.parametrize("path", ["/", "/hooks/gitlab", "/gitlab-webhooks"])
def test_a_wrong_path_is_answered_with_the_right_one(client, path):
    response = client.post(path, data=b"{}", headers=gitlab_headers())
    assert response.status_code == 404 and "/gitlab-webhook (POST)" in response.json["reason"]


@pytest.mark.parametrize("path", ["/gitlab-webhook/", "//gitlab-webhook", "/gitlab-webhook//"])
def test_a_hook_url_with_a_trailing_or_doubled_slash_is_delivered(client, feishu, path):
    """Not werkzeug's 308 redirect to the merged path: GitLab counts a redirect as delivered and never follows it."""
    response = client.post("/", data=json.dumps(load_payload("chinese_push.json"), ensure_ascii=False),
                           headers=gitlab_headers(), environ_overrides={"PATH_INFO": path})
    assert response.status_code == 200 and response.json["status"] == "sent"
    assert len(feishu.messages) == 1


@pytest.mark.parametrize("path", ["/gitlab-webhook", "/gitlab-webhook/"])
def test_a_bug_is_answered_200_with_a_reason_so_gitlab_keeps_the_hook(client, monkeypatch, caplog, path):
    notifier = client.application.extensions["gitlab_feishu"].notifier
    monkeypatch.setattr(notifier, "notify", lambda *args: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="gitlab_feishu"):
        response = client.post(path, data=json.dumps(load_payload("push.json")), headers=gitlab_headers())
    assert response.status_code == 200
    assert response.json == {"status": "failed", "reason": "internal error; see the service log", "deliveries": []}
    assert "ZeroDivisionError" in caplog.text


@pytest.mark.parametrize(("request_kwargs", "expected"), [
    ({"path": "/gitlab-webhook", "method": "POST", "data": b"not json"}, "POST /gitlab-webhook from 127.0.0.1: 400 "),
    ({"path": "/gitlab-webhook", "method": "POST", "data": b"{}",
      "environ_overrides": {"CONTENT_LENGTH": str(26 * 1024 * 1024)}}, "POST /gitlab-webhook from 127.0.0.1: 413 "),
    ({"path": "/", "method": "POST", "data": b"{}"}, "POST / from 127.0.0.1: 404 "),     # the hook's URL lacks the path
    ({"path": "/gitlab-webhook", "method": "GET"}, "GET /gitlab-webhook from 127.0.0.1: 405 "),
    ({"path": "/gitlab-webhook", "method": "POST", "data": b"{}", "token": "wrong"}, "missing or wrong X-Gitlab-Token"),
])
def test_every_refused_request_makes_one_warning_line(client, caplog, request_kwargs, expected):
    """The service's own log shows a misconfigured hook, whatever serves it (waitress keeps no access log)."""
    request_kwargs = dict(request_kwargs)
    headers = gitlab_headers(token=request_kwargs.pop("token", SECRET))
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        response = client.open(headers=headers, **request_kwargs)
    assert response.status_code >= 400
    [line] = [record.getMessage() for record in caplog.records]
    assert expected in line


def test_healthz_makes_no_log_line(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="gitlab_feishu"):
        assert client.get("/healthz").status_code == 200
    assert caplog.records == []


@pytest.mark.parametrize(("fixture", "slow"), [
    ("chinese_push.json", "send"),                  # one owner: the card's answer
    ("chinese_push_redacted.json", "batch_get_id"),  # two owners: the email lookup they wait for
])
def test_a_feishu_answer_trickling_in_is_cut_off_at_the_deadline(settings, feishu, fixture, slow):
    # Each piece of the answer arrives well within any socket timeout; only the whole takes too long.
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url, delivery_deadline_seconds=1),
                     background=False)
    feishu.trickle(slow, 3.0)
    started = time.monotonic()
    response = post(app.test_client(), load_payload(fixture))
    assert time.monotonic() - started < 1.5
    assert response.status_code == 200 and response.json["status"] == "queued"
    assert all(d["result"] == "queued" for d in response.json["deliveries"])


@pytest.mark.parametrize("feishu_down, pushes", [(False, 7), (True, 1)])
def test_an_injected_clock_without_sleep_never_hangs_a_webhook(settings, feishu, feishu_down, pushes):
    """A test's own clock may not move by itself: every wait is then bounded by the sleeps it adds up (a sixth
    card to one person within the second, or a sixth attempt, waits for a turn under Feishu's quota)."""
    frozen = 1_800_000_000.0
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url, delivery_deadline_seconds=2.0),
                     clock=lambda: frozen, background=False)
    client = app.test_client()
    if feishu_down:
        feishu.fail_next("send", status=503, times=100)
    answers: list[int] = []
    worker = threading.Thread(target=lambda: answers.extend(post(client, load_payload("chinese_push.json")).status_code
                                                            for _ in range(pushes)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    app.extensions["gitlab_feishu"].worker.stop()
    assert not worker.is_alive() and answers == [200] * pushes


@pytest.mark.parametrize("database", ["pacing.sqlite3", "feishu_cache.sqlite3"])
def test_another_file_in_data_dir_another_program_keeps_locked_delays_no_card(settings, feishu, database):
    """Only the outbox holds what must not be lost; the pacing log and the shared cache are passed over."""
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url), background=False)
    started = time.monotonic()
    with another_program_locks(settings.data_dir / database):
        response = post(app.test_client(), load_payload("chinese_push.json"))
    app.extensions["gitlab_feishu"].worker.stop()
    assert response.json["status"] == "sent" and len(feishu.messages) == 1
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("database, table", [("pacing.sqlite3", "sends"), ("feishu_cache.sqlite3", "cache")])
def test_a_helper_database_another_program_locked_at_start_up_is_used_once_it_is_free(settings, feishu, database,
                                                                                      table):
    """Its tables could not be made at start-up: the first use after the lock is gone makes them."""
    settings.data_dir.mkdir(parents=True)
    with another_program_locks(settings.data_dir / database):
        app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url), background=False)
    response = post(app.test_client(), load_payload("chinese_push.json"))
    app.extensions["gitlab_feishu"].worker.stop()
    assert response.json["status"] == "sent"
    with sqlite3.connect(settings.data_dir / database) as db:
        assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] > 0


@pytest.mark.parametrize("database", ["pacing.sqlite3", "feishu_cache.sqlite3"])
def test_a_damaged_helper_database_delays_no_card_and_is_named_once(settings, feishu, caplog, database):
    """The pacing log and the shared cache hold nothing that must be kept: without them cards still go."""
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / database).write_bytes(b"not a database, " * 512)
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url), background=False)
    answers = [post(app.test_client(), load_payload("chinese_push.json")).json["status"] for _ in range(2)]
    app.extensions["gitlab_feishu"].worker.stop()
    assert answers == ["sent", "sent"] and len(feishu.messages) == 2
    named = [r.getMessage() for r in caplog.records if database in r.getMessage()]
    assert len(named) == 1 and "delete it" in named[0]


def test_healthz_says_degraded_not_500_when_the_outbox_cannot_be_read(client, monkeypatch):
    outbox = client.application.extensions["gitlab_feishu"].outbox

    def damaged():
        raise sqlite3.DatabaseError("file is not a database")
    monkeypatch.setattr(outbox, "counts", damaged)
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json["status"] == "degraded"
    assert "outbox.sqlite3 cannot be read (file is not a database" in response.json["outbox_write_error"]["error"]
