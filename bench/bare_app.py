"""The stack alone, for the benchmark: a Flask app that makes the one Feishu call a webhook needs, nothing else.

bench/bench.py serves it with this service's own command and settings
(`gunicorn -c gunicorn.conf.py bench.bare_app:app`), so its rate is what Flask,
gunicorn and requests reach on this machine before any of the service's own work
(verifying, parsing, matching, rendering, the outbox, the log line). It sends the
card the service renders for the benchmark's push, to the fake Feishu.
"""
import json
import os
import uuid

from flask import Flask, request

from gitlab_feishu.feishu import _pooled_session

BASE_URL = os.environ["FEISHU_BASE_URL"]
CARD = os.environ["BARE_APP_CARD"]
TIMEOUT = 5

session = _pooled_session(BASE_URL)     # the service's own: pooled, no proxy lookups per call
token = session.post(f"{BASE_URL}/open-apis/auth/v3/tenant_access_token/internal", timeout=TIMEOUT,
                     json={"app_id": os.environ["FEISHU_APP_ID"], "app_secret": os.environ["FEISHU_APP_SECRET"]},
                     ).json()["tenant_access_token"]
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"}
open_id = session.post(f"{BASE_URL}/open-apis/contact/v3/users/batch_get_id?user_id_type=open_id", timeout=TIMEOUT,
                       json={"emails": [os.environ["BARE_APP_OWNER"]]}, headers=headers,
                       ).json()["data"]["user_list"][0]["user_id"]
send_url = f"{BASE_URL}/open-apis/im/v1/messages?receive_id_type=open_id"

app = Flask(__name__)


@app.post("/gitlab-webhook")
def gitlab_webhook():
    request.get_data()
    body = {"receive_id": open_id, "msg_type": "interactive", "content": CARD, "uuid": uuid.uuid4().hex}
    answer = session.post(send_url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"), headers=headers,
                          timeout=TIMEOUT).json()
    return {"status": "sent" if answer.get("code") == 0 else "failed"}
