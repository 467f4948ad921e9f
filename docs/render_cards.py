"""Regenerate the card pictures in docs/ from the real GitLab fixtures.

usage (from the repository root):
    python docs/render_cards.py [PATH/TO/card_preview.py]

Always writes docs/cards.json (the cards, as the service would send them).
Given the path of a card previewer (one that takes CARDS.json OUT.png, such as
the project's shared tools/card_preview.py), it also draws docs/card-*.png.
"""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gitlab_feishu.cards import render_card  # noqa: E402
from gitlab_feishu.gitlab import parse_event  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "gitlab"
DOCS = ROOT / "docs"
PICTURES = {
    "card-push": "chinese_push.json",
    "card-new-branch": "zulip_push_hook__push_local_branch_without_commits.json",
    "card-delete-branch": "zulip_push_hook__remove_branch.json",
    "card-tag": "chinese_tag_push.json",
    "card-merge-request": "chinese_merge_request.json",
    "card-pipeline-failed": "chinese_pipeline_failed.json",
}


def card_for(fixture: str, lang: str = "zh", **changes) -> dict:
    """The card the service would send for a fixture; `changes` replace fields of the parsed event."""
    payload = json.loads((FIXTURES / fixture).read_text(encoding="utf-8"))
    event = parse_event(payload, None)
    return render_card(dataclasses.replace(event, **changes) if changes else event, lang)


def main() -> None:
    cards = {name: card_for(fixture) for name, fixture in PICTURES.items()}
    # The service marks a success "fixed" when the ref's previous pipeline failed (see pipelines.py).
    cards["card-pipeline-fixed"] = card_for("chinese_pipeline_failed.json", status="success", fixed=True)
    # A deleted tag: GitLab sends the all-zero SHA as `after`, and no commit.
    cards["card-tag-deleted"] = card_for("chinese_tag_push.json", after="0" * 40, commit_sha="", commit=None,
                                         message=None)
    (DOCS / "cards.json").write_text(json.dumps(cards, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if len(sys.argv) > 1:
        for name, card in cards.items():
            source = DOCS / f"{name}.json"
            source.write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
            subprocess.run([sys.executable, sys.argv[1], str(source), str(DOCS / f"{name}.png")], check=True)
            source.unlink()


if __name__ == "__main__":
    main()
