"""Words of interest → umT5 token positions (Wan's text encoder).

umT5 has no start token: position 0 is the prompt's first piece, the last real position its `</s>`.
WanPipeline cleans the prompt (diffusers' `prompt_clean`), encodes it padded to
`max_sequence_length` (512), keeps the real tokens' embeddings and zero-pads the rest, so the
positions here are the columns of the text embeddings the cross-attention reads.
"""

from __future__ import annotations

import re
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
    start = _chosen_occurrence(word, starts, occurrence, field, "positions")
    if start + n > p.max_sequence_length - 1:
        raise ConfigError(field, f"{word!r} is at token {start}, past the text encoder's {p.max_sequence_length} tokens; "
                                 "shorten the prompt")
    return list(range(start, start + n))


# ----------------------------------------------------------------------------- without the tokenizer

@dataclass(frozen=True)
class PromptWordMatch:
    """A word of interest found among a prompt's whitespace-separated words, without umT5's
    tokenizer (a dry run that cannot have it): `words` are its positions among them, or None where
    only the tokenizer can tell (`unchecked` says why)."""

    word: str
    words: tuple[int, ...] | None
    unchecked: str | None = None


def prompt_words(prompt: str) -> list[str]:
    """The prompt as WanPipeline cleans it, split where SentencePiece starts a word (whitespace)."""
    return prompt_clean(prompt).split()


def _chosen_occurrence(word: str, starts: list[int], occurrence, field: str, unit: str) -> int:
    """The start of the word's `occurrence`-th match (1-based) among `starts`; without one, the only
    match. ConfigError naming `field`, or its sibling `occurrence` field."""
    if occurrence is None:
        if len(starts) > 1:
            raise ConfigError(field, f"{word!r} occurs {len(starts)} times in the prompt ({unit} {starts}); set "
                                     "`occurrence: k` (1-based) to pick one")
        return starts[0]
    if isinstance(occurrence, bool) or not isinstance(occurrence, int) or not 1 <= occurrence <= len(starts):
        raise ConfigError(field.rsplit(".", 1)[0] + ".occurrence" if field.endswith(".word") else field,
                          f"occurrence must be an integer from 1 to {len(starts)}, got {occurrence!r}")
    return starts[occurrence - 1]


def find_word_without_tokenizer(prompt: str, word: str, occurrence: int | None = None, field: str = "word",
                                max_sequence_length: int = 512) -> PromptWordMatch:
    """What `word_positions` checks that can be told from the text alone. SentencePiece splits a
    prompt at whitespace first, so a word standing alone between spaces is one whole word of the
    pieces whatever its pieces are; a word absent from the text, or only inside another word, is in
    no tokenization. A word that touches punctuation ("shark,") depends on how umT5 splits the
    punctuation off, and a word far into a long prompt on how many pieces come before it: those
    are left `unchecked`, not guessed. ConfigError(field, …) as `word_positions` raises it."""
    if not isinstance(word, str) or not word.strip():
        raise ConfigError(field, f"the word of interest must be a non-empty string, got {word!r}")
    occurrence_field = field.rsplit(".", 1)[0] + ".occurrence" if field.endswith(".word") else field
    if occurrence is not None and (isinstance(occurrence, bool) or not isinstance(occurrence, int) or occurrence < 1):
        raise ConfigError(occurrence_field, f"occurrence must be a positive integer (1-based), got {occurrence!r}")
    text = prompt_clean(prompt)
    words = text.split()
    needle = prompt_clean(word).split()
    n = len(needle)
    whole = [s for s in range(len(words) - n + 1) if words[s : s + n] == needle]
    # the same words with anything but letters and digits around them ("shark," "(shark")
    bounded = list(re.finditer(r"(?<!\w)" + r"\s+".join(map(re.escape, needle)) + r"(?!\w)", text))
    touching = [m.group(0) for m in bounded if not _stands_alone(text, m)]
    if not whole and not touching:
        raise ConfigError(field, f"{word!r} is not a word of the prompt {text!r}; use one of its words, spelt and "
                                 f"cased as there: {' '.join(words)}")
    if touching:
        context = ", ".join(repr(_around(text, m)) for m in bounded if not _stands_alone(text, m))
        return PromptWordMatch(word, None, f"{word!r} touches punctuation in the prompt ({context}): whether umT5 "
                                           "splits it off into a word of its own needs the tokenizer")
    start = _chosen_occurrence(word, whole, occurrence, field, "words")
    # a piece covers at least one byte of the text or one word's "▁": an upper bound on the pieces
    # up to the word's end; past the encoder's tokens only the tokenizer can tell
    before = " ".join(words[: start + n])
    if len(before.encode()) + start + n + 1 > max_sequence_length - 1:
        return PromptWordMatch(word, None, f"{word!r} is far into a long prompt: whether it lies within the text "
                                           f"encoder's {max_sequence_length} tokens needs the tokenizer")
    return PromptWordMatch(word, tuple(range(start, start + n)))


def _stands_alone(text: str, match) -> bool:
    """The match has whitespace (or the text's ends) on both sides."""
    return ((match.start() == 0 or text[match.start() - 1].isspace())
            and (match.end() == len(text) or text[match.end()].isspace()))


def _around(text: str, match) -> str:
    """The whitespace-separated chunk of text holding the match."""
    start = text.rfind(" ", 0, match.start()) + 1
    end = text.find(" ", match.end())
    return text[start : end if end >= 0 else len(text)]


def words_table(prompt: str, matches: list[PromptWordMatch]) -> str:
    """The dry run's table where umT5's pieces are out of reach: the prompt's words, and which
    objects each holds."""
    text = prompt_clean(prompt)
    owners: dict[int, list[str]] = {}
    for m in matches:
        for w in m.words or ():
            owners.setdefault(w, []).append(m.word)
    lines = [f"umT5 pieces of {text!r}: NOT checked (no tokenizer; see the WARNING); its words:", "  word  text"]
    lines += [f"  {i:>4}  {w}" + (f"   <- {', '.join(repr(o) for o in owners[i])}" if i in owners else "")
              for i, w in enumerate(text.split())]
    lines += [f"  needs the tokenizer: {m.unchecked}" for m in matches if m.unchecked]
    return "\n".join(lines)
