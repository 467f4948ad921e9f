"""The Feishu card: shape, content, escaping, links and size, over real GitLab payloads."""
import copy
import json
import re
from pathlib import Path

import pytest

from gitlab_feishu.card_parts import escape_markdown
from gitlab_feishu.cards import MAX_CARD_BYTES, card_content, render_card, render_content
from gitlab_feishu.gitlab import parse_event

FIXTURES = Path(__file__).parent / "fixtures" / "gitlab"
CREATE = "zulip_push_hook__push_local_branch_without_commits.json"
DELETE = "zulip_push_hook__remove_branch.json"
PUSH_FIXTURES = ["push.json", "chinese_push.json", "chinese_push_redacted.json", "zulip_push_hook.json",
                 CREATE, DELETE, "gitlab_api_doc_webhook_event_push.json"]

# The properties card JSON 2.0 documents for what we use; 2.0 rejects unknown ones.
ALLOWED_KEYS = {
    "card": {"schema", "config", "header", "body"},
    "config": {"summary"},
    "header": {"title", "subtitle", "template"},
    "markdown": {"tag", "content"},
    "hr": {"tag"},
    "column_set": {"tag", "horizontal_spacing", "columns"},
    "column": {"tag", "width", "weight", "elements"},
    "button": {"tag", "type", "text", "behaviors"},
}


def load(name: str) -> dict:
    payload = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return payload.get("request_data", payload)


def card_for(payload: dict, lang: str = "zh", **kwargs) -> dict:
    return render_card(parse_event(payload, "Push Hook"), lang, **kwargs)


def elements(card: dict) -> list[dict]:
    """Every element of the body, columns' contents included."""
    found = []
    for element in card["body"]["elements"]:
        found.append(element)
        for column in element.get("columns", []):
            found.append(column)
            found.extend(column["elements"])
    return found


def markdown(card: dict) -> str:
    return "\n".join(e["content"] for e in elements(card) if e["tag"] == "markdown")


def buttons(card: dict) -> list[dict]:
    return [e for e in elements(card) if e["tag"] == "button"]


def button_url(card: dict) -> str:
    (button,) = buttons(card)
    return button["behaviors"][0]["default_url"]


def commit_lines(card: dict) -> list[str]:
    return [line for line in markdown(card).splitlines() if line.startswith("[") and "/-/commit/" in line]


def with_commits(count: int, total: int, message: str = "change {i}") -> dict:
    """push.json carrying `count` commits, numbered oldest first, out of `total`."""
    payload = load("push.json")
    template = payload["commits"][0]
    payload["commits"] = [dict(copy.deepcopy(template), id=f"{i:08x}".ljust(40, "a"), message=message.format(i=i),
                               url=f"http://example.com/mike/diaspora/-/commit/{i:08x}")
                          for i in range(1, count + 1)]
    payload["total_commits_count"] = total
    return payload


@pytest.mark.parametrize("fixture", PUSH_FIXTURES)
def test_card_is_json_2_with_documented_properties_only(fixture):
    card = card_for(load(fixture))
    assert card["schema"] == "2.0"
    assert set(card) <= ALLOWED_KEYS["card"]
    assert set(card["config"]) <= ALLOWED_KEYS["config"]
    assert set(card["header"]) <= ALLOWED_KEYS["header"]
    assert card["header"]["title"]["tag"] == card["header"]["subtitle"]["tag"] == "plain_text"
    for element in elements(card):
        assert element["tag"] in ALLOWED_KEYS, element["tag"]
        assert set(element) <= ALLOWED_KEYS[element["tag"]]
    assert '"action"' not in card_content(card) and '"note"' not in card_content(card)


@pytest.mark.parametrize("fixture", PUSH_FIXTURES)
def test_card_shows_project_branch_pusher_and_summary(fixture):
    payload = load(fixture)
    card = card_for(payload)
    event = parse_event(payload, "Push Hook")
    text = markdown(card)
    assert escape_markdown(event.project.name) in text
    assert escape_markdown(event.project.path) in text
    assert escape_markdown(event.branch) in text
    assert escape_markdown(event.actor.label) in text
    assert event.branch in card["header"]["subtitle"]["content"]
    assert event.project.name in card["config"]["summary"]["content"]
    assert len(buttons(card)) == 1


def test_push_card_in_chinese_names_pusher_project_branch_and_count():
    card = card_for(load("chinese_push.json"))
    assert card["header"]["title"]["content"] == "张三 推送到 Y_野水发财（客户端）"
    assert card["header"]["subtitle"]["content"] == "feature/登录界面 · 2 个提交"
    assert card["header"]["template"] == "blue"
    assert "张三 &#40;zhangsan&#41;" in markdown(card)
    assert "[Y&#95;野水发财（客户端）](https://git.example.cn/grouptwogame/yeshui-client)" in markdown(card)


@pytest.mark.parametrize("lang, title, field", [("zh", "有人 推送到", "未知"), ("en", "Someone pushed to", "unknown")])
def test_a_push_gitlab_names_no_pusher_for_says_so_in_words_that_fit(lang, title, field):
    payload = load("chinese_push.json")
    for name in ("user_name", "user_username", "user_email"):
        payload.pop(name, None)
    card = card_for(payload, lang)
    assert card["header"]["title"]["content"].startswith(title)
    pusher_label = {"zh": "推送人", "en": "Pushed by"}[lang]
    assert f"<font color='grey'>{pusher_label}</font>\n{field}\n" in markdown(card)


def test_branch_link_percent_encodes_the_chinese_branch():
    text = markdown(card_for(load("chinese_push.json")))
    assert "(https://git.example.cn/grouptwogame/yeshui-client/-/tree/feature/%E7%99%BB%E5%BD%95%E7%95%8C%E9%9D%A2)" in text


def test_malicious_commit_message_renders_as_text():
    card = card_for(load("chinese_push.json"))
    (line,) = [line for line in commit_lines(card) if line.startswith("[9a8b7c6d]")]
    assert "<at" not in card_content(card)
    assert "**" not in line and "](http://evil" not in line and "_" not in line
    assert "&#60;at id&#61;all&#62;&#60;/at&#62;" in line
    assert "&#42;&#42;微信登录&#42;&#42;" in line


@pytest.mark.parametrize("tag", ["<at id=all></at>", "<AT user_id='ou_x'>", "< at id=all>"])
def test_a_mention_tag_in_names_shown_as_plain_text_is_broken_up(tag):
    payload = load("chinese_push.json")
    payload["project"]["name"] = payload["user_name"] = payload["ref"] = f"refs/heads/{tag}"
    card = card_for(payload)
    plain = [card["header"]["title"]["content"], card["header"]["subtitle"]["content"],
             card["config"]["summary"]["content"]]
    assert all(re.search(r"<\s*at", text, re.IGNORECASE) is None and "\u200b" in text for text in plain)
    assert re.search(r"<\s*at", card_content(card), re.IGNORECASE) is None


@pytest.mark.parametrize("char", ["\u202e", "\u202d", "\u202b", "\u2067", "\x1b", "\x07", "\x9b"])
def test_bidi_overrides_and_controls_in_user_text_do_not_reach_the_card(char):
    # An unclosed RIGHT-TO-LEFT OVERRIDE would turn around what the card says after it: the author of a
    # commit, "推送到 项目" in the title. ESC and other controls have no business on a card either.
    payload = load("push.json")
    payload["user_name"] = f"Mallory{char}"
    payload["commits"][-1]["message"] = f"Fix typo {char}[31m"
    payload["commits"][-1]["author"]["name"] = f"{char}Mallory"
    content = card_content(card_for(payload))
    assert char not in content and json.dumps(char)[1:-1] not in content
    assert "Mallory 推送到 Diaspora" in content and "Fix typo &#91;31m" in content


@pytest.mark.parametrize(("fixture", "expected"), [
    ("push.json", "http://example.com/mike/diaspora/-/compare/"
                  "95790bf891e76fee5e1747ab589903a6a1f80f22...da1560886d4f094c3e6c9ef40349f7d38b5d27d7"),
    ("chinese_push_redacted.json", "https://git.example.cn/farm/nainai-farm/-/commit/"
                                   "3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"),
    (CREATE, "https://gitlab.com/eeshangarg/my-awesome-project/-/tree/changes"),
    (DELETE, "https://gitlab.com/TomaszKolek/my-awesome-project/-/branches"),
])
def test_button_opens_the_change(fixture, expected):
    assert button_url(card_for(load(fixture))) == expected


@pytest.mark.parametrize(("fixture", "template", "title", "label"), [
    (CREATE, "green", "Eeshan Garg 在 my-awesome-project 新建了分支", "查看分支"),
    (DELETE, "red", "Tomasz Kolek 删除了 my-awesome-project 的分支", "查看分支列表"),
])
def test_new_and_deleted_branches_have_their_own_wording_and_colour(fixture, template, title, label):
    card = card_for(load(fixture))
    assert card["header"]["template"] == template
    assert card["header"]["title"]["content"] == title
    assert buttons(card)[0]["text"]["content"] == label


def test_a_push_whose_commit_list_gitlab_left_out_is_not_called_a_rewind():
    card = card_for(with_commits(0, 4))
    assert card["header"]["template"] == "blue"
    assert card["header"]["subtitle"]["content"] == "master · 4 个提交" and "没有新提交" not in markdown(card)


def test_deleted_branch_has_no_commit_list_and_names_its_last_commit():
    payload = load(DELETE)
    card = card_for(payload)
    assert "最新提交" not in markdown(card)
    assert "~~tomek~~" in markdown(card)
    assert f"/-/commit/{payload['before']})" in markdown(card)


def test_push_without_commits_says_so():
    payload = with_commits(0, 0)
    card = card_for(payload)
    assert card["header"]["template"] == "orange"
    assert card["header"]["subtitle"]["content"] == "master · 没有新提交"
    assert "没有新提交" in markdown(card)


def test_a_rewind_push_button_shows_the_commits_the_branch_dropped():
    payload = with_commits(0, 0)
    # The new head is an ancestor of the old: before...after would be an empty comparison.
    assert button_url(card_for(payload)).endswith(f"/-/compare/{payload['after']}...{payload['before']}")


def test_more_commits_than_the_payload_carries_are_counted():
    text = markdown(card_for(load("push.json")))
    assert "还有 2 个更早的提交" in text


def test_at_most_five_commits_newest_first():
    card = card_for(with_commits(8, 8))
    lines = commit_lines(card)
    assert [line.split("]")[0] for line in lines] == [f"[{i:08x}" for i in (8, 7, 6, 5, 4)]
    assert "还有 3 个更早的提交" in markdown(card)


def test_test_button_sample_newest_first_still_shows_the_pushed_commit_first():
    # GitLab's Test > Push events lists the default branch's last commits newest first (after = the first).
    card = card_for(load("gitlab_api_doc_webhook_event_push.json"))
    assert [line.split("]")[0] for line in commit_lines(card)] == ["[f15b3227", "[8749d499", "[468abc80"]


def test_more_counts_commits_beyond_the_twenty_in_the_payload():
    assert "还有 52 个更早的提交" in markdown(card_for(with_commits(20, 57)))


def test_commit_shows_first_line_truncated_and_its_author():
    card = card_for(with_commits(1, 1, message="\n\n" + "很长的标题" * 100 + "\nsecond line"))
    (line,) = commit_lines(card)
    assert "很长的标题" in line and "…" in line and "second line" not in line
    assert "Jordi Mallach" in line


def test_english_labels():
    card = card_for(load("push.json"), "en")
    assert card["header"]["title"]["content"] == "John Smith pushed to Diaspora"
    assert card["header"]["subtitle"]["content"] == "master · 4 commits"
    assert "and 2 earlier commits" in markdown(card)
    assert buttons(card)[0]["text"]["content"] == "View changes"
    assert not any("\u4e00" <= ch <= "\u9fff" for ch in card_content(card))


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match="unknown card language 'fr'"):
        card_for(load("push.json"), "fr")


def test_links_only_to_http_urls():
    payload = load("push.json")
    payload["project"]["web_url"] = "javascript:alert(1)"
    for commit in payload["commits"]:
        commit["url"] = "javascript:alert(1)"
    card = card_for(payload)
    assert "javascript" not in card_content(card)
    assert buttons(card) == []


def test_link_urls_are_percent_encoded():
    payload = load("push.json")
    payload["ref"] = "refs/heads/fix (old) #2"
    assert "/-/tree/fix%20%28old%29%20%232)" in markdown(card_for(payload))


def changed(payload: dict, **changes) -> dict:
    return {**payload, **changes}


def each_commit(payload: dict, **changes) -> dict:
    return changed(payload, commits=[{**commit, **changes} for commit in payload["commits"]])


ADVERSARIAL = {
    "100 KB commit message": lambda: with_commits(1, 1, message="x" * 100_000),
    "100 KB of markup in one line": lambda: with_commits(1, 1, message="<at id=all></at>*_" * 6_000),
    "20 commits of 10 KB": lambda: with_commits(20, 20, message="提交说明" * 2_500),
    "5 KB branch name": lambda: changed(load("chinese_push.json"), ref="refs/heads/" + "分支" * 2_500),
    "huge pusher name": lambda: changed(load("push.json"), user_name="<" * 50_000, user_username="名" * 50_000),
    "huge project name and url": lambda: changed(load("push.json"), project={
        **load("push.json")["project"], "name": "项目" * 50_000,
        "web_url": "http://example.com/" + "p" * 50_000}),
    "long commit urls": lambda: each_commit(with_commits(20, 20, message="m" * 300),
                                            url="http://example.com/c?" + "(" * 600),
    "huge author names": lambda: each_commit(with_commits(20, 20), author={"name": "作者" * 10_000}),
    "lone surrogates": lambda: with_commits(3, 3, message="bad \ud800 text"),
}


@pytest.mark.parametrize("max_bytes", [MAX_CARD_BYTES, 20 * 1024])
@pytest.mark.parametrize("make", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_card_content_never_exceeds_the_limit(make, max_bytes):
    card = card_for(make(), max_bytes=max_bytes)
    assert len(card_content(card).encode("utf-8")) <= max_bytes
    assert card["header"]["title"]["content"]


@pytest.mark.parametrize("make", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_the_content_sent_is_the_trimmed_card_serialised(make):
    event = parse_event(make(), "Push Hook")
    assert render_content(event, max_bytes=20 * 1024) == card_content(render_card(event, max_bytes=20 * 1024))


def test_trimming_shows_fewer_commits_and_counts_the_rest():
    card = card_for(with_commits(20, 20, message="提交说明" * 2_500), max_bytes=2_500)
    shown = len(commit_lines(card))
    assert 0 < shown < 5
    assert f"还有 {20 - shown} 个更早的提交" in markdown(card)


def test_rendering_is_deterministic():
    assert card_content(card_for(load("chinese_push.json"))) == card_content(card_for(load("chinese_push.json")))


def test_card_content_is_compact_utf8_json():
    card = card_for(load("chinese_push.json"))
    content = card_content(card)
    assert json.loads(content) == card
    assert "野水发财" in content and ": " not in content


@pytest.mark.parametrize(("text", "expected"), [
    ("plain 中文", "plain 中文"),
    ("<at id=all></at>", "&#60;at id&#61;all&#62;&#60;/at&#62;"),
    ("<font color=red>x</font>", "&#60;font color&#61;red&#62;x&#60;/font&#62;"),
    ("[x](http://e.com)", "&#91;x&#93;&#40;http&#58;//e.com&#41;"),
    ("**bold** __u__ ~~s~~", "&#42;&#42;bold&#42;&#42; &#95;&#95;u&#95;&#95; &#126;&#126;s&#126;&#126;"),
    ("`code`", "&#96;code&#96;"),
    ("# title", "&#35; title"),
    ("&copy; &reg &#60;", "&#38;copy; &#38;reg &#38;&#35;60;"),
    ("- item", "&#45; item"),
    ("1. first", "1&#46; first"),
    (":OK:", "&#58;OK&#58;"),
    ("line one\nline two\r\n\tend", "line one line two end"),
    ("  padded  ", "padded"),
    ("a\\b", "a&#92;b"),
])
def test_escape_markdown(text, expected):
    assert escape_markdown(text) == expected


@pytest.mark.parametrize("change", [
    {"after": "0" * 40, "before": None},            # a deletion without the commit it pointed at
    {"before": "0" * 40, "after": None},            # a new branch without its head
])
def test_a_push_without_before_or_after_shows_no_empty_commit_link(change):
    """GitLab omits fields: a missing SHA leaves its field out instead of linking to `-/commit/`."""
    payload = {**load("chinese_push.json"), "commits": [], "total_commits_count": 0, **change}
    text = json.dumps(card_for(payload), ensure_ascii=False)
    assert "/-/commit/)" not in text and "[](" not in text


@pytest.mark.parametrize("side", ["before", "after"])
def test_a_push_missing_one_side_links_the_branch_not_an_empty_comparison(side):
    payload = {**load("chinese_push.json"), "commits": [], "total_commits_count": 0, side: ""}
    assert "/-/compare/" not in json.dumps(card_for(payload)) and "/-/tree/" in json.dumps(card_for(payload))


@pytest.mark.parametrize("whole", ["か\u3099", "👨\u200d👩\u200d👧", "🇨🇳", "👍🏽", "葛\U000e0100",
                                   "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"])
def test_a_shortened_line_never_splits_what_reads_as_one_character(whole):
    from gitlab_feishu.card_parts import cut
    for before in range(60, 75):
        shown = cut("修" * before + whole + "尾巴" * 10, 72)
        kept = shown[:-1]
        assert shown.endswith("…")
        assert kept.endswith(("修", "尾", "巴", whole)), repr(shown[-8:])
