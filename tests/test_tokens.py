"""Words of interest → token indices on Stable Diffusion's own tokenizer (OpenAI CLIP BPE)."""

import logging
from types import SimpleNamespace

import pytest

from reatco import tokens
from reatco.errors import ConfigError
from reatco.regions.settings import ObjectConfig
from reatco.tokens import (
    describe_tokens,
    load_tokenizer,
    openai_clip_tokenizer,
    resolve_objects_tokens,
    token_table,
    word_token_indices,
)

DOLPHINS = "A jellyfish and a goldfish are swimming in the blue ocean."
BIRDS = "A cat, a rabbit, and a chicken are standing on a wall."


@pytest.fixture(scope="module")
def tok():
    return openai_clip_tokenizer()


def test_paper_prompts_give_the_official_indices(tok):
    # The indices the official scripts hard-code (SOT = 0).
    assert word_token_indices(tok, DOLPHINS, "jellyfish") == [2]
    assert word_token_indices(tok, DOLPHINS, "goldfish") == [5]
    assert word_token_indices(tok, BIRDS, "cat") == [2]
    assert word_token_indices(tok, BIRDS, "rabbit") == [5]
    assert word_token_indices(tok, BIRDS, "chicken") == [9]


def test_resolve_objects_on_paper_prompts(tok):
    objects = [SimpleNamespace(word="cat", occurrence=None), ObjectConfig(word="rabbit"), SimpleNamespace(word="chicken", occurrence=None)]
    assert resolve_objects_tokens(tok, BIRDS, objects, "edits[0].objects") == [[2], [5], [9]]


def test_case_insensitive_like_the_tokenizer(tok):
    assert word_token_indices(tok, DOLPHINS, "Goldfish") == [5]


def test_multi_token_word_uses_every_sub_token_and_says_so(tok, caplog):
    prompt = "a sdfwerqu near a cat"
    sub = tok.tokenize("sdfwerqu")
    assert len(sub) > 1  # a made-up word: several BPE pieces
    idx = word_token_indices(tok, prompt, "sdfwerqu")
    assert idx == list(range(2, 2 + len(sub)))
    assert word_token_indices(tok, prompt, "cat") == [2 + len(sub) + 2]
    line = describe_tokens(tok, prompt, "sdfwerqu", idx)
    assert str(idx) in line and "rad.word_tokens" in line
    with caplog.at_level(logging.INFO, logger="reatco.tokens"):
        resolve_objects_tokens(tok, prompt, [ObjectConfig(word="sdfwerqu")])
    assert "rad.word_tokens" in caplog.text


def test_phrase_maps_to_consecutive_tokens(tok):
    assert word_token_indices(tok, "a yellow triangle and a red circle", "yellow triangle") == [2, 3]
    assert word_token_indices(tok, "a yellow triangle and a red circle", "red  circle") == [6, 7]


def test_matching_is_on_token_boundaries(tok):
    with pytest.raises(ConfigError) as e:
        word_token_indices(tok, "a caterpillar on a leaf", "cat", field="edits[0].objects[0].word")
    assert e.value.field == "edits[0].objects[0].word"
    assert "caterpillar" in str(e.value)  # the table of the prompt's tokens is printed
    # "cat" is found as a word even next to "caterpillar" and punctuation.
    assert word_token_indices(tok, "a caterpillar and a cat.", "cat") == [5]
    # A multi-piece word does not match the tail of a longer word made of the same pieces.
    assert tok.tokenize("xsdfwerqu") == ["x"] + tok.tokenize("sdfwerqu")  # same pieces, one more in front
    with pytest.raises(ConfigError):
        word_token_indices(tok, "a xsdfwerqu", "sdfwerqu")
    assert word_token_indices(tok, "a xsdfwerqu and a sdfwerqu", "sdfwerqu") == [9, 10, 11, 12]


def test_absent_word_prints_the_token_table(tok):
    with pytest.raises(ConfigError) as e:
        word_token_indices(tok, DOLPHINS, "shark", field="edits[1].objects[0].word")
    msg = str(e.value)
    assert msg.startswith("edits[1].objects[0].word: ")
    assert "    2  jellyfish" in msg and "    5  goldfish" in msg and "    0  <|startoftext|>" in msg


def test_repeated_word_needs_occurrence(tok):
    prompt = "a cat and a cat on a wall"
    with pytest.raises(ConfigError) as e:
        word_token_indices(tok, prompt, "cat", field="objects[0].word")
    msg = str(e.value)
    assert "occurs 2 times" in msg and "[2]" in msg and "[5]" in msg and "occurrence" in msg
    assert word_token_indices(tok, prompt, "cat", occurrence=1) == [2]
    assert word_token_indices(tok, prompt, "cat", occurrence=2) == [5]
    with pytest.raises(ConfigError) as e:
        word_token_indices(tok, prompt, "cat", occurrence=3, field="objects[0].word")
    assert e.value.field == "objects[0].occurrence"


def test_two_objects_on_the_same_token_is_an_error(tok):
    with pytest.raises(ConfigError) as e:
        resolve_objects_tokens(tok, DOLPHINS, [ObjectConfig(word="goldfish"), ObjectConfig(word="goldfish")], "edits[0].objects")
    assert e.value.field == "edits[0].objects[1].word"


def test_word_beyond_max_length_is_an_error(tok):
    prompt = " ".join(["blue"] * 80) + " goldfish"
    with pytest.raises(ConfigError) as e:
        word_token_indices(tok, prompt, "goldfish", field="w")
    assert "77" in str(e.value) and "shorten" in str(e.value)
    # Index 75 is the last one the text encoder sees (76 is EOT after truncation).
    ok = " ".join(["blue"] * 74) + " goldfish"
    assert word_token_indices(tok, ok, "goldfish") == [75]
    assert "(truncated)" in token_table(tok, prompt)


def test_empty_word_is_an_error(tok):
    with pytest.raises(ConfigError):
        word_token_indices(tok, DOLPHINS, "  ")


def test_token_table_lists_indices(tok):
    table = token_table(tok, BIRDS).splitlines()
    assert table[1].split() == ["idx", "token"]
    assert table[2 + 9].split() == ["9", "chicken"]
    assert table[-1].split() == ["16", "<|endoftext|>"]


def test_load_tokenizer_from_a_local_folder(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "tokenizer" / "nothing_here").mkdir()
    loaded = load_tokenizer(str(tmp_path))
    assert loaded(DOLPHINS).input_ids == tok(DOLPHINS).input_ids
    with pytest.raises(ConfigError) as e:
        load_tokenizer(str(tmp_path / "tokenizer" / "nothing_here"))  # an existing folder without a tokenizer
    assert e.value.field == "model.pretrained"


def test_load_tokenizer_offline_falls_back_only_for_sd1(monkeypatch, caplog):
    from transformers import CLIPTokenizer

    def unreachable(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", unreachable)
    monkeypatch.setattr(tokens, "hub_reachable", lambda timeout=3.0: False)
    with caplog.at_level(logging.WARNING, logger="reatco.tokens"):
        fallback = load_tokenizer("CompVis/stable-diffusion-v1-4")
    assert fallback.get_vocab() == openai_clip_tokenizer().get_vocab() and "OpenAI CLIP" in caplog.text
    assert load_tokenizer("runwayml/stable-diffusion-v1-5").get_vocab() == fallback.get_vocab()
    with pytest.raises(ConfigError) as e:
        load_tokenizer("stabilityai/stable-diffusion-2-1")
    assert e.value.field == "model.pretrained"


@pytest.mark.parametrize("model", ["sd", "shapes"])
def test_the_encoders_input_from_one_tokenization_is_the_tokenizers_own(tok, model):
    """PromptTokens keeps the untruncated ids; the text encoder's input cut and padded from them is
    what tokenizer(prompt, padding="max_length", truncation=True) gives, short prompts and long."""
    from pathlib import Path

    from reatco.tokens import tokenize_prompt

    tokenizer = tok if model == "sd" else load_tokenizer(Path(__file__).resolve().parent.parent / "data" / "shapes-model")
    long = " ".join(["a red circle and a blue square"] * 20)
    for prompt in ("", "a green circle and a yellow triangle on a gray background", DOLPHINS, long):
        tokens = tokenize_prompt(tokenizer, prompt)
        expected = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
        assert tokens.encoder_ids() == list(expected), prompt
        assert list(tokens.ids) == tokenizer(prompt, truncation=False).input_ids
    assert len(tokenize_prompt(tokenizer, long).ids) > tokenizer.model_max_length
    assert tokenize_prompt(tokenizer, tokens) is tokens  # tokens of this tokenizer are taken as they are
