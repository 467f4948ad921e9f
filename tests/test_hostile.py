"""Hostile input: whatever a stranger sends, the answer is a 2xx or a clear 4xx, never a 5xx."""
from __future__ import annotations

import copy
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from gitlab_feishu.app import create_app
from gitlab_feishu.gitlab import MAX_BODY_BYTES
from tests.conftest import SECRET, gitlab_headers, load_payload

PAYLOADS = [load_payload(name) for name in (
    "push.json", "chinese_push.json", "chinese_push_redacted.json", "zulip_push_hook.json",
    "zulip_push_hook__remove_branch.json", "zulip_push_hook__push_local_branch_without_commits.json",
    "tag_push.json", "merge_request.json", "pipeline.json", "gitlab_api_doc_webhook_event_push.json",
    "chinese_tag_push.json", "chinese_merge_request.json", "chinese_pipeline_failed.json",
    "zulip_tag_push_hook__add_tag.json", "zulip_pipeline_hook__pipeline_succeeded.json")]
EVENTS = ["Push Hook", "Tag Push Hook", "Merge Request Hook", "Pipeline Hook", "System Hook", "Issue Hook", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
    | st.sampled_from(["", "[REDACTED]", "0" * 40, "refs/heads/主干", "<at id=all></at>", "**x**"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=60)


@st.composite
def mutated_payloads(draw):
    """A real GitLab payload with a few fields deleted or replaced by arbitrary JSON."""
    payload = copy.deepcopy(draw(st.sampled_from(PAYLOADS)))
    for _ in range(draw(st.integers(1, 4))):
        node = payload
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            child = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            if not isinstance(node[child], (dict, list)) or not node[child]:
                break
            node = node[child]
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()):
                del node[key]
            else:
                node[key] = draw(json_values)
    return payload


@pytest.fixture(scope="module")
def fake(fake):
    fake.set_auto_users(True)
    return fake


@pytest.fixture(scope="module")
def client(tmp_path_factory, fake):
    from gitlab_feishu.settings import Settings

    folder = tmp_path_factory.mktemp("hostile")
    (folder / "owners.json").write_text(json.dumps({"mike": "mike@example.com", "Y_野水发财": "zs@example.com",
                                                    "zulip": "z@example.com", "flight": "f@example.com",
                                                    "gitlab-test": "g@example.com", "jsmith": "j@example.com",
                                                    "my-awesome-project": "t@example.com"},
                                                   ensure_ascii=False), encoding="utf-8")
    (folder / "users.json").write_text(json.dumps({"root": "root@example.com", "user1": "u1@example.com",
                                                   "lisi": "lisi@example.com", "wangwu": "ou_abc"}), encoding="utf-8")
    settings = Settings(feishu_app_id="cli_test_app", feishu_app_secret="test-secret", feishu_base_url=fake.url,
                        gitlab_webhook_secret=SECRET, owners_file=folder / "owners.json",
                        users_file=folder / "users.json", data_dir=folder / "data",
                        log_dir=folder / "logs", delivery_deadline_seconds=2)
    app = create_app(settings, background=False)
    yield app.test_client()
    app.extensions["gitlab_feishu"].worker.stop()


fuzz = hypothesis_settings(max_examples=250, deadline=None, derandomize=True,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@fuzz
@given(payload=mutated_payloads(), event=st.sampled_from(EVENTS))
def test_mutated_payloads_never_make_a_5xx(client, payload, event):
    response = client.post("/gitlab-webhook", data=json.dumps(payload), headers=gitlab_headers(event))
    assert response.status_code == 200, response.text
    assert response.json["status"] in {"sent", "partial", "queued", "failed", "ignored"}
    assert "internal error" not in response.json.get("reason", "")


@fuzz
@given(body=json_values | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_random_bodies_never_make_a_5xx(client, body):
    data = body if isinstance(body, str) else json.dumps(body)
    response = client.post("/gitlab-webhook", data=data.encode("utf-8", "surrogatepass"), headers=gitlab_headers())
    assert response.status_code in (200, 400), response.text


@fuzz
@given(headers=st.dictionaries(st.sampled_from(["X-Gitlab-Event", "X-Gitlab-Token", "Idempotency-Key",
                                                "X-Gitlab-Event-UUID", "Content-Type", "User-Agent"]),
                               header_text, max_size=6))
def test_random_headers_never_make_a_5xx(client, headers):
    response = client.post("/gitlab-webhook", data=json.dumps(PAYLOADS[0]), headers=headers)
    assert response.status_code in (200, 401), response.text


@pytest.mark.parametrize("surrogate", [b"\\ud800", b"\xed\xa0\x80"], ids=["escaped", "raw"])
@pytest.mark.parametrize("field", ["object_kind", "path_with_namespace", "name", "user_name", "message"])
def test_a_lone_surrogate_anywhere_is_answered_not_an_internal_error(client, field, surrogate):
    """Valid in JSON (escaped, or as the bytes json.loads lets through), not in UTF-8."""
    body = json.dumps(PAYLOADS[0]).encode().replace(f'"{field}": "'.encode(), f'"{field}": "'.encode() + surrogate, 1)
    response = client.post("/gitlab-webhook", data=body, headers=gitlab_headers())
    assert response.status_code == 200 and "internal error" not in response.json.get("reason", "")


class CountingStream(io.RawIOBase):
    """A request body of `size` bytes that remembers how much of it was read."""

    def __init__(self, size: int):
        self.size, self.position, self.read_bytes = size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:      # the test client measures the body by seeking, without reading it
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: 0, 1: self.position, 2: self.size}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        n = max(min(len(buffer), self.size - self.position), 0)
        buffer[:n] = b" " * n
        self.position += n
        self.read_bytes += n
        return n


def test_declared_oversize_body_is_refused_unread(client):
    stream = CountingStream(MAX_BODY_BYTES + 1)
    response = client.post("/gitlab-webhook", input_stream=stream, headers=gitlab_headers(),
                           environ_overrides={"CONTENT_LENGTH": str(MAX_BODY_BYTES + 1)})
    assert response.status_code == 413 and stream.read_bytes == 0


def test_streamed_oversize_body_is_refused_at_the_limit(client):
    """A chunked body has no length up front: reading stops at the limit rather than at the end."""
    stream = CountingStream(MAX_BODY_BYTES * 2)
    response = client.post("/gitlab-webhook", input_stream=stream, headers=gitlab_headers(),
                           environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""})
    assert response.status_code == 413
    assert stream.read_bytes <= MAX_BODY_BYTES + 64 * 1024


class MalformedChunks(io.RawIOBase):
    """gunicorn's chunked body reader meeting a bad chunk: it raises its own parse error mid-read."""

    def __init__(self, error: Exception):
        self.error = error

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:      # the test client measures the body by seeking
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def readinto(self, buffer) -> int:
        raise self.error


@pytest.mark.parametrize("error", ["InvalidChunkSize", "ChunkMissingTerminator", "InvalidChunkExtension"])
def test_a_malformed_chunked_body_is_a_400_not_an_internal_error(client, error, caplog):
    """`Transfer-Encoding: chunked` with a chunk size of `zz` made gunicorn raise inside get_data(): a
    traceback in the log and "internal error" in the answer."""
    from gunicorn.http import errors
    exc = getattr(errors, error)(b"zz")
    response = client.post("/gitlab-webhook", input_stream=MalformedChunks(exc), headers=gitlab_headers(),
                           environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""})
    assert response.status_code == 400 and "chunked" in response.json["reason"]
    assert "Traceback" not in caplog.text and "unexpected error" not in caplog.text
