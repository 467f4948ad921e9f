"""Signed webhooks (GitLab 19, Standard Webhooks): the verification, the token format, and the HTTP contract."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from gitlab_feishu.app import create_app
from gitlab_feishu.gitlab import SIGNATURE_TOLERANCE, signature_problem, signing_key
from gitlab_feishu.settings import ConfigError, Settings
from tests.conftest import SECRET, add_owners, gitlab_headers, load_payload

# The test vector of the standardwebhooks package (libraries/python/tests/test_webhooks.py, MIT):
# its Webhook.sign() gives SIGNATURE for these inputs.
TOKEN = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
GITLAB_TOKEN = "whsec_" + base64.b64encode(bytes(range(32))).decode()   # GitLab makes 32-byte keys


def sign(token: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """Standard Webhooks' v1 signature, written out independently of the code under test."""
    key = base64.b64decode(token.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(msg_id=MSG_ID, timestamp=TIMESTAMP, signature=SIGNATURE) -> dict:
    found = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}
    return {name: value for name, value in found.items() if value is not None}


# --- the verification, against the standardwebhooks package's own cases -----------------------

def test_the_packages_test_vector_verifies():
    assert sign(TOKEN, MSG_ID, TIMESTAMP, BODY) == SIGNATURE
    assert signature_problem(TOKEN, headers(), BODY, now=TIMESTAMP) is None


@pytest.mark.parametrize("changes", [
    {"msg_id": None},                                                        # missing webhook-id
    {"timestamp": None},                                                     # missing webhook-timestamp
    {"timestamp": "hello"},                                                  # a timestamp that is no number
    {"signature": None},                                                     # missing webhook-signature
    {"signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="},       # one character off
])
def test_the_packages_failure_cases_fail(changes):
    assert signature_problem(TOKEN, headers(**changes), BODY, now=TIMESTAMP)


@pytest.mark.parametrize("skew, valid", [
    (0, True), (SIGNATURE_TOLERANCE, True), (-SIGNATURE_TOLERANCE, True),
    (SIGNATURE_TOLERANCE + 1, False),          # too old
    (-SIGNATURE_TOLERANCE - 1, False),         # too new
    (86_400, False), (-86_400, False),
])
def test_timestamp_must_be_within_five_minutes_either_way(skew, valid):
    assert (signature_problem(TOKEN, headers(), BODY, now=TIMESTAMP + skew) is None) is valid


def test_any_of_several_signatures_may_match():
    several = " ".join(["v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                        "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=", SIGNATURE,
                        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="])
    assert signature_problem(TOKEN, headers(signature=several), BODY, now=TIMESTAMP) is None


def test_header_names_are_case_insensitive():
    shouted = {name.title(): value for name, value in headers().items()}
    assert signature_problem(TOKEN, shouted, BODY, now=TIMESTAMP) is None


@pytest.mark.parametrize("what, token, hdrs, body", [
    ("body changed by a byte", TOKEN, headers(), b'{"test": 2432232315}'),
    ("body re-serialized", TOKEN, headers(), json.dumps(json.loads(BODY)).encode().replace(b" ", b"")),
    ("another webhook-id", TOKEN, headers(msg_id="msg_other"), BODY),
    ("another timestamp, same signature", TOKEN, headers(timestamp=TIMESTAMP + 1), BODY),
    ("timestamp as a float", TOKEN, headers(timestamp=f"{TIMESTAMP}.0"), BODY),
    ("negative timestamp", TOKEN, headers(timestamp=-TIMESTAMP), BODY),
    ("another key", GITLAB_TOKEN, headers(), BODY),
    ("version v2 only", TOKEN, headers(signature="v2," + SIGNATURE[3:]), BODY),
    ("no version", TOKEN, headers(signature=SIGNATURE[3:]), BODY),
    ("empty v1", TOKEN, headers(signature="v1,"), BODY),
    ("not base64", TOKEN, headers(signature="v1,*not base64*"), BODY),
    ("truncated", TOKEN, headers(signature=SIGNATURE[:-4]), BODY),
    ("the old X-Gitlab-Token style", TOKEN, {"X-Gitlab-Token": TOKEN}, BODY),
    ("non-ASCII id", TOKEN, headers(msg_id="消息"), BODY),
])
def test_bad_signatures_are_refused(what, token, hdrs, body):
    assert signature_problem(token, hdrs, body, now=TIMESTAMP)


@hypothesis_settings(max_examples=300, deadline=None, derandomize=True)
@given(values=st.lists(st.text(st.characters(min_codepoint=1, max_codepoint=0x2FFF), max_size=40) |
                       st.sampled_from(["v1,", SIGNATURE, str(TIMESTAMP), "１６１４２６５３３０", "²", " v1,="]),
                       min_size=3, max_size=3))
def test_any_header_values_give_an_answer_never_an_exception(values):
    hdrs = dict(zip(("webhook-id", "webhook-timestamp", "webhook-signature"), values))
    problem = signature_problem(TOKEN, hdrs, BODY, now=TIMESTAMP)
    assert problem is None or isinstance(problem, str)


def test_a_gitlab_style_key_signs_and_verifies_the_raw_body():
    body = json.dumps(load_payload("chinese_push.json"), ensure_ascii=False, indent=1).encode("utf-8")
    signature = sign(GITLAB_TOKEN, "b2a1c4e6-idem", 1_800_000_000, body)
    assert signature_problem(GITLAB_TOKEN, headers("b2a1c4e6-idem", 1_800_000_000, signature), body,
                           now=1_800_000_042) is None


@pytest.mark.parametrize("hdrs, says", [
    ({}, "no webhook-signature header: give the hook a Signing token"),
    (headers(timestamp=TIMESTAMP - 400), "400 s behind this server's clock"),
    (headers(timestamp=TIMESTAMP + 400), "400 s ahead of this server's clock"),
    (headers(signature="v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="), "no webhook-signature matches"),
    (headers(msg_id=None), "without a valid webhook-id"),
])
def test_a_refusal_says_which_set_up_mistake_it_is(hdrs, says):
    assert says in signature_problem(TOKEN, hdrs, BODY, now=TIMESTAMP)


# --- the token format ---------------------------------------------------------------------------

@pytest.mark.parametrize("token, key_bytes", [
    (TOKEN, 24), (GITLAB_TOKEN, 32), (GITLAB_TOKEN.rstrip("="), 32),      # unpadded base64 is fine
    ("whsec_" + base64.b64encode(b"short").decode(), 5),                  # any non-empty key, as the
    ("whsec_" + base64.b64encode(b"k" * 65).decode(), 65),                # standardwebhooks library reads it
])
def test_signing_tokens_are_read_as_standard_webhooks_reads_them(token, key_bytes):
    assert len(signing_key(token)) == key_bytes


@pytest.mark.parametrize("token, words", [
    (GITLAB_TOKEN.removeprefix("whsec_"), "start with whsec_"),
    ("s3cret", "start with whsec_"),                                    # the Secret token, pasted here
    ("whsec_", "empty"),
    ("whsec_not*base64!", "not base64"),
])
def test_malformed_signing_tokens_are_refused(token, words):
    with pytest.raises(ValueError, match=words):
        signing_key(token)


def test_settings_refuse_a_malformed_token_without_echoing_it():
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"GITLAB_SIGNING_TOKEN": "whsec_c2VjcmV0*LXZhbHVl"}, env_file=None)
    assert "GITLAB_SIGNING_TOKEN" in str(raised.value) and "c2VjcmV0" not in str(raised.value)
    assert Settings.from_env({"GITLAB_SIGNING_TOKEN": GITLAB_TOKEN}, env_file=None).gitlab_signing_token \
        == GITLAB_TOKEN


# --- through the app ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake(fake):
    add_owners(fake)
    return fake


@pytest.fixture
def make_client(settings, fake):
    apps = []

    def make(**changes):
        fake.reset()
        app = create_app(dataclasses.replace(settings, feishu_base_url=fake.url, **changes), background=False)
        apps.append(app)
        return app.test_client()
    yield make
    for app in apps:
        app.extensions["gitlab_feishu"].worker.stop()


def signed(body: bytes, token: str = GITLAB_TOKEN, *, skew: int = 0, secret: str | None = None) -> dict:
    """GitLab 19's headers for `body`: webhook-id is the Idempotency-Key; `skew` seconds ago."""
    hdrs = gitlab_headers(token=secret)
    timestamp = int(time.time()) - skew
    hdrs.update(headers(hdrs["Idempotency-Key"], timestamp, sign(token, hdrs["Idempotency-Key"], timestamp, body)))
    return hdrs


def post(client, body: bytes, hdrs: dict):
    return client.post("/gitlab-webhook", data=body, headers=hdrs)


BODY_PUSH = json.dumps(load_payload("chinese_push.json"), ensure_ascii=False).encode("utf-8")


def test_a_signed_delivery_is_handled(make_client, fake):
    client = make_client(gitlab_signing_token=GITLAB_TOKEN, gitlab_webhook_secret="")
    response = post(client, BODY_PUSH, signed(BODY_PUSH))
    assert response.status_code == 200 and response.json["status"] == "sent"
    assert len(fake.messages) == 1


SHORT_KEY_TOKEN = "whsec_" + base64.b64encode(b"sixteen byte key").decode()


@pytest.mark.parametrize("body, status", [(BODY_PUSH, 200), (BODY_PUSH + b" ", 401)])
def test_a_short_signing_key_verifies_like_any_other(make_client, body, status):
    client = make_client(gitlab_signing_token=SHORT_KEY_TOKEN, gitlab_webhook_secret="")
    assert post(client, body, signed(BODY_PUSH, SHORT_KEY_TOKEN)).status_code == status


@pytest.mark.parametrize("what, hdrs", [
    ("unsigned", gitlab_headers(token=None)),
    ("stale", signed(BODY_PUSH, skew=SIGNATURE_TOLERANCE + 60)),
    ("from the future", signed(BODY_PUSH, skew=-SIGNATURE_TOLERANCE - 60)),
    ("signed with another key", signed(BODY_PUSH, TOKEN)),
    ("signature of another body", signed(BODY_PUSH + b" ")),
    ("a timestamp too long for a float", {**signed(BODY_PUSH), "webhook-timestamp": "9" * 400}),
    ("a timestamp too long for int()", {**signed(BODY_PUSH), "webhook-timestamp": "9" * 5000}),
])
def test_with_a_signing_token_a_bad_signature_is_refused_and_nothing_sent(make_client, fake, what, hdrs):
    client = make_client(gitlab_signing_token=GITLAB_TOKEN, gitlab_webhook_secret="")
    response = post(client, BODY_PUSH, {k: v for k, v in hdrs.items() if k != "X-Gitlab-Token"})
    assert response.status_code == 401 and response.json["status"] == "error"
    assert "webhook-signature" in response.json["reason"]
    assert fake.requests == []


@pytest.mark.parametrize("token_header, signature_ok, status", [
    (SECRET, True, 200), ("wrong", True, 401), (None, True, 401), (SECRET, False, 401),
])
def test_with_both_set_the_token_and_the_signature_are_checked(make_client, token_header, signature_ok, status):
    client = make_client(gitlab_signing_token=GITLAB_TOKEN)
    hdrs = signed(BODY_PUSH if signature_ok else b"{}", secret=token_header)
    assert post(client, BODY_PUSH, hdrs).status_code == status


def test_without_a_signing_token_signatures_are_not_looked_at(make_client):
    client = make_client()
    hdrs = {**gitlab_headers(), "webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,bogus"}
    assert post(client, BODY_PUSH, hdrs).status_code == 200


def test_checks_run_in_order_size_token_signature_json(make_client):
    client = make_client(gitlab_signing_token=GITLAB_TOKEN)
    too_big = {"CONTENT_LENGTH": str(26 * 1024 * 1024)}
    assert client.post("/gitlab-webhook", data=b"x", headers=gitlab_headers(token="bad"),
                       environ_overrides=too_big).status_code == 413
    assert post(client, b"not json", signed(b"not json", secret="bad")).status_code == 401
    assert post(client, b"not json", signed(b"other", secret=SECRET)).status_code == 401
    assert post(client, b"not json", signed(b"not json", secret=SECRET)).status_code == 400
