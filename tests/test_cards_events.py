"""Cards for tags, merge requests and pipelines: wording, colour, content, escaping and size."""
from __future__ import annotations

import copy
import dataclasses

import pytest

from gitlab_feishu.card_labels import LABELS
from gitlab_feishu.cards import MAX_CARD_BYTES, card_content, render_card
from gitlab_feishu.gitlab import parse_event
from tests.conftest import load_payload
from tests.fake_feishu import check_card
from tests.test_cards import ALLOWED_KEYS, button_url, buttons, elements, markdown

TAG = "chinese_tag_push.json"
MR = "chinese_merge_request.json"
PIPELINE = "chinese_pipeline_failed.json"


def event_of(payload: dict, **changes):
    event = parse_event(payload, None)
    return dataclasses.replace(event, **changes) if changes else event


def card(payload: dict, lang: str = "zh", *, max_bytes: int = MAX_CARD_BYTES, **changes) -> dict:
    return render_card(event_of(payload, **changes), lang, max_bytes=max_bytes)


def title(card_: dict) -> str:
    return card_["header"]["title"]["content"]


def deleted_tag() -> dict:
    payload = load_payload(TAG)
    payload.update(before=payload["after"], after="0" * 40, checkout_sha=None, commits=[], total_commits_count=0,
                   message=None)
    return payload


def merge_request(action: str = "open", **changes) -> dict:
    payload = load_payload(MR)
    payload["object_attributes"]["action"] = action
    payload["object_attributes"].update(changes)
    if action == "update":
        payload["changes"] = {"draft": {"previous": True, "current": False}}
    return payload


def pipeline(**changes) -> dict:
    payload = load_payload(PIPELINE)
    payload["object_attributes"].update(changes)
    return payload


def fixed() -> dict:
    return {"status": "success", "fixed": True}


CARDS = {
    "tag created": lambda lang: card(load_payload(TAG), lang),
    "old tag created": lambda lang: card(load_payload("tag_push.json"), lang),
    "tag deleted": lambda lang: card(deleted_tag(), lang),
    **{f"merge request {action}": (lambda lang, a=action: card(merge_request(a), lang))
       for action in ("open", "reopen", "update", "approved", "merge", "close")},
    "doc merge request": lambda lang: card(load_payload("merge_request.json"), lang),
    "pipeline failed": lambda lang: card(pipeline(), lang),
    "pipeline fixed": lambda lang: card(pipeline(), lang, **fixed()),
    "old pipeline fixed": lambda lang: card(load_payload("zulip_pipeline_hook__pipeline_succeeded.json"), lang,
                                            fixed=True),
    "bare pipeline": lambda lang: card({"object_kind": "pipeline", "project": {"path_with_namespace": "a/b"},
                                        "object_attributes": {"id": 1, "status": "failed", "ref": "main"}}, lang),
}


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("make", CARDS.values(), ids=CARDS.keys())
def test_card_is_json_2_that_feishu_accepts(make, lang):
    made = make(lang)
    check_card(made)
    assert set(made) <= ALLOWED_KEYS["card"] and set(made["header"]) <= ALLOWED_KEYS["header"]
    for element in elements(made):
        assert set(element) <= ALLOWED_KEYS[element["tag"]]
    assert len(buttons(made)) <= 1 and "[](" not in card_content(made)


def test_labels_have_the_same_keys_in_both_languages():
    assert set(LABELS["zh"]) == set(LABELS["en"])


# --- tags ------------------------------------------------------------------------------------

def test_new_tag_card():
    made = card(load_payload(TAG))
    assert made["header"]["template"] == "turquoise"
    assert title(made) == "张三 在 Y_野水发财（客户端） 新建了标签"
    assert made["header"]["subtitle"]["content"] == "v2.3.0"
    text = markdown(made)
    assert "[v2.3.0](https://git.example.cn/grouptwogame/yeshui-client/-/tags/v2.3.0)" in text
    assert "[5d4c3b2a](https://git.example.cn/grouptwogame/yeshui-client/-/commit/5d4c3b2a" in text
    assert "发布：2.3.0 版本号与更新日志" in text
    assert "**标签说明**\n2&#46;3.0 正式版\n&#45; 新增：微信登录" in text
    assert buttons(made)[0]["text"]["content"] == "查看标签"


def test_tag_without_commits_names_its_commit():
    text = markdown(card(load_payload("zulip_tag_push_hook__add_tag.json")))
    assert "所在提交" in text and "/-/commit/eb6ae1e591e0819dc5bf187c6bfe18ec065a80e9)" in text
    assert "标签说明" not in text


def test_deleted_tag_card():
    made = card(deleted_tag())
    assert made["header"]["template"] == "grey"
    assert title(made) == "张三 删除了 Y_野水发财（客户端） 的标签"
    assert "~~v2.3.0~~" in markdown(made) and "所在提交" not in markdown(made)
    assert button_url(made) == "https://git.example.cn/grouptwogame/yeshui-client/-/tags"
    assert buttons(made)[0]["text"]["content"] == "查看标签列表"


def test_tag_message_is_escaped_and_cut():
    payload = load_payload(TAG)
    payload["message"] = "<at id=all></at> **发布**\n" + "说明" * 300
    text = markdown(card(payload))
    assert "<at" not in text and "&#60;at id&#61;all&#62;" in text and "&#42;&#42;发布&#42;&#42;" in text
    assert "…" in text and text.count("说明") < 120


# --- merge requests --------------------------------------------------------------------------

@pytest.mark.parametrize(("action", "colour", "zh", "en"), [
    ("open", "blue", "张三 在 {p} 发起了合并请求", "张三 opened a merge request in {p}"),
    ("reopen", "indigo", "张三 在 {p} 重新打开了合并请求", "张三 reopened a merge request in {p}"),
    ("update", "wathet", "张三 在 {p} 把合并请求标记为可评审", "张三 marked a merge request ready in {p}"),
    ("approved", "green", "张三 在 {p} 批准了合并请求", "张三 approved a merge request in {p}"),
    ("merge", "purple", "张三 在 {p} 合并了合并请求", "张三 merged a merge request in {p}"),
    ("close", "grey", "张三 在 {p} 关闭了合并请求", "张三 closed a merge request in {p}"),
])
def test_each_merge_request_action_has_its_wording_and_colour(action, colour, zh, en):
    project = "Y_野水发财（客户端）"
    assert card(merge_request(action))["header"]["template"] == colour
    assert title(card(merge_request(action))) == zh.format(p=project)
    assert title(card(merge_request(action), "en")) == en.format(p=project)


def test_merge_request_card_content():
    made = card(load_payload(MR))
    assert made["header"]["subtitle"]["content"] == "!17 · feature/登录界面 → main"
    text = markdown(made)
    assert "[&#33;17](https://git.example.cn/grouptwogame/yeshui-client/-/merge_requests/17) " \
           "**登录界面：微信登录与 1080p 适配**" in text
    assert "feature/登录界面 → main" in text
    assert "评审人</font>\n李四" in text and "指派给</font>\n王五" in text
    assert "作者" not in text                      # the author opened it: the title already names them
    assert button_url(made) == "https://git.example.cn/grouptwogame/yeshui-client/-/merge_requests/17"
    assert made["config"]["summary"]["content"] == "张三 发起了合并请求 !17：登录界面：微信登录与 1080p 适配"


def test_a_merge_request_from_a_fork_names_the_fork_as_gitlab_does():
    payload = load_payload(MR)
    payload["object_attributes"]["source"]["path_with_namespace"] = "lisi/yeshui-client"
    made = card(payload)
    assert made["header"]["subtitle"]["content"] == "!17 · lisi/yeshui-client:feature/登录界面 → main"
    assert "lisi/yeshui&#45;client&#58;feature/登录界面 → main" in markdown(made)


def test_merge_request_description_is_an_escaped_excerpt():
    text = markdown(card(load_payload(MR)))
    assert "改了什么\n&#45; 新增 &#42;&#42;微信登录&#42;&#42; &#60;at id&#61;all&#62;&#60;/at&#62;" in text
    assert "<at" not in card_content(card(load_payload(MR)))
    long = markdown(card(merge_request(description="很长的描述" * 200)))
    assert "…" in long and long.count("很长的描述") <= 40


def test_description_excerpt_hides_template_comments_and_image_addresses():
    description = ("## 这个 MR 做了什么？\n\n<!-- 简要描述改动，\n并关联 issue -->\n修复按钮错位。\n\n"
                   "![截图](/uploads/3f2a1b/image.png)\n<!-- 未闭合的注释")
    text = markdown(card(merge_request(description=description)))
    assert "这个 MR 做了什么？\n修复按钮错位。\n&#91;截图&#93;" in text
    assert "&#60;&#33;&#45;&#45;" not in text and "uploads" not in text and "注释" not in text


@pytest.mark.parametrize("underline", ["=====", "-----"])
def test_a_heading_underline_in_a_description_stays_text(underline):
    text = markdown(card(merge_request(description=f"发布说明\n{underline}\n正文")))
    assert f"发布说明\n{underline}" not in text and "发布说明\n&#" in text


def test_merge_request_shows_its_author_when_someone_else_acts():
    payload = merge_request("merge", author_id=6)
    payload["user"] = {"id": 9, "name": "赵六", "username": "zhaoliu"}
    made = card(payload)
    assert title(made).startswith("赵六 在") and "作者</font>\n王五 &#40;wangwu&#41;" in markdown(made)


def test_merge_request_without_description_reviewers_or_assignees():
    payload = merge_request(description=None)
    del payload["reviewers"], payload["assignees"]
    text = markdown(card(payload))
    assert "评审人" not in text and "指派给" not in text and "改了什么" not in text


@pytest.mark.parametrize("title", [None, "", "   "])
def test_a_merge_request_without_a_title_shows_no_empty_bold(title):
    payload = merge_request()
    payload["object_attributes"]["title"] = title
    text = markdown(card(payload))
    assert "****" not in text and "** **" not in text
    assert "[&#33;17](https://git.example.cn/grouptwogame/yeshui-client/-/merge_requests/17)" in text
    assert card(payload)["config"]["summary"]["content"] == "张三 发起了合并请求 !17"


# --- pipelines -------------------------------------------------------------------------------

def test_failed_pipeline_card():
    made = card(pipeline())
    assert made["header"]["template"] == "red"
    assert title(made) == "Y_野水发财（客户端） 的流水线失败了"
    assert made["header"]["subtitle"]["content"] == "feature/登录界面 · #5031"
    text = markdown(made)
    assert "[&#35;5031](https://git.example.cn/grouptwogame/yeshui-client/-/pipelines/5031) 失败" in text
    assert "5 分 18 秒" in text and "张三 &#40;zhangsan&#41;" in text
    assert ("**失败的作业**\nbuild&#45;ios <font color='grey'>· build · 超时或卡住</font>\n"
            "单元测试 <font color='grey'>· test · 脚本执行失败</font>") in text
    assert button_url(made) == "https://git.example.cn/grouptwogame/yeshui-client/-/pipelines/5031"
    assert buttons(made)[0]["text"]["content"] == "查看流水线"


def test_fixed_pipeline_card():
    made = card(pipeline(), **fixed())
    assert made["header"]["template"] == "green"
    assert title(made) == "Y_野水发财（客户端） 的流水线恢复了"
    text = markdown(made)
    assert "通过" in text and "上一次完成的流水线失败了" in text and "失败的作业" not in text


@pytest.mark.parametrize("changes, note", [
    ({}, "这个分支上一次完成的流水线失败了"),
    ({"tag": True}, "这个标签上一次完成的流水线失败了"),
    ({"merge_request_iid": 18}, "这个合并请求上一次完成的流水线失败了"),
])
def test_a_fixed_card_names_what_was_fixed(changes, note):
    assert note in markdown(card(pipeline(), **fixed(), **changes))


@pytest.mark.parametrize(("lang", "reason", "shown"), [
    ("zh", "script_failure", "脚本执行失败"), ("zh", "runner_system_failure", "Runner 系统故障"),
    ("en", "stuck_or_timeout_failure", "timed out or stuck"), ("zh", "some_new_failure", "some new failure")])
def test_failure_reasons_are_words_not_gitlab_codes(lang, reason, shown):
    payload = pipeline()
    for build in payload["builds"]:
        build["failure_reason"] = reason
    text = markdown(card(payload, lang))
    assert f"· {shown}</font>" in text and "&#95;failure" not in text


def test_pipeline_without_builds_says_where_to_look():
    payload = pipeline()
    del payload["builds"]
    assert "通知里没有列出失败的作业" in markdown(card(payload))


def test_many_failed_jobs_are_counted():
    payload = pipeline()
    template = payload["builds"][1]
    payload["builds"] = [dict(copy.deepcopy(template), id=i, name=f"job-{i}") for i in range(1, 13)]
    text = markdown(card(payload))
    assert "job&#45;5" in text and "job&#45;6" not in text and "还有 7 个失败的作业" in text


@pytest.mark.parametrize(("source", "shown"), [("schedule", "定时任务"), ("web", "手动运行"),
                                               ("push", None), ("some_new_source", "some&#95;new&#95;source")])
def test_pipeline_source_is_named_unless_it_is_a_push(source, shown):
    text = markdown(card(pipeline(source=source)))
    if shown:
        assert f"张三 &#40;zhangsan&#41; <font color='grey'>· {shown}</font>" in text
    else:
        assert "张三 &#40;zhangsan&#41;</font>" not in text and "· push" not in text


def test_tag_pipeline_links_the_tag():
    text = markdown(card(pipeline(ref="v2.3.0", tag=True)))
    assert "标签</font>\n[v2.3.0](https://git.example.cn/grouptwogame/yeshui-client/-/tags/v2.3.0)" in text


def test_english_cards_use_english_labels():
    for made in (card(load_payload("tag_push.json"), "en"), card(load_payload("merge_request.json"), "en"),
                 card(load_payload("zulip_pipeline_hook__pipeline_succeeded.json"), "en", fixed=True)):
        assert not any("\u4e00" <= ch <= "\u9fff" for ch in card_content(made))


# --- size ------------------------------------------------------------------------------------

def huge_jobs() -> dict:
    payload = pipeline()
    template = payload["builds"][1]
    payload["builds"] = [dict(copy.deepcopy(template), id=i, name=f"{i}" + "作业" * 2_000, stage="阶段" * 2_000,
                              failure_reason="x" * 5_000) for i in range(500)]
    return payload


# Each makes (payload, event changes) for a card that would be far too big without trimming.
ADVERSARIAL = {
    "100 KB description": lambda: (merge_request(description="<at id=all></at>**x**\n" * 5_000), {}),
    "huge MR title and branches": lambda: (merge_request(title="标题" * 50_000, source_branch="分" * 20_000,
                                                         target_branch="支" * 20_000), {}),
    "500 reviewers": lambda: ({**load_payload(MR), "reviewers": [
        {"id": i, "name": "评审" * 500, "username": f"r{i}"} for i in range(500)]}, {}),
    "500 huge failed jobs": lambda: (huge_jobs(), {}),
    "huge tag message and name": lambda: ({**load_payload(TAG), "message": "说明\n" * 50_000,
                                           "ref": "refs/tags/" + "标" * 20_000}, {}),
    "huge pipeline ref and user": lambda: (pipeline(ref="分支" * 20_000), {"actor": dataclasses.replace(
        event_of(pipeline()).actor, name="<" * 50_000)}),
    "huge fixed pipeline": lambda: (huge_jobs(), {**fixed(), "url": "https://e.com/" + "p" * 50_000}),
    "lone surrogates": lambda: (merge_request(title="bad \ud800 title", description="bad \udfff text"), {}),
}


@pytest.mark.parametrize("max_bytes", [MAX_CARD_BYTES, 20 * 1024])
@pytest.mark.parametrize("make", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_card_content_never_exceeds_the_limit(make, max_bytes):
    payload, changes = make()
    made = card(payload, max_bytes=max_bytes, **changes)
    assert len(card_content(made).encode("utf-8")) <= max_bytes
    assert title(made)
    check_card(made)


def test_trimming_lists_fewer_jobs_and_counts_the_rest():
    made = card(huge_jobs(), max_bytes=4_000)
    text = markdown(made)
    shown = sum(1 for line in text.splitlines() if "作业作业" in line)
    assert len(card_content(made).encode("utf-8")) <= 4_000
    assert 0 < shown < 5 and f"还有 {500 - shown} 个失败的作业" in text
