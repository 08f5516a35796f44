"""reatco.interactive: what the browser editor builds its configs from (no browser here)."""

from pathlib import Path

from reatco.config_files import load_config
from reatco.interactive import ObjectDraft, build_config, candidate_words, drafts_from_config

ROOT = Path(__file__).resolve().parents[1]


def test_candidate_words_are_words_and_pairs_without_articles():
    assert candidate_words("a green circle and a yellow triangle on a gray background") == [
        "green", "green circle", "circle", "yellow", "yellow triangle", "triangle", "gray", "gray background", "background"]


def test_drafts_round_trip_through_a_config():
    base = load_config(ROOT / "configs" / "shapes.yaml")
    drafts = drafts_from_config(base)
    assert drafts[0].word == "green circle" and drafts[0].keyframes == {0: [25, 41, 47, 63], 7: [33, 33, 55, 55]}
    drafts[1] = ObjectDraft(word="yellow triangle", source_word="blue square", instance="top", margin=2)
    cfg = build_config(base, base.video.path, base.video.prompt, base.edits[0].prompt, drafts + [ObjectDraft()])
    first, second = cfg.edits[0].objects
    assert first.boxes == {0: [25, 41, 47, 63], 7: [33, 33, 55, 55]} and first.box is None
    assert second.source.word == "blue square" and second.source.instance == "top" and second.source.margin == 2
    assert drafts_from_config(cfg)[1].source_word == "blue square"
    one = build_config(base, base.video.path, base.video.prompt, base.edits[0].prompt, [ObjectDraft("green circle", {3: [0, 0, 16, 16]})])
    assert one.edits[0].objects[0].box == [0, 0, 16, 16]
    assert build_config(base, base.video.path, base.video.prompt, "", [ObjectDraft()]).edits == []
