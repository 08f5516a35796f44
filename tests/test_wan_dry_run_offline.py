"""configs/dolphins-wan.yaml dry-runs offline: with the hub out of reach and nothing in the Hugging
Face cache, the released model's published architecture stands in for its configs and the words
are checked against the prompts' text (with a WARNING that umT5's pieces were not); a run still
stops before anything is written, and a local folder still gets the full token check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from reatco.backbones.wan.geometry import WAN21
from reatco.backbones.wan.known_models import KNOWN_WAN_MODELS, known_wan_model
from reatco.backbones.wan.words import find_word_without_tokenizer, word_positions
from reatco.errors import ConfigError
from reatco.video import write_frames

from scripts_loader import load_script
from tiny_wan import save_tiny_wan, tiny_wan_tokenizer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "dolphins-wan.yaml"
HUB_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
edit_script = load_script("edit")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """The hub unreachable (the probe the runner asks) and an empty Hugging Face cache; the probes
    asked are counted."""
    from huggingface_hub import constants

    from reatco import environment

    probes = []
    monkeypatch.setattr(environment, "hub_reachable", lambda timeout=3.0: bool(probes.append(1)))
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return probes


@pytest.fixture(scope="module")
def dolphins_clip(tmp_path_factory):
    """A 16-frame 448 × 768 clip standing in for the paper's (the config's size: no resizing)."""
    folder = tmp_path_factory.mktemp("dolphins") / "frames"
    rows = np.linspace(0, 255, 448, dtype=np.uint8)[None, :, None, None]
    frames = np.broadcast_to(rows, (16, 448, 768, 3)).copy()
    for f in range(16):
        frames[f, 200:300, 100 + 10 * f : 200 + 10 * f] = (40, 90, 200)
    write_frames(frames, folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("tiny-wan") / "model")


def _dry_run(out, clip, *sets, config=CONFIG, dry_run=True):
    args = ["--config", str(config), "--output_dir", str(out), "--set", f"video.path={clip}", "--set", "model.dtype=float32"]
    for s in sets:
        args += ["--set", s]
    return edit_script.main(args + (["--dry-run"] if dry_run else []))


def _edit_names() -> list[str]:
    return [e["name"] for e in yaml.safe_load(CONFIG.read_text())["edits"]]


def _warnings(caplog) -> str:
    """The WARNING lines logged (the CLI prints them on stderr; pytest collects them here)."""
    return "\n".join(f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.levelname == "WARNING")


def test_dolphins_wan_dry_runs_offline(offline, dolphins_clip, tiny_model, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert _dry_run(out, dolphins_clip) == 0
    captured = capsys.readouterr()
    warnings = _warnings(caplog)
    assert offline, "the runner asked whether the hub can be reached"
    assert "WARNING the words were NOT checked against umT5's pieces" in warnings
    assert "tokenizer/" in warnings and "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in warnings
    assert "published architecture" in warnings and "30 blocks" in warnings
    assert captured.out.count("NOT checked (no tokenizer") == len(_edit_names())
    assert "1  jellyfish   <- 'jellyfish'" in captured.out and "'shark' -> token indices not known" in captured.out
    assert sorted(p.name for p in out.iterdir()) == sorted(_edit_names())
    # the regions are drawn on the same 16-px token grid as from a local folder of the same geometry
    local = tmp_path / "local"
    caplog.clear()
    assert _dry_run(local, dolphins_clip, f"model.pretrained={tiny_model}") == 0
    assert "NOT checked" not in _warnings(caplog) + capsys.readouterr().out
    for name in _edit_names():
        assert (out / name / "regions.png").read_bytes() == (local / name / "regions.png").read_bytes(), name


def _with_edit(tmp_path, k: int, j: int, **changes) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["edits"][k]["objects"][j].update(changes)
    cfg["edits"][k]["objects"][j] = {key: v for key, v in cfg["edits"][k]["objects"][j].items() if v is not None}
    cfg["base_config"] = str(ROOT / "configs" / cfg["base_config"])
    path = tmp_path / "dolphins-wan-changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("changes, field", [
    ({"word": "whale"}, "edits[2].objects[1].word"),  # not in the prompt
    ({"word": "Octopus"}, "edits[2].objects[1].word"),  # cased otherwise than in the prompt
    ({"word": "octo"}, "edits[2].objects[1].word"),  # only inside a word
    ({"word": "jellyfish"}, "edits[2].objects[1].word"),  # objects[0]'s word already
    ({"word": "a", "occurrence": 2}, "edits[2].objects[1].occurrence"),  # "a" once ("A" is another word)
])
def test_offline_dry_run_refuses_a_word_not_in_its_prompt(offline, dolphins_clip, tmp_path, capsys, changes, field):
    out = tmp_path / "out"
    assert _dry_run(out, dolphins_clip, config=_with_edit(tmp_path, 2, 1, **changes)) == 2
    assert f"error: {field}:" in capsys.readouterr().err
    assert not out.exists()


def test_offline_dry_run_checks_a_source_word_against_the_source_prompt(offline, dolphins_clip, tmp_path, capsys):
    """`source: {word: …}` (a region found in the model's attention to the source prompt's word):
    offline, the word is checked against video.prompt's text."""
    config = _with_edit(tmp_path, 0, 0, box=None, source={"word": "dolphins"})
    out = tmp_path / "out"
    assert _dry_run(out, dolphins_clip, config=config) == 0
    assert "'jellyfish': region found when the edit runs" in capsys.readouterr().out
    assert _dry_run(tmp_path / "out2", dolphins_clip, config=_with_edit(tmp_path, 0, 0, box=None, source={"word": "whales"})) == 2
    assert "error: edits[0].objects[0].source.word:" in capsys.readouterr().err


def test_offline_dry_run_checks_rad_blocks_against_the_published_layers(offline, dolphins_clip, tmp_path, capsys):
    assert _dry_run(tmp_path / "out", dolphins_clip, "rad.blocks=[7,30]") == 2
    err = capsys.readouterr().err
    assert "error: rad.blocks:" in err and "0…29" in err  # Wan 2.1 1.3B: 30 blocks
    assert _dry_run(tmp_path / "out", dolphins_clip, "rad.blocks=[29]") == 0
    # the frame count and the size are checked on the published VAE's factors and patch
    assert _dry_run(tmp_path / "out2", dolphins_clip, "video.pad_frames=false") == 2
    assert "error: video.n_frames:" in capsys.readouterr().err
    assert _dry_run(tmp_path / "out2", dolphins_clip, "video.height=440") == 2
    assert "error: video.height:" in capsys.readouterr().err


def test_offline_run_stops_before_anything_is_written(offline, dolphins_clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert _dry_run(out, dolphins_clip, dry_run=False) == 2
    err = capsys.readouterr().err
    assert "error: model.pretrained: cannot read" in err and "cannot be reached" in err
    assert not out.exists()
    # a runner that dry-ran with the stand-ins does not run with them
    from reatco.backbones import edit_runner
    from reatco.config_files import load_config

    runner = edit_runner(load_config(CONFIG, [f"video.path={dolphins_clip}", f"output_dir={out}", "model.dtype=float32"]))
    assert all(item.token_indices == [None, None] for item in runner.prepare(dry_run=True))
    with pytest.raises(ConfigError) as err:
        runner.prepare()
    assert err.value.field == "model.pretrained"


def test_cached_tokenizer_gets_the_full_word_check_offline(offline, dolphins_clip, tmp_path, capsys, caplog):
    """tokenizer/ alone in the Hugging Face cache (no configs, no weights): the words are checked
    against its tokens, the published architecture stands in for the configs."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    tiny_wan_tokenizer().save_pretrained(repo / "snapshots" / commit / "tokenizer")
    out = tmp_path / "out"
    assert _dry_run(out, dolphins_clip) == 0
    captured = capsys.readouterr()
    assert "NOT checked" not in _warnings(caplog) + captured.out and "published architecture" in _warnings(caplog)
    assert "'jellyfish' -> token indices [1]" in captured.out and "</s>" in captured.out
    assert _dry_run(tmp_path / "bad", dolphins_clip, config=_with_edit(tmp_path, 0, 1, word="whale")) == 2
    assert "umT5 tokens" in capsys.readouterr().err


def test_local_folder_keeps_the_full_token_check(offline, dolphins_clip, tiny_model, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert _dry_run(out, dolphins_clip, f"model.pretrained={tiny_model}") == 0
    captured = capsys.readouterr()
    assert not offline, "a local folder never asks the hub"
    assert "'jellyfish' -> token indices [1]" in captured.out and "NOT checked" not in _warnings(caplog) + captured.out
    # a local folder is never stood in for: a missing config is its own error
    (tiny_model / "vae" / "config.json").rename(tiny_model / "vae" / "moved.json")
    try:
        assert _dry_run(tmp_path / "out2", dolphins_clip, f"model.pretrained={tiny_model}") == 2
        assert "has no vae/config.json" in capsys.readouterr().err
    finally:
        (tiny_model / "vae" / "moved.json").rename(tiny_model / "vae" / "config.json")


def test_unknown_hub_id_offline_is_refused_even_in_a_dry_run(offline, dolphins_clip, tmp_path, capsys):
    assert _dry_run(tmp_path / "out", dolphins_clip, "model.pretrained=someone/Wan2.1-finetune") == 2
    assert "error: model.pretrained: cannot read" in capsys.readouterr().err


def test_known_models_are_the_released_architectures():
    by_id = {m.hub_id: m for m in KNOWN_WAN_MODELS}
    assert [m.num_layers for m in by_id.values()] == [30, 40, 40]
    assert all(m.geometry() == WAN21 for m in KNOWN_WAN_MODELS)  # 8× / 4× VAE, patch 2: 16-px tokens
    assert [m.two_experts for m in by_id.values()] == [False, False, True]
    assert known_wan_model("wan-ai/wan2.1-t2v-1.3b-diffusers") is by_id[HUB_ID]  # the hub ignores case
    assert known_wan_model("Wan-AI/Wan2.1-T2V-1.3B") is None and known_wan_model(str(ROOT)) is None
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    # the records build diffusers' modules (meta device: no memory), whose own geometry they give
    import torch

    from reatco.backbones.wan.geometry import geometry_of

    with torch.device("meta"):
        model = by_id[HUB_ID]
        assert geometry_of(AutoencoderKLWan(**model.vae), WanTransformer3DModel(**model.transformer_config)) == model.geometry()


def _sentencepiece_like_tokenizer():
    """A unigram tokenizer with SentencePiece's "▁" word starts, some words in two pieces
    ("▁jelly" "fish") and punctuation pieces of its own — umT5's kind, built here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "▁", ".", ",", "fish", "▁jelly", "▁gold", "▁A", "▁a", "▁and", "▁shark", "▁are",
              "▁swimming", "▁in", "▁the", "▁blue", "▁ocean", "▁cat", "er", "pillar", "s"]
    tok = Tokenizer(models.Unigram([(p, -1.0 if p.startswith("▁") else -2.0) for p in pieces], unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("prompt, word, occurrence", [
    ("A jellyfish and a shark are swimming in the blue ocean.", "jellyfish", None),  # two pieces
    ("A goldfish and a shark are swimming in the blue ocean.", "shark", None),
    ("A goldfish and a goldfish are swimming", "goldfish", 2),
    ("A goldfish and a goldfish are swimming", "goldfish", None),  # twice: occurrence needed
    ("A goldfish and a goldfish are swimming", "goldfish", 3),
    ("A caterpillar and a shark", "cat", None),  # inside a word
    ("A jellyfish and a shark", "fish", None),
    ("A shark and a cat", "whale", None),
])
def test_text_check_agrees_with_the_pieces_where_it_decides(prompt, word, occurrence):
    """Where the text alone decides, its verdict is the tokenizer's: found (the same word, the
    same occurrence) or refused naming the same field."""
    tokenizer = _sentencepiece_like_tokenizer()

    def verdict(check):
        try:
            return check()
        except ConfigError as err:
            return err.field

    by_pieces = verdict(lambda: word_positions(tokenizer, prompt, word, occurrence, field="o.word"))
    by_text = verdict(lambda: find_word_without_tokenizer(prompt, word, occurrence, field="o.word"))
    if isinstance(by_pieces, str):
        assert by_text == by_pieces
    else:  # the pieces' first position is where the matched word starts
        assert by_text.unchecked is None
        text_words = prompt.split()
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
        words_before = sum(p.startswith("▁") for p in pieces[: by_pieces[0]])
        assert by_text.words[0] == words_before and text_words[by_text.words[0]] == word


def test_offline_dry_run_says_which_word_needs_the_tokenizer(offline, dolphins_clip, tmp_path, capsys, caplog):
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["edits"][1]["prompt"] = "A goldfish and a shark, swimming in the blue ocean."
    cfg["base_config"] = str(ROOT / "configs" / cfg["base_config"])
    path = tmp_path / "punctuated.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert _dry_run(tmp_path / "out", dolphins_clip, config=path) == 0
    assert "WARNING edits[1].objects[1].word: 'shark' touches punctuation in the prompt ('shark,')" in _warnings(caplog)
    assert "needs the tokenizer: 'shark' touches punctuation" in capsys.readouterr().out


@pytest.mark.parametrize("prompt", ["A shark, a goldfish", "A goldfish and a (shark)", "A shark and a shark."])
def test_text_check_leaves_words_touching_punctuation_to_the_tokenizer(prompt):
    match = find_word_without_tokenizer(prompt, "shark")
    assert match.words is None and "needs the tokenizer" in match.unchecked and "punctuation" in match.unchecked


def test_text_check_leaves_a_word_far_into_a_long_prompt_to_the_tokenizer():
    prompt = "the blue ocean " * 60 + "a shark"
    far = find_word_without_tokenizer(prompt, "shark")
    assert far.words is None and "512 tokens" in far.unchecked
    assert find_word_without_tokenizer("a shark " + prompt[:-8], "shark").words == (1,)
