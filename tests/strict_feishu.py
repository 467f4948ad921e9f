"""A strict stand-in for the three Feishu Open Platform endpoints the service calls, written from Feishu's
documentation alone (not from tests/fake_feishu.py), to catch what our own fake might share our blind spots on.

Sources (open.feishu.cn, mirrored in wxkingstar/doc-hub-mcp):
- tenant_access_token/internal  .../authentication-management/access-token/tenant_access_token_internal
- contact/v3/users/batch_get_id  .../server-docs/contact-v3/user/batch_get_id
- im/v1/messages (create)        .../server-docs/im-v1/message/create
- card JSON 2.0                  .../feishu-cards/card-json-v2-structure, ...-v2-breaking-changes-release-notes,
  components under .../card-json-v2-components/ (title, rich-text, plain-text, divider, button, column-set)
- rate limits                    .../server-docs/api-call-guide/frequency-control
Every refusal is kept in `refusals` with the request that caused it; every accepted card in `messages`.
"""
from __future__ import annotations

import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CONTENT_LIMIT = 30 * 1024             # "卡片消息、富文本消息请求体最大不能超过 30 KB"
TEMPLATES = {"blue", "wathet", "turquoise", "green", "yellow", "orange", "red", "carmine", "violet", "purple",
             "indigo", "grey", "default"}
TAG_COLORS = {"neutral", "blue", "turquoise", "lime", "orange", "violet", "indigo", "wathet", "green", "yellow",
              "red", "purple", "carmine"}
TEXT_SIZES = {"heading-0", "heading-1", "heading-2", "heading-3", "heading-4", "heading", "normal", "notation",
              "xxxx-large", "xxx-large", "xx-large", "x-large", "large", "medium", "small", "x-small"}
ALIGN = {"left", "center", "right"}
BUTTON_TYPES = {"default", "primary", "danger", "text", "primary_text", "danger_text", "primary_filled",
                "danger_filled", "laser"}
SPACING = re.compile(r"^(small|medium|large|extra_large|default|\d{1,2}px)$")
BOX = re.compile(r"^(-?\d{1,2}(px)?)( -?\d{1,2}(px)?){0,3}$")      # margin/padding: 1, 2 or 4 values in [-99,99]px
ELEMENT_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,19}$")
URL = re.compile(r"^https?://[^\s]+$")
NO_JUMP = "lark://msgcard/unsupported_action"

CONFIG_KEYS = {"streaming_mode", "streaming_config", "summary", "locales", "enable_forward", "update_multi",
               "width_mode", "use_custom_translation", "enable_forward_interaction", "style"}
HEADER_KEYS = {"title", "subtitle", "text_tag_list", "i18n_text_tag_list", "template", "icon", "padding"}
BODY_KEYS = {"elements", "direction", "padding", "horizontal_spacing", "horizontal_align", "vertical_spacing",
             "vertical_align"}
COMMON = {"tag", "element_id", "margin"}
ELEMENT_KEYS = {
    "markdown": COMMON | {"content", "i18n_content", "text_size", "text_align", "icon"},
    "div": COMMON | {"text", "fields", "icon", "width"},
    "hr": COMMON,
    "button": COMMON | {"type", "size", "width", "text", "icon", "hover_tips", "disabled", "disabled_tips",
                        "confirm", "behaviors", "value", "name", "form_action_type"},
    "column_set": COMMON | {"horizontal_spacing", "horizontal_align", "flex_mode", "background_style", "action",
                            "columns"},
}
COLUMN_KEYS = {"tag", "element_id", "background_style", "width", "weight", "horizontal_spacing", "horizontal_align",
               "vertical_align", "vertical_spacing", "direction", "padding", "margin", "action", "elements"}
REMOVED_IN_2 = {"note", "action"}     # release notes: "unsupported tag", 230099 / 200861


class CardError(ValueError):
    def __init__(self, sub_code: int, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.sub_code, self.path, self.why = sub_code, path, why


def _fail(path: str, why: str, sub_code: int = 200621) -> None:
    raise CardError(sub_code, path, why)


def _keys(obj, allowed: set, path: str) -> None:
    if not isinstance(obj, dict):
        _fail(path, f"must be an object, got {type(obj).__name__}")
    extra = set(obj) - allowed
    if extra:   # 2.0: "传入不支持的属性将报错"
        _fail(path, f"unsupported properties {sorted(extra)}")


def _str(obj: dict, key: str, path: str, *, required=False, choices=None, pattern=None) -> None:
    if key not in obj:
        if required:
            _fail(path, f"{key!r} is required")
        return
    value = obj[key]
    if not isinstance(value, str):
        _fail(f"{path}.{key}", f"must be a string, got {type(value).__name__}")
    if choices is not None and value not in choices:
        _fail(f"{path}.{key}", f"{value!r} is not one of {sorted(choices)}")
    if pattern is not None and not pattern.match(value):
        _fail(f"{path}.{key}", f"{value!r} does not match {pattern.pattern}")


def _bool(obj: dict, key: str, path: str) -> None:
    if key in obj and not isinstance(obj[key], bool):
        _fail(f"{path}.{key}", "must be a boolean")


def _text(obj, path: str, *, tags=("plain_text", "lark_md"), max_chars=None, extra=frozenset()) -> None:
    _keys(obj, {"tag", "content", "i18n_content"} | set(extra), path)
    _str(obj, "tag", path, required=True, choices=set(tags))
    _str(obj, "content", path)
    if max_chars and len(obj.get("content", "")) > max_chars:
        _fail(f"{path}.content", f"longer than {max_chars} characters")


def _url(value, path: str, *, allow_no_jump=False) -> None:
    if not isinstance(value, str) or not (URL.match(value) or (allow_no_jump and value == NO_JUMP)):
        _fail(path, f"{value!r} is not an http(s) URL")


def validate_card(card) -> int:
    """Check a card against the JSON 2.0 rules; returns the number of components. Raises CardError."""
    _keys(card, {"schema", "config", "card_link", "header", "body"}, "card")
    if card.get("schema") != "2.0":
        _fail("card.schema", f"{card.get('schema')!r}: this stand-in only accepts JSON 2.0 cards")
    if "config" in card:
        config = card["config"]
        _keys(config, CONFIG_KEYS, "config")
        for key in ("streaming_mode", "enable_forward", "update_multi", "use_custom_translation",
                    "enable_forward_interaction"):
            _bool(config, key, "config")
        if config.get("update_multi") is False:
            _fail("config.update_multi", "JSON 2.0 only supports true")
        _str(config, "width_mode", "config", choices={"default", "compact", "fill"})
        if "summary" in config:
            _keys(config["summary"], {"content", "i18n_content"}, "config.summary")
            _str(config["summary"], "content", "config.summary")
    if "card_link" in card:
        _keys(card["card_link"], {"url", "pc_url", "ios_url", "android_url"}, "card_link")
        for key, value in card["card_link"].items():
            _url(value, f"card_link.{key}", allow_no_jump=key != "url")
    if "header" in card:
        header = card["header"]
        _keys(header, HEADER_KEYS, "header")
        if "title" not in header:
            _fail("header", "'title' is required")
        _text(header["title"], "header.title")
        if "subtitle" in header:
            _text(header["subtitle"], "header.subtitle")
        _str(header, "template", "header", choices=TEMPLATES)
        _str(header, "padding", "header", pattern=BOX)
        for i, tag in enumerate(header.get("text_tag_list", [])):
            path = f"header.text_tag_list[{i}]"
            _keys(tag, {"tag", "element_id", "text", "color"}, path)
            _str(tag, "tag", path, required=True, choices={"text_tag"})
            _str(tag, "color", path, choices=TAG_COLORS)
            if "text" in tag:
                _text(tag["text"], path + ".text", tags=("plain_text",))
    body = card.get("body", {})
    _keys(body, BODY_KEYS, "body")
    elements = body.get("elements", [])
    if not isinstance(elements, list):
        _fail("body.elements", "must be an array")
    seen_ids: set[str] = set()
    count = sum(_element(e, f"body.elements[{i}]", 1, seen_ids) for i, e in enumerate(elements))
    if count > 200:
        _fail("body", f"{count} components; JSON 2.0 allows at most 200", 11310)
    return count


def _element(element, path: str, depth: int, seen_ids: set) -> int:
    if depth > 5:
        _fail(path, "nested deeper than 5 levels")
    if not isinstance(element, dict) or not isinstance(element.get("tag"), str):
        _fail(path, "a component needs a string 'tag'")
    tag = element["tag"]
    if tag in REMOVED_IN_2:
        _fail(path, f"unsupported tag {tag} (removed in schema 2.0)", 200861)
    if tag not in ELEMENT_KEYS:
        _fail(path, f"tag {tag!r} is not one this stand-in knows the 2.0 schema of", 200861)
    _keys(element, ELEMENT_KEYS[tag], path)
    if "element_id" in element:
        _str(element, "element_id", path, pattern=ELEMENT_ID)
        if element["element_id"] in seen_ids:
            _fail(path, f"element_id {element['element_id']!r} is not unique")
        seen_ids.add(element["element_id"])
    _str(element, "margin", path, pattern=BOX)
    count = 1
    if tag == "markdown":
        _str(element, "content", path, required=True)
        _str(element, "text_size", path, choices=TEXT_SIZES)
        _str(element, "text_align", path, choices=ALIGN)
    elif tag == "div":
        if "text" in element:
            _text(element["text"], path + ".text", extra={"text_size", "text_color", "text_align", "lines"})
        for i, field in enumerate(element.get("fields", [])):
            _keys(field, {"is_short", "text"}, f"{path}.fields[{i}]")
            _bool(field, "is_short", f"{path}.fields[{i}]")
            _text(field.get("text"), f"{path}.fields[{i}].text")
    elif tag == "button":
        _str(element, "type", path, choices=BUTTON_TYPES)
        _str(element, "size", path, choices={"tiny", "small", "medium", "large"})
        if "text" in element:
            _text(element["text"], path + ".text", tags=("plain_text",), max_chars=100)
        for key in ("hover_tips", "disabled_tips"):
            if key in element:
                _text(element[key], f"{path}.{key}", tags=("plain_text",))
        _bool(element, "disabled", path)
        behaviors = element.get("behaviors")
        if not isinstance(behaviors, list) or not behaviors:      # the field table marks behaviors required
            _fail(path, "'behaviors' is required (a non-empty array)")
        for i, behavior in enumerate(behaviors):
            bpath = f"{path}.behaviors[{i}]"
            if not isinstance(behavior, dict):
                _fail(bpath, "must be an object")
            if behavior.get("type") == "open_url":
                _keys(behavior, {"type", "default_url", "pc_url", "ios_url", "android_url"}, bpath)
                if "default_url" not in behavior:
                    _fail(bpath, "'default_url' is required")
                for key in ("default_url", "pc_url", "ios_url", "android_url"):
                    if key in behavior:
                        _url(behavior[key], f"{bpath}.{key}", allow_no_jump=key != "default_url")
            elif behavior.get("type") == "callback":
                _keys(behavior, {"type", "value"}, bpath)
            else:
                _fail(bpath, f"type {behavior.get('type')!r} is not open_url or callback")
    elif tag == "column_set":
        _str(element, "flex_mode", path, choices={"none", "stretch", "flow", "bisect", "trisect"})
        _str(element, "horizontal_spacing", path, pattern=SPACING)
        _str(element, "horizontal_align", path, choices=ALIGN)
        columns = element.get("columns")
        if not isinstance(columns, list):
            _fail(path, "'columns' is required (an array)")
        for i, column in enumerate(columns):
            cpath = f"{path}.columns[{i}]"
            _keys(column, COLUMN_KEYS, cpath)
            _str(column, "tag", cpath, required=True, choices={"column"})
            _str(column, "width", cpath, pattern=re.compile(r"^(auto|weighted|\d{2,3}px)$"))
            if "weight" in column and (not isinstance(column["weight"], int) or not 1 <= column["weight"] <= 5):
                _fail(f"{cpath}.weight", "must be an integer from 1 to 5")
            _str(column, "vertical_align", cpath, choices={"top", "center", "bottom"})
            _str(column, "horizontal_align", cpath, choices=ALIGN)
            _str(column, "vertical_spacing", cpath, pattern=SPACING)
            _str(column, "horizontal_spacing", cpath, pattern=SPACING)
            _str(column, "direction", cpath, choices={"vertical", "horizontal"})
            _str(column, "padding", cpath, pattern=BOX)
            _str(column, "margin", cpath, pattern=BOX)
            for j, child in enumerate(column.get("elements", [])):
                count += _element(child, f"{cpath}.elements[{j}]", depth + 1, seen_ids)
    return count


class StrictFeishu:
    """The stand-in: `with StrictFeishu(users={...}) as feishu: feishu.url`."""

    def __init__(self, *, app_id="cli_strict_app", app_secret="strict-secret", users=None, unavailable=(),
                 clock=time.time, api_per_second=50, user_per_second=5):
        self.app_id, self.app_secret, self.clock = app_id, app_secret, clock
        self.users = {email.lower(): open_id for email, open_id in (users or {}).items()}   # email -> open_id
        self.unavailable = set(unavailable)            # open_ids outside the bot's availability range
        self.api_per_second, self.user_per_second = api_per_second, user_per_second
        self.tokens: dict[str, float] = {}             # token -> expiry
        self.uuids: dict[str, tuple[float, dict]] = {}  # uuid -> (first send time, the message)
        self.messages: list[dict] = []
        self.refusals: list[dict] = []
        self.notes: list[str] = []                     # tolerated but undocumented or unusual requests
        self.slow_sends, self.slow_seconds = 0, 0.0    # the next N sends answer only after slow_seconds
        self._calls: dict[str, list[float]] = {}        # endpoint name or open_id -> recent call times
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "StrictFeishu":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- endpoints: each returns (http_status, body, extra_headers) --------------------------------------------

    def token(self, query, headers, body):
        if not isinstance(body, dict) or not isinstance(body.get("app_id"), str) \
                or not isinstance(body.get("app_secret"), str):
            return 400, {"code": 10003, "msg": "invalid param"}, {}
        if body["app_id"] != self.app_id:
            return 400, {"code": 10003, "msg": "invalid param"}, {}
        if body["app_secret"] != self.app_secret:
            return 400, {"code": 10014, "msg": "app secret invalid"}, {}
        now = self.clock()
        live = [(t, exp) for t, exp in self.tokens.items() if exp - now >= 30 * 60]
        if live:   # >= 30 min left: the same token, with its remaining lifetime
            token, expiry = live[0]
        else:
            token, expiry = "t-" + secrets.token_hex(20), now + 7200
            self.tokens[token] = expiry
        return 200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": int(expiry - now)}, {}

    def batch_get_id(self, query, headers, body):
        user_id_type = query.get("user_id_type", "open_id")
        if user_id_type not in {"open_id", "union_id", "user_id"}:
            return 400, {"code": 99992402, "msg": "field validation failed: user_id_type"}, {}
        if not isinstance(body, dict) or set(body) - {"emails", "mobiles", "include_resigned"}:
            return 400, {"code": 99992402, "msg": "field validation failed: unknown body fields"}, {}
        emails, mobiles = body.get("emails", []), body.get("mobiles", [])
        for name, values in (("emails", emails), ("mobiles", mobiles)):
            if not isinstance(values, list) or len(values) > 50 or not all(isinstance(v, str) for v in values):
                return 400, {"code": 99992402, "msg": f"field validation failed: {name} (string[], max 50)"}, {}
        if not emails and not mobiles:
            return 400, {"code": 99992402, "msg": "field validation failed: emails or mobiles required"}, {}
        if "include_resigned" in body and not isinstance(body["include_resigned"], bool):
            return 400, {"code": 99992402, "msg": "field validation failed: include_resigned"}, {}
        users = []
        for email in emails:
            open_id = self.users.get(email.lower())
            users.append({"email": email, **({"user_id": open_id, "status": {
                "is_frozen": False, "is_resigned": False, "is_activated": True, "is_exited": False,
                "is_unjoin": False}} if open_id else {})})
        users += [{"mobile": m} for m in mobiles]
        return 200, {"code": 0, "msg": "success", "data": {"user_list": users}}, {}

    def send(self, query, headers, body):
        id_type = query.get("receive_id_type")
        if id_type is None:
            return 400, {"code": 99992402, "msg": "field validation failed: receive_id_type is required"}, {}
        if id_type not in {"open_id", "union_id", "user_id", "email", "chat_id"}:
            return 400, {"code": 230001, "msg": "invalid request parameter, ext=invalid receive_id_type"}, {}
        if not isinstance(body, dict) or set(body) - {"receive_id", "msg_type", "content", "uuid"}:
            return 400, {"code": 99992402, "msg": "field validation failed: unknown body fields"}, {}
        for key in ("receive_id", "msg_type", "content"):
            if not isinstance(body.get(key), str) or not body[key]:
                return 400, {"code": 99992402, "msg": f"field validation failed: {key} (string, required)"}, {}
        uuid = body.get("uuid")
        if uuid is not None and (not isinstance(uuid, str) or len(uuid) > 50):
            return 400, {"code": 99992402, "msg": "field validation failed: uuid (string, max 50 characters)"}, {}
        if body["msg_type"] != "interactive":
            return 400, {"code": 230001, "msg": "this stand-in only takes interactive cards"}, {}
        if len(body["content"].encode("utf-8")) > CONTENT_LIMIT:
            return 400, {"code": 230025, "msg": "The message content exceeds the length limit (card 30 KB)."}, {}
        try:
            card = json.loads(body["content"])
        except ValueError as exc:
            return 400, {"code": 230099, "msg": f"Failed to create card content, ext=ErrCode: 200621; "
                                                  f"ErrMsg: parse card json err: {exc}"}, {}
        try:
            validate_card(card)
        except CardError as exc:
            return 400, {"code": 230099, "msg": f"Failed to create card content, ext=ErrCode: {exc.sub_code}; "
                                                  f"ErrMsg: {exc}"}, {}
        receive_id = body["receive_id"]
        open_id = self.users.get(receive_id.lower()) if id_type == "email" else receive_id
        if id_type not in {"open_id", "email"} or open_id not in self.users.values():
            return 400, {"code": 230001, "msg": "invalid request parameter, ext=invalid receive_id"}, {}
        if open_id in self.unavailable:
            return 400, {"code": 230013, "msg": "Bot has NO availability to this user."}, {}
        now = self.clock()
        if uuid and uuid in self.uuids and now - self.uuids[uuid][0] < 3600:
            return 200, {"code": 0, "msg": "success", "data": self.uuids[uuid][1]}, {}   # at most one message
        if len([t for t in self._calls.get(open_id, []) if now - t < 1]) >= self.user_per_second:
            return 400, {"code": 230020, "msg": "This operation triggers the frequency limit."}, {}
        self._calls.setdefault(open_id, []).append(now)
        message = {"message_id": "om_" + secrets.token_hex(16), "msg_type": "interactive",
                   "chat_id": "oc_" + open_id[3:],
                   "create_time": str(int(now * 1000)), "update_time": str(int(now * 1000)), "deleted": False,
                   "updated": False, "sender": {"id": self.app_id, "id_type": "app_id", "sender_type": "app",
                                                "tenant_key": "strict"}, "body": {"content": body["content"]},
                   "mentions": [], "upper_message_id": ""}
        if uuid:
            self.uuids[uuid] = (now, message)
        self.messages.append({"to": open_id, "receive_id_type": id_type, "uuid": uuid, "card": card,
                              "message_id": message["message_id"]})
        return 200, {"code": 0, "msg": "success", "data": message}, {}

    # -- transport ---------------------------------------------------------------------------------------------

    ROUTES = {"/open-apis/auth/v3/tenant_access_token/internal": ("token", False),
              "/open-apis/contact/v3/users/batch_get_id": ("batch_get_id", True),
              "/open-apis/im/v1/messages": ("send", True)}

    def handle(self, method: str, target: str, headers, raw: bytes):
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        route = self.ROUTES.get(parts.path)
        if route is None or method != "POST":
            return 404, {"code": 404, "msg": "404 page not found"}, {}
        name, needs_token = route
        now = self.clock()
        with self._lock:
            window = [t for t in self._calls.get(name, []) if now - t < 1]
            if len(window) >= self.api_per_second:       # gateway limit: 429 + 99991400 + reset header
                return 429, {"code": 99991400, "msg": "request trigger frequency limit"}, {
                    "x-ogw-ratelimit-limit": str(self.api_per_second), "x-ogw-ratelimit-reset": "1"}
            self._calls[name] = window + [now]
            content_type = headers.get("Content-Type", "")
            if not content_type.lower().startswith("application/json"):
                return 400, {"code": 99992402, "msg": f"Content-Type {content_type!r} is not application/json"}, {}
            if "charset=utf-8" not in content_type.lower().replace(" ", ""):
                self.notes.append(f"{name}: Content-Type {content_type!r} (docs: 'application/json; charset=utf-8')")
            if needs_token:
                auth = headers.get("Authorization", "")
                if not auth.startswith("Bearer ") or not auth[7:].strip():
                    return 400, {"code": 99991661, "msg": "Missing access token for authorization."}, {}
                token = auth[7:].strip()
                if not token.startswith(("t-", "u-")):
                    return 400, {"code": 99991671, "msg": "Invalid access token format."}, {}
                if self.tokens.get(token, 0) <= now:
                    return 400, {"code": 99991663, "msg": "Invalid access token for authorization."}, {}
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return 400, {"code": 99992402, "msg": "request body is not UTF-8 JSON"}, {}
            answer = getattr(self, name)(query, headers, body)
            slow = name == "send" and self.slow_sends > 0
            self.slow_sends -= slow
        if slow:   # the message is already sent: a client that times out and retries must reuse its uuid
            time.sleep(self.slow_seconds)
        return answer

    def _handler(self):
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body, extra = stand_in.handle(self.command, self.path, self.headers, raw)
                if body.get("code"):
                    stand_in.refusals.append({"path": self.path, "status": status, "code": body["code"],
                                              "msg": body["msg"], "request": raw.decode("utf-8", "replace")[:3000]})
                data = json.dumps(body, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Tt-Logid", secrets.token_hex(12))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):   # the client gave up waiting (slow_sends)
                    pass

            do_POST = do_GET = _serve

        return Handler
