"""Answering GitLab in time when the process is saturated: cards beyond the inline slots go to the retry worker."""
from __future__ import annotations

import json

from gitlab_feishu.service import INLINE_SLOTS
from tests.conftest import gitlab_headers, load_payload


def post(app, payload_name="chinese_push_redacted.json"):
    body = json.dumps(load_payload(payload_name), ensure_ascii=False)
    return app.test_client().post("/gitlab-webhook", data=body, headers=gitlab_headers())


def take_every_inline_slot(app) -> None:
    """As if INLINE_SLOTS webhooks were waiting on a Feishu that is down or hanging."""
    slots = app.extensions["gitlab_feishu"].notifier.inline_slots
    for _ in range(INLINE_SLOTS):
        assert slots.acquire(blocking=False)


def test_a_webhook_beyond_the_inline_slots_is_answered_queued_without_calling_feishu(app, feishu):
    take_every_inline_slot(app)
    response = post(app)
    assert response.status_code == 200 and response.json["status"] == "queued"
    assert {d["result"] for d in response.json["deliveries"]} == {"queued"}
    assert feishu.requests == []


def test_its_cards_are_due_at_once_for_the_retry_worker_and_sent_once(app, feishu):
    take_every_inline_slot(app)
    post(app)
    assert app.extensions["gitlab_feishu"].worker.run_once() == 2     # unleased: no wait for a lease to end
    assert sorted(m["to_email"] for m in feishu.messages) == ["lisi@example.com", "wangwu@example.com"]
    assert app.extensions["gitlab_feishu"].outbox.counts() == {"queued": 0, "failed": 0}


def test_inline_slots_are_given_back_after_each_webhook(app, feishu):
    for _ in range(INLINE_SLOTS + 1):
        assert post(app).json["status"] == "sent"
