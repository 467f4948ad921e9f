"""Card JSON 2.0 as Feishu's documentation describes it, strictly: the fake refuses any card this refuses.

Written from Feishu's docs alone (card-json-v2-structure, the 2.0 breaking-changes release notes, and the
component pages for title, rich text, plain text, divider, button and column set), so that the fake and
the card renderer cannot share a blind spot. Only the components our cards use are known; any other tag
is refused, as is any property a component does not document ("传入不支持的属性将报错").
"""
from __future__ import annotations

import re

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
        _fail("card.schema", f"{card.get('schema')!r}: only JSON 2.0 cards are checked here")
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
        _fail(path, f"tag {tag!r} is not a component our cards use (or not in schema 2.0)", 200861)
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
