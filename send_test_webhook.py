"""Send the service a push webhook as GitLab would, and show what it did with it.

    python send_test_webhook.py                                  the local service from .env
    python send_test_webhook.py --project grouptwogame/yeshui-client --name "Y_野水发财（客户端）"
    python send_test_webhook.py --url https://notify.example.cn/gitlab-webhook --token ...

It checks the wiring from here to the owners' Feishu without pushing anything:
the token, owners.json routing, the Feishu app. Exit status: 0 when the service
answered 2xx, 1 when it refused or could not be reached, 2 for a settings error.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import ipaddress
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

from gitlab_feishu.gitlab import signing_key
from gitlab_feishu.setting_values import os_text
from gitlab_feishu.settings import ConfigError, Settings

GITLAB_VERSION = "18.6.0"                # what the User-Agent claims; any GitLab/<version> is fine
DEFAULT_PROJECT = ("demo/ceshi-xiangmu", "测试项目")   # named like the shipped owners.json's "测试项目"
DEFAULT_INSTANCE = "https://gitlab.example.cn"
GITLAB_WAITS = 10.0                      # seconds GitLab waits for a hook's answer


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")   # a console that cannot show Chinese must not crash
    args = _parser().parse_args(argv)
    for name, value in vars(args).items():
        if isinstance(value, str):
            setattr(args, name, os_text(value))      # a C locale hands Chinese over as surrogate escapes
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = args.url or local_url(settings)
    if not url.startswith(("http://", "https://")):
        print(f"error: --url {url!r} must start with http:// or https://", file=sys.stderr)
        return 2
    try:
        urlsplit(url).port          # an unclosed [IPv6 bracket or a port out of range, before anything is sent
    except ValueError as exc:
        print(f"error: --url {url!r} is not a valid URL ({exc}): write it as http://host:port/gitlab-webhook",
              file=sys.stderr)
        return 2
    token = settings.gitlab_webhook_secret if args.token is None else args.token
    path = (args.project or DEFAULT_PROJECT[0]).strip("/")
    name = args.name or (DEFAULT_PROJECT[1] if args.project is None else path.rsplit("/", 1)[-1])
    instance = settings.gitlab_url or DEFAULT_INSTANCE
    payload = push_payload(instance, path, name, user=args.user, username=args.username,
                           message=args.message, branch=args.branch)
    print(f"POST {url}: a push to {path} ({name}), branch {args.branch}, by {args.user}")
    ok, lines = send(url, payload, gitlab_headers(token, instance), timeout=args.timeout,
                     signing_token=settings.gitlab_signing_token)
    print("\n".join(lines), file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="send_test_webhook.py",
                                     description="Send a test Push Hook, as GitLab does, and show the answer.")
    parser.add_argument("--url", help="the webhook URL (default: this machine's service, HOST and PORT from .env)")
    parser.add_argument("--token", help="the X-Gitlab-Token to send (default: GITLAB_WEBHOOK_SECRET from .env)")
    parser.add_argument("--project", metavar="PATH",
                        help=f"the project's path_with_namespace (default: {DEFAULT_PROJECT[0]}, named "
                             f"{DEFAULT_PROJECT[1]})")
    parser.add_argument("--name", help="the project's display name (default: the last segment of --project)")
    parser.add_argument("--user", default="张三", help="who pushed: the display name (default: 张三)")
    parser.add_argument("--username", default="zhangsan", help="who pushed: the GitLab username (default: zhangsan)")
    parser.add_argument("--message", default="测试：确认 GitLab → 飞书 通知已接通",
                        help="the commit message (default: a Chinese test message)")
    parser.add_argument("--branch", default="main", help="the branch pushed to (default: main)")
    parser.add_argument("--timeout", type=_seconds, default=GITLAB_WAITS,
                        help="seconds to wait for the answer (default: 10, as long as GitLab waits)")
    return parser


def _seconds(text: str) -> float:
    """A positive number of seconds, for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:             # NaN too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def local_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/gitlab-webhook"


def gitlab_headers(token: str, instance: str) -> dict[str, str | bytes]:
    """The headers GitLab sends with a project hook delivery, with fresh ids (so it is never a repeat)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"GitLab/{GITLAB_VERSION}",
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Instance": instance,
        "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "Idempotency-Key": str(uuid.uuid4()),
    }
    if token:
        # GitLab sends the Secret token's UTF-8 bytes; a str header would have to be Latin-1.
        headers["X-Gitlab-Token"] = token.encode("utf-8")
    return headers


def signature_headers(signing_token: str, message_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """GitLab 19's Standard Webhooks signature of `body`: with GITLAB_SIGNING_TOKEN set the service refuses
    every delivery without it. GitLab uses the Idempotency-Key as the message id."""
    digest = hmac.new(signing_key(signing_token), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest.digest()).decode("ascii")}


def push_payload(instance: str, path: str, name: str, *, user: str, username: str, message: str,
                 branch: str) -> dict:
    """A one-commit push in the shape GitLab 17/18 sends (Push Hook; see tests/fixtures/gitlab)."""
    web_url = f"{instance}/{path}"
    before = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
    after = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
    now = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    namespace = path.rsplit("/", 1)[0] if "/" in path else path
    ssh_url = f"git@{instance.split('://', 1)[-1]}:{path}.git"
    project = {
        "id": 4242, "name": name, "description": "send_test_webhook.py", "web_url": web_url, "avatar_url": None,
        "git_ssh_url": ssh_url, "git_http_url": f"{web_url}.git", "namespace": namespace, "visibility_level": 0,
        "path_with_namespace": path, "default_branch": "main", "ci_config_path": None,
        "homepage": web_url, "url": ssh_url, "ssh_url": ssh_url, "http_url": f"{web_url}.git",
    }
    commit = {
        "id": after, "message": message + "\n", "title": message.splitlines()[0] if message else "",
        "timestamp": now, "url": f"{web_url}/-/commit/{after}",
        "author": {"name": user, "email": f"{username}@example.com"},
        "added": ["docs/测试说明.md"], "modified": ["README.md"], "removed": [],
    }
    return {
        "object_kind": "push", "event_name": "push", "before": before, "after": after,
        "ref": f"refs/heads/{branch}", "ref_protected": branch == "main", "checkout_sha": after, "message": None,
        "user_id": 4242, "user_name": user, "user_username": username, "user_email": "",
        "user_avatar": None, "project_id": 4242, "project": project, "commits": [commit],
        "total_commits_count": 1, "push_options": {},
        "repository": {"name": name, "url": ssh_url, "description": project["description"], "homepage": web_url,
                       "git_http_url": f"{web_url}.git", "git_ssh_url": ssh_url, "visibility_level": 0},
    }


def send(url: str, payload: dict, headers: dict[str, str | bytes], *, timeout: float,
         signing_token: str = "") -> tuple[bool, list[str]]:
    """POST the payload (signed when a signing token is given); (answered 2xx with JSON, the lines that say
    what happened)."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    if signing_token:
        headers = {**headers, **signature_headers(signing_token, str(headers["Idempotency-Key"]), body,
                                                  int(time.time()))}
    started = time.monotonic()
    try:
        rsp = requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False,
                            proxies=direct_if_local(url))
    except (requests.Timeout, requests.ConnectionError) as exc:
        if isinstance(exc, requests.exceptions.ProxyError):
            return False, [f"error: cannot send to {url} through the proxy in HTTP_PROXY/HTTPS_PROXY ({_why(exc)}):"
                           f" add the service's host to NO_PROXY, or unset the proxy for this command"]
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return False, [f"error: the certificate at {url} is not trusted: if it is self-signed or from your"
                           " company's own CA, set REQUESTS_CA_BUNDLE to that CA certificate (a .pem file) in the"
                           " environment and run again"]
        plain = plain_http_instead(url, timeout)
        if plain:
            # A TLS handshake at a plain-HTTP port: waitress waits for a request line that never comes,
            # other servers answer 400, which the handshake takes for garbage.
            return False, [f"error: no HTTPS at {url}: the service there speaks plain HTTP; use {plain} (in GitLab's"
                           " hook URL too), or put nginx with TLS in front (README, HTTPS in front: nginx)"]
        if isinstance(exc, requests.ConnectTimeout):
            return False, [f"error: no connection to {url} within {timeout:g} s: a firewall drops the packets, or"
                           " the address is not this service's"]
        if isinstance(exc, requests.Timeout):
            # The service answers within its delivery deadline (DELIVERY_DEADLINE_SECONDS, 5 s by default).
            why = " the service is stuck: look at its log" if timeout >= GITLAB_WAITS else \
                f" the service may still have been sending (GitLab waits {GITLAB_WAITS:g} s): try --timeout 10"
            return False, [f"error: no answer from {url} within {timeout:g} s:{why}"]
        return False, [f"error: cannot connect to {url} ({_why(exc)}): is the service running (start_server.bat"
                       " or python webhook_server.py) and are the address and port right?"]
    except requests.RequestException as exc:
        return False, [f"error: cannot send to {url}: {exc}"]
    took = (time.monotonic() - started) * 1000
    try:
        answer = rsp.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or (200 <= rsp.status_code < 300 and "status" not in answer):
        # Every answer of this service carries "status"; a 2xx without it is another program's.
        text = " ".join(answer_text(rsp).split())[:80]
        return False, [f"error: HTTP {rsp.status_code} from {url}, but not this service's JSON answer ({text!r}):"
                       " is --url right? This service's URL ends with /gitlab-webhook"]
    if rsp.status_code == 401:
        # The service says whether the token or (GitLab 19) the signature was wrong.
        return False, [f"error: HTTP 401 from {url}: {answer.get('reason') or 'refused'} (this script sends"
                       " --token, default GITLAB_WEBHOOK_SECRET in .env, and signs with GITLAB_SIGNING_TOKEN"
                       " from .env when it is set)"]
    if not 200 <= rsp.status_code < 300:
        return False, [f"error: HTTP {rsp.status_code} from {url}: {answer.get('reason', answer)}"]
    return True, [f"HTTP {rsp.status_code} in {took:.0f} ms: {describe(answer)}"]


def direct_if_local(url: str) -> dict | None:
    """This machine's service is reached directly, never through a proxy set in HTTP_PROXY/HTTPS_PROXY (which
    would look for 127.0.0.1 on the proxy's own machine)."""
    host = urlsplit(url).hostname or ""
    try:
        local = host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return {"no_proxy": host} if local else None


def answer_text(rsp: requests.Response) -> str:
    """The body as text. Without a charset requests reads text/* as Latin-1; a Chinese page (nginx's default
    `charset off`) is UTF-8, or GBK from a Chinese Windows server."""
    if "charset=" in rsp.headers.get("Content-Type", "").lower():
        return rsp.text
    for encoding in ("utf-8", "gb18030"):
        try:
            return rsp.content.decode(encoding)
        except UnicodeDecodeError:
            pass
    return rsp.content.decode("utf-8", "replace")


def plain_http_instead(url: str, timeout: float) -> str | None:
    """`url` with http:// when it is an https:// URL whose port answers plain HTTP, else None."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return None
    plain = urlunsplit(parts._replace(scheme="http", netloc=parts.netloc if parts.port else f"{parts.netloc}:443"))
    try:
        answer = requests.get(urljoin(plain, "/healthz"), timeout=min(timeout, 2.0), allow_redirects=False,
                              proxies=direct_if_local(plain)).json()
    except (requests.RequestException, ValueError):
        return None
    # This service's JSON, not a TLS proxy's "plain HTTP request was sent to HTTPS port" page.
    return plain if isinstance(answer, dict) and "status" in answer else None


def describe(answer: dict) -> str:
    """The service's answer, one delivery per line: who, by which rule, the result and why."""
    lines = [str(answer.get("status", "?")) + (f" ({answer['reason']})" if answer.get("reason") else "")]
    deliveries = answer.get("deliveries") or []
    for delivery in deliveries:
        line = f"  {delivery.get('to')}  [{delivery.get('rule')}]  {delivery.get('result')}"
        lines.append(line + (f": {delivery['error']}" if delivery.get("error") else ""))
    if not deliveries and answer.get("status") == "ignored":
        lines.append("  nobody was notified; python webhook_server.py --match PROJECT_PATH shows who would be")
    return "\n".join(lines)


def _why(exc: requests.ConnectionError) -> str:
    text = str(exc)
    for marker, reason in (("refused", "connection refused"), ("10061", "connection refused"),
                           ("getaddrinfo", "host name not found"), ("Name or service", "host name not found"),
                           ("SSL", "TLS handshake failed")):
        if marker in text:
            return reason
    return type(exc).__name__


if __name__ == "__main__":
    try:
        code = main()
        sys.stdout.flush()      # a reader gone (`| head`) shows here, not as a warning when Python exits
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # As Python's documentation advises: nothing is left for the exit's own flush to fail on.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
