"""Routing through the app against the fake Feishu: group chats, quiet rules and CARD_LANG."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging

import pytest

from gitlab_feishu.app import create_app
from gitlab_feishu.chats import MAX_BODY_BYTES
from tests.conftest import gitlab_headers, load_payload

BOT_TOKEN = "grp1-0a1b2c3d-plain-token"
SIGNED_TOKEN = "sgn2-4e5f6a7b-signed-token"
BOT_SECRET = "bot-signing-secret"
PEOPLE = ("mike@example.com", "john@example.com", "lead@example.com", "zhangsan@example.com")


@pytest.fixture(scope="module")
def fake(fake):
    for email in PEOPLE:
        fake.add_user(email)
    return fake


@pytest.fixture
def bots(fake):
    fake.reset()
    return {"plain": fake.add_bot(BOT_TOKEN), "signed": fake.add_bot(SIGNED_TOKEN, BOT_SECRET)}


@pytest.fixture
def make_client(settings, fake, bots):
    """A test client over `owners` (written to owners.json) and settings changed as asked."""
    apps = []

    def make(owners: dict, **changes):
        settings.owners_file.write_text(json.dumps(owners, ensure_ascii=False), encoding="utf-8")
        app = create_app(dataclasses.replace(settings, feishu_base_url=fake.url, **changes), background=False)
        apps.append(app)
        return app.test_client()
    yield make
    for app in apps:
        if app.extensions["gitlab_feishu"].worker:
            app.extensions["gitlab_feishu"].worker.stop()


def post(client, payload: dict, **headers):
    return client.post("/gitlab-webhook", data=json.dumps(payload, ensure_ascii=False),
                       headers={**gitlab_headers(), **headers})


def push_payload(name: str = "push.json", *messages: str) -> dict:
    """A real push payload; with `messages`, its commits are replaced by ones carrying them."""
    payload = copy.deepcopy(load_payload(name))
    if messages:
        template = payload["commits"][0]
        payload["commits"] = [{**template, "id": f"{i:040x}", "message": m} for i, m in enumerate(messages, 1)]
        payload["total_commits_count"] = len(messages)
    return payload


def results(response) -> list[tuple[str, str]]:
    return [(d["to"], d["result"]) for d in response.json["deliveries"]]


# --- repeats ---------------------------------------------------------------------------------

def test_a_resend_after_an_owner_was_added_reaches_only_the_new_owner(make_client, fake):
    headers = gitlab_headers()
    first = post(make_client({"mike/diaspora": "mike@example.com"}), push_payload(), **headers)
    resent = post(make_client({"mike/diaspora": ["mike@example.com", "lead@example.com"]}), push_payload(), **headers)
    assert results(first) == [("mike@example.com", "sent")]
    assert results(resent) == [("mike@example.com", "sent"), ("lead@example.com", "sent")]
    assert "added since" in resent.json["reason"]
    assert [m["to_email"] for m in fake.messages] == ["mike@example.com", "lead@example.com"]


def test_a_resend_after_an_email_changed_case_makes_no_second_card(make_client, fake):
    headers = gitlab_headers()
    post(make_client({"mike/diaspora": "Mike@Example.com"}), push_payload(), **headers)
    resent = post(make_client({"mike/diaspora": "mike@example.com"}), push_payload(), **headers)
    assert "no new card" in resent.json["reason"] and len(fake.messages) == 1


# --- group chats ------------------------------------------------------------------------------

def test_a_push_reaches_the_owner_by_dm_and_the_group_by_its_bot(make_client, fake, bots):
    client = make_client({"mike/diaspora": {"owners": ["mike@example.com"], "chats": [bots["plain"]]}})
    response = post(client, push_payload())
    assert response.json["status"] == "sent"
    assert response.json["deliveries"] == [
        {"to": "mike@example.com", "rule": "exact: mike/diaspora", "result": "sent"},
        {"to": "chat:…/hook/grp1…", "rule": "exact: mike/diaspora", "result": "sent"}]
    [dm], [post_] = fake.messages, fake.bot_messages
    assert dm["to_email"] == "mike@example.com" and post_["token"] == BOT_TOKEN
    assert post_["card"]["schema"] == "2.0" and post_["body"]["msg_type"] == "interactive"


def test_a_signed_bot_is_posted_to_with_a_valid_sign(make_client, fake, bots):
    client = make_client({"diaspora": {"chats": [{"url": bots["signed"], "secret": BOT_SECRET}]}})
    assert results(post(client, push_payload())) == [("chat:…/hook/sgn2…", "sent")]
    [post_] = fake.bot_messages
    assert post_["token"] == SIGNED_TOKEN and post_["body"]["sign"] and post_["body"]["timestamp"]


def test_a_wrong_bot_secret_fails_for_good_with_a_hint_and_no_secret_shown(make_client, fake, bots, caplog):
    client = make_client({"diaspora": {"chats": [{"url": bots["signed"], "secret": "not-the-secret"}]}})
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        response = post(client, push_payload())
    [delivery] = response.json["deliveries"]
    assert response.json["status"] == "failed" and delivery["result"] == "failed"
    assert "19021" in delivery["error"] and '"secret"' in delivery["error"]
    for text in (response.text, caplog.text):
        assert "not-the-secret" not in text and SIGNED_TOKEN not in text
    assert fake.bot_messages == []


def test_a_rate_limited_bot_is_retried_inline(make_client, fake, bots):
    fake.fail_next("bot", status=200, code=11232, msg="frequency limited")
    client = make_client({"diaspora": {"chats": [bots["plain"]]}})
    assert results(post(client, push_payload())) == [("chat:…/hook/grp1…", "sent")]
    assert fake.calls("bot") == 2 and len(fake.bot_messages) == 1


def test_chat_urls_are_masked_in_the_response_and_the_logs(make_client, fake, bots, caplog):
    fake.set_down(True)
    client = make_client({"diaspora": {"chats": [bots["plain"]]}}, delivery_deadline_seconds=1)
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        response = post(client, push_payload())
    assert results(response) == [("chat:…/hook/grp1…", "queued")]
    assert "chat:…/hook/grp1…" in caplog.text
    assert BOT_TOKEN not in response.text and BOT_TOKEN not in caplog.text


def oversized_push() -> dict:
    """A push whose full card is over 20 KB: long escaped names and URLs just under the 2,048 kept."""
    payload = push_payload("push.json", *["<" * 100] * 6)
    base = "https://git.example.cn/" + "%E4%B8%AD" * 100
    payload["project"].update(web_url=base, name="<" * 100, path_with_namespace="big/" + "<" * 100)
    payload.update(user_name="<" * 100, ref="refs/heads/" + "支" * 120)
    for commit in payload["commits"]:
        commit.update(url=f"{base}/{'%E4%B8%AD' * 115}", author={"name": "<" * 100, "email": "a@example.com"})
    return payload


def test_the_chat_card_fits_the_bots_20_kb_while_the_dm_card_keeps_more(make_client, fake, bots):
    client = make_client({"big": {"owners": ["mike@example.com"], "chats": [bots["plain"]]}})
    response = post(client, oversized_push())
    assert response.json["status"] == "sent"       # the fake refuses a bot body over 20 KB with 9499
    [dm], [post_] = fake.messages, fake.bot_messages
    body = json.dumps(post_["body"], ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert len(body) <= MAX_BODY_BYTES < len(dm["content"].encode("utf-8"))


def markdown_texts(node) -> list[str]:
    """Every text Feishu parses as markdown (where `<at>` would mention someone) in a card."""
    if isinstance(node, list):
        return [text for item in node for text in markdown_texts(item)]
    if not isinstance(node, dict):
        return []
    own = [node["content"]] if node.get("tag") in ("markdown", "lark_md") else []
    return own + [text for value in node.values() for text in markdown_texts(value)]


def test_at_tags_in_user_text_never_ping_the_group(make_client, fake, bots):
    payload = push_payload("push.json", "<at id=all></at> 全体注意", '<at user_id="ou_123">张三</at> 看一下')
    payload["user_name"] = "<at id=all></at>"
    for commit in payload["commits"]:
        commit["author"] = {"name": "<at id=all></at>", "email": "x@example.com"}
    client = make_client({"diaspora": {"chats": [bots["plain"]]}})
    assert post(client, payload).json["status"] == "sent"
    texts = markdown_texts(fake.bot_messages[0]["card"])
    assert texts and not any("<at" in text for text in texts)
    # shown as text instead: the pusher, both commit messages and both authors
    assert sum(text.count("&#60;at") for text in texts) == 5


def test_a_repeated_delivery_posts_to_the_group_once(make_client, fake, bots):
    client = make_client({"diaspora": {"chats": [bots["plain"]]}})
    headers = gitlab_headers()
    for _ in range(3):
        post(client, push_payload(), **headers)
    assert len(fake.bot_messages) == 1


def test_dry_run_shows_chats_masked(make_client, fake, bots, caplog):
    client = make_client({"diaspora": {"chats": [bots["plain"]]}}, feishu_app_id="")
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        response = post(client, push_payload())
    assert results(response) == [("chat:…/hook/grp1…", "dry_run")]
    assert BOT_TOKEN not in caplog.text and fake.requests == []


def test_filters_decide_per_entry_and_an_excluded_event_is_ignored_with_the_reason(make_client, fake, bots):
    client = make_client({"diaspora": {"owners": ["mike@example.com"], "branches": ["release/*"]}})
    response = post(client, push_payload())
    assert response.json["status"] == "ignored"
    assert "exact: diaspora (branches: release/*) filtered out: branch master" in response.json["reason"]
    assert fake.requests == []


# --- quiet rules ------------------------------------------------------------------------------

OWNED = {"diaspora": ["mike@example.com", "john@example.com"]}


@pytest.mark.parametrize("messages", [
    ["fix typo [skip notify]"],
    ["[SKIP NOTIFY] bump", "docs [Skip Notify]"],
    ["修正错别字 [通知跳过]", "更新文档【通知跳过】"],
])
def test_a_push_whose_every_commit_asks_for_silence_notifies_nobody(make_client, fake, messages):
    response = post(make_client(OWNED), push_payload("push.json", *messages))
    assert response.status_code == 200 and response.json["status"] == "ignored"
    assert "[skip notify]" in response.json["reason"] and fake.requests == []


def test_one_commit_without_the_marker_keeps_the_push_loud(make_client, fake):
    response = post(make_client(OWNED), push_payload("push.json", "chore [skip notify]", "real change"))
    assert response.json["status"] == "sent"


@pytest.mark.parametrize("ignore", [frozenset({"jsmith"}), frozenset({"john@example.com"})])
def test_events_caused_by_an_ignored_pusher_notify_nobody(make_client, fake, ignore):
    response = post(make_client(OWNED, ignore_pushers=ignore), push_payload())
    assert response.json["status"] == "ignored" and "IGNORE_PUSHERS" in response.json["reason"]
    assert fake.requests == []


def test_by_default_the_pusher_is_notified_too(make_client, fake):
    assert results(post(make_client(OWNED), push_payload())) == [
        ("mike@example.com", "sent"), ("john@example.com", "sent")]


def test_notify_self_false_skips_the_pusher_and_says_why(make_client, fake):
    response = post(make_client(OWNED, notify_self=False), push_payload())
    assert response.json["status"] == "sent"
    assert response.json["deliveries"][1] == {"to": "john@example.com", "rule": "exact: diaspora",
                                              "result": "skipped", "error": "NOTIFY_SELF is false and they "
                                                                             "caused this event"}
    assert [m["to_email"] for m in fake.messages] == ["mike@example.com"]


def test_notify_self_false_knows_the_pusher_through_users_json_when_gitlab_hides_the_email(make_client, fake,
                                                                                         settings):
    payload = push_payload()
    payload.update(user_email="[REDACTED]", user_username="jsmith")
    settings.users_file.write_text(json.dumps({"jsmith": "john@example.com"}), encoding="utf-8")
    response = post(make_client(OWNED, notify_self=False), payload)
    assert results(response) == [("mike@example.com", "sent"), ("john@example.com", "skipped")]


def test_notify_self_false_with_only_the_pusher_owning_is_ignored(make_client, fake):
    response = post(make_client({"diaspora": "john@example.com"}, notify_self=False), push_payload())
    assert response.json["status"] == "ignored" and "NOTIFY_SELF" in response.json["reason"]
    assert results(response) == [("john@example.com", "skipped")] and fake.requests == []


def test_notify_self_false_never_skips_a_group_chat(make_client, fake, bots):
    client = make_client({"diaspora": {"owners": ["john@example.com"], "chats": [bots["plain"]]}},
                         notify_self=False)
    assert results(post(client, push_payload())) == [("chat:…/hook/grp1…", "sent"), ("john@example.com", "skipped")]


# --- CARD_LANG --------------------------------------------------------------------------------

@pytest.mark.parametrize("lang, title", [("zh", "推送到"), ("en", "pushed to")])
def test_card_lang_applies_to_dm_and_chat_cards(make_client, fake, bots, lang, title):
    client = make_client({"diaspora": {"owners": ["mike@example.com"], "chats": [bots["plain"]]}}, card_lang=lang)
    assert post(client, push_payload()).json["status"] == "sent"
    for card in (fake.messages[0]["card"], fake.bot_messages[0]["card"]):
        assert title in card["header"]["title"]["content"]
