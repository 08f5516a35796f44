"""Words of interest → umT5 token positions (Wan's text encoder).

umT5 has no start token: position 0 is the prompt's first piece, the last real position its `</s>`.
WanPipeline cleans the prompt (diffusers' `prompt_clean`), encodes it padded to
`max_sequence_length` (512), keeps the real tokens' embeddings and zero-pads the rest, so the
positions here are the columns of the text embeddings the cross-attention reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from ...errors import ConfigError

_PIECE_START = "▁"  # SentencePiece marks the first piece of every word


@dataclass(frozen=True)
class WanPromptTokens:
    """A prompt as Wan's text encoder reads it: the cleaned text, its ids (`</s>` included), their
    pieces, and the number of real tokens the encoder keeps (ids cut to max_sequence_length)."""

    text: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    max_sequence_length: int

    @property
    def n_real(self) -> int:
        return min(len(self.ids), self.max_sequence_length)


def tokenize_wan_prompt(tokenizer, prompt: "str | WanPromptTokens", max_sequence_length: int = 512) -> WanPromptTokens:
    if isinstance(prompt, WanPromptTokens):
        return prompt
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    text = prompt_clean(prompt)
    ids = tuple(tokenizer(text, add_special_tokens=True, truncation=False).input_ids)
    return WanPromptTokens(text, ids, tuple(tokenizer.convert_ids_to_tokens(list(ids))), max_sequence_length)


def token_table(tokens: WanPromptTokens) -> str:
    lines = [f"umT5 tokens of {tokens.text!r}:", "  idx  token"]
    lines += [f"  {i:>3}  {t}" for i, t in enumerate(tokens.tokens)]
    return "\n".join(lines)


def word_positions(tokenizer, prompt: "str | WanPromptTokens", word: str, occurrence: int | None = None,
                   field: str = "word", max_sequence_length: int = 512) -> list[int]:
    """Positions (0-based, no start token) of `word`'s pieces in the prompt; a phrase gives its
    consecutive pieces. Matches start on a word boundary (a piece that starts with "▁", for
    SentencePiece) and end on one (the next piece starts a word or is `</s>`), so "cat" never matches
    inside "caterpillar". A repeated word needs `occurrence` (1-based). ConfigError(field, …) otherwise."""
    if not isinstance(word, str) or not word.strip():
        raise ConfigError(field, f"the word of interest must be a non-empty string, got {word!r}")
    p = tokenize_wan_prompt(tokenizer, prompt, max_sequence_length)
    special = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id, getattr(tokenizer, "bos_token_id", None)) if i is not None}
    needle = [i for i in tokenizer(prompt_clean(word), add_special_tokens=False).input_ids if i not in special]
    unk = getattr(tokenizer, "unk_token_id", None)
    if not needle or (unk is not None and unk in needle):
        raise ConfigError(field, f"{word!r} has no tokens of its own in this tokenizer; use one of the prompt's words:\n{token_table(p)}")
    ids, pieces = list(p.ids), list(p.tokens)
    sentencepiece = any(t.startswith(_PIECE_START) for t in pieces)
    n = len(needle)

    def boundary(pos: int) -> bool:  # a word starts at pos (or the prompt ends there)
        return not sentencepiece or pos >= len(ids) or ids[pos] in special or pieces[pos].startswith(_PIECE_START)

    starts = [s for s in range(len(ids) - n + 1) if ids[s : s + n] == needle and boundary(s) and boundary(s + n)]
    if not starts:
        raise ConfigError(field, f"{word!r} is not a word of the prompt's umT5 tokens; use one of its words:\n{token_table(p)}")
    if occurrence is None:
        if len(starts) > 1:
            raise ConfigError(field, f"{word!r} occurs {len(starts)} times in the prompt (positions {starts}); set "
                                     "`occurrence: k` (1-based) to pick one")
        start = starts[0]
    else:
        if isinstance(occurrence, bool) or not isinstance(occurrence, int) or not 1 <= occurrence <= len(starts):
            raise ConfigError(field.rsplit(".", 1)[0] + ".occurrence" if field.endswith(".word") else field,
                              f"occurrence must be an integer from 1 to {len(starts)}, got {occurrence!r}")
        start = starts[occurrence - 1]
    if start + n > p.max_sequence_length - 1:
        raise ConfigError(field, f"{word!r} is at token {start}, past the text encoder's {p.max_sequence_length} tokens; "
                                 "shorten the prompt")
    return list(range(start, start + n))
