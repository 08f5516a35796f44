"""Words of interest -> token indices, through the model's own tokenizer."""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

from .environment import check_model_available, hub_reachable
from .errors import ConfigError


def bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level BPE: every byte maps to a printable unicode character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def openai_clip_tokenizer():
    """The Stable Diffusion v1.x tokenizer (OpenAI CLIP BPE, 49408 tokens), built offline.

    open_clip_torch ships OpenAI's merges file (`bpe_simple_vocab_16e6.txt.gz`); the vocabulary
    is derived from it exactly as CLIP does, then handed to transformers' CLIPTokenizer. Each call
    returns a new tokenizer (callers may change its settings); the files are built once.
    """
    from transformers import CLIPTokenizer

    vocab_file, merges_file = _openai_clip_bpe_files()
    return CLIPTokenizer(vocab_file, merges_file, model_max_length=77, pad_token="<|endoftext|>")


@functools.lru_cache(maxsize=1)
def _openai_clip_bpe_files() -> tuple[str, str]:
    import importlib.util

    # Locate the package without importing it (importing open_clip costs seconds).
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip_torch is needed for the offline SD v1.x tokenizer (it ships OpenAI's BPE merges)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = tempfile.mkdtemp(prefix="reatco-clip-bpe-")  # lives for the process
    vocab_file = os.path.join(folder, "vocab.json")
    merges_file = os.path.join(folder, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


# ----------------------------------------------------------------------------- words → indices

logger = logging.getLogger(__name__)

_WORD_END = "</w>"  # CLIP's BPE marks the last sub-token of every word with this suffix
_SD1_ID = re.compile(r"stable-diffusion-v-?1([-_.]\d)?\b", re.IGNORECASE)


@dataclass(frozen=True)
class PromptTokens:
    """A prompt tokenized once per edit: its ids with SOT/EOT, never truncated (so that we can
    say what was cut), and their tokens. Everything that reads the prompt's tokens (the words'
    indices, the token table, the length checks, the text encoder's input) reads them here."""

    text: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    model_max_length: int
    pad_id: int
    padding_side: str
    tokenizer: Any = field(default=None, compare=False, repr=False)  # the one that made them

    @property
    def word_end(self) -> bool:
        return _uses_word_end(list(self.tokens))

    def encoder_ids(self) -> list[int]:
        """The text encoder's input: cut to model_max_length (SOT, the first L − 2 tokens, EOT)
        and padded to it, as `tokenizer(text, padding="max_length", truncation=True)` gives."""
        limit, ids = self.model_max_length, list(self.ids)
        if len(ids) > limit:
            ids = ids[: limit - 1] + ids[-1:]
        padding = [self.pad_id] * (limit - len(ids))
        return padding + ids if self.padding_side == "left" else ids + padding


def tokenize_prompt(tokenizer, prompt: "str | PromptTokens") -> PromptTokens:
    """`prompt` tokenized by `tokenizer` (tokens of this tokenizer are taken as they are)."""
    if isinstance(prompt, PromptTokens) and prompt.tokenizer is tokenizer:
        return prompt
    text = prompt.text if isinstance(prompt, PromptTokens) else prompt
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    ids = tuple(tokenizer(text, truncation=False).input_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PromptTokens(text, ids, tuple(tokenizer.convert_ids_to_tokens(list(ids))), tokenizer.model_max_length, pad,
                        getattr(tokenizer, "padding_side", "right"), tokenizer)


def encode_prompt(text_encoder, tokens: PromptTokens, device=None):
    """The prompt's embeddings (1, L, d): the one prompt encoder of the pipeline and the tuning."""
    import torch

    ids = torch.tensor([tokens.encoder_ids()], device=device if device is not None else text_encoder.device)
    return text_encoder(ids)[0]


def _word_ids(tokenizer, word: str) -> list[int]:
    return list(tokenizer(word, add_special_tokens=False, truncation=False).input_ids)


def _uses_word_end(tokens: list[str]) -> bool:
    return any(t.endswith(_WORD_END) for t in tokens)


def _display(token: str, word_end: bool) -> str:
    # "cat</w>" → "cat"; a sub-token that does not end its word gets a trailing "+" ("sd+ f+ wer+ qu").
    if not word_end or (token.startswith("<|") and token.endswith("|>")):
        return token
    return token[: -len(_WORD_END)] if token.endswith(_WORD_END) else token + "+"


def _special_ids(tokenizer) -> set[int]:
    return {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}


def _find_sequence(ids: list[int], tokens: list[str], needle: list[int], word_end: bool) -> list[int]:
    """Start positions where `needle` occurs in `ids` on word boundaries.

    The end boundary is built in (the needle's last token carries </w>); the start boundary is
    checked on the previous token, which must end a word (or be SOT), so that "xsd f wer qu"
    never matches the word tokenized as "sd f wer qu"."""
    n = len(needle)
    starts = []
    for s in range(1, len(ids) - n + 1):
        if ids[s : s + n] != needle:
            continue
        if word_end and s > 1 and not tokens[s - 1].endswith(_WORD_END):
            continue
        starts.append(s)
    return starts


def token_table(tokenizer, prompt: "str | PromptTokens") -> str:
    """The prompt's tokens with the indices RAD uses (SOT = 0), one per line.

    Sub-tokens that do not end their word are shown with a trailing "+"; tokens beyond the
    tokenizer's length (which the text encoder never sees) are marked "(truncated)"."""
    p = tokenize_prompt(tokenizer, prompt)
    ids, tokens, word_end, limit = p.ids, p.tokens, p.word_end, p.model_max_length
    lines = [f"tokens of {p.text!r}:", "  idx  token"]
    for i, tok in enumerate(tokens):
        note = "  (truncated)" if i >= limit - 1 and i < len(ids) - 1 else ""
        lines.append(f"  {i:>3}  {_display(tok, word_end)}{note}")
    return "\n".join(lines)


def word_token_indices(tokenizer, prompt: "str | PromptTokens", word: str, occurrence: int | None = None,
                       field: str = "word") -> list[int]:
    """Indices (SOT = 0) of the tokens of `word` in `prompt`, as the text encoder sees them.

    `word` may be a single word (split into several sub-tokens: all of them are returned) or a
    phrase of several words ("yellow triangle": its consecutive tokens). Matching compares token
    sequences on word boundaries, so "cat" never matches inside "caterpillar". A word found more
    than once needs `occurrence` (1-based). Raises ConfigError(field, …) otherwise."""
    if not isinstance(word, str) or not word.strip():
        raise ConfigError(field, f"the word of interest must be a non-empty string, got {word!r}")
    needle = _word_ids(tokenizer, word)
    needle = [i for i in needle if i not in _special_ids(tokenizer)]
    if not needle:
        raise ConfigError(field, f"{word!r} has no tokens; name a word of the prompt {getattr(prompt, 'text', prompt)!r}")
    p = tokenize_prompt(tokenizer, prompt)
    starts = _find_sequence(list(p.ids), list(p.tokens), needle, p.word_end)
    if not starts:
        raise ConfigError(field, f"{word!r} is not a word of the prompt; use one of its words:\n{token_table(tokenizer, p)}")
    last_seen = tokenizer.model_max_length - 2  # the encoder sees SOT + tokens 1…L−2 + EOT
    visible = [s for s in starts if s + len(needle) - 1 <= last_seen]
    if not visible:
        raise ConfigError(
            field,
            f"{word!r} is at token {starts[0]}, beyond the tokenizer's {tokenizer.model_max_length} tokens "
            f"(SOT and EOT included), so the text encoder never sees it; shorten the prompt",
        )
    if occurrence is None:
        if len(starts) > 1:
            where = ", ".join(f"occurrence {k + 1}: tokens {list(range(s, s + len(needle)))}" for k, s in enumerate(starts))
            raise ConfigError(field, f"{word!r} occurs {len(starts)} times in the prompt ({where}); set `occurrence: k` (1-based) to pick one")
        start = starts[0]
    else:
        if isinstance(occurrence, bool) or not isinstance(occurrence, int) or not 1 <= occurrence <= len(starts):
            raise ConfigError(
                field.rsplit(".", 1)[0] + ".occurrence" if field.endswith(".word") else field,
                f"occurrence must be an integer from 1 to {len(starts)} ({word!r} occurs {len(starts)} time(s)), got {occurrence!r}",
            )
        start = starts[occurrence - 1]
        if start not in visible:
            raise ConfigError(field, f"occurrence {occurrence} of {word!r} (token {start}) is beyond the tokenizer's "
                                     f"{tokenizer.model_max_length} tokens; shorten the prompt")
    return list(range(start, start + len(needle)))


def check_prompt_length(tokens: PromptTokens, needs_all: bool, field: str = "prompt") -> None:
    """The text encoder reads model_max_length tokens (SOT and EOT included): a longer prompt is
    cut. ConfigError where the edit needs all of it (`needs_all`: RAD normalising over the
    prompt's own tokens, or a word of interest past the cut), else a warning."""
    n, limit = len(tokens.ids), tokens.model_max_length
    if n <= limit:
        return
    if needs_all:
        raise ConfigError(field, f"has {n} tokens but the text encoder reads at most {limit} (start and end tokens "
                                 "included); shorten the prompt")
    logger.warning("%s has %d tokens; the text encoder reads only the first %d", field, n, limit)


def check_edit_prompt(tokens: PromptTokens, n_objects: int, rad, field: str = "prompt") -> None:
    """The prompt-length rule of an edit, decided once (EditRunner and the pipeline): RAD
    normalising over the prompt's own tokens (`rad.normalize_eot`) needs all of them, so a cut
    prompt is refused there and only warned about otherwise. (A word of interest past the cut is
    refused by word_token_indices.)"""
    check_prompt_length(tokens, n_objects > 0 and rad.enabled and rad.normalize_eot, field)


def describe_tokens(tokenizer, prompt: "str | PromptTokens", word: str, indices: list[int]) -> str:
    """One log line: which tokens a word maps to, e.g. "'goldfish' → token 5 (goldfish)" or, for a
    word split into sub-tokens, "'sdfwerqu' → tokens [2, 3, 4, 5] (sd+ f+ wer+ qu), one map from all of them
    (rad.word_tokens)"."""
    p = tokenize_prompt(tokenizer, prompt)
    shown = " ".join(_display(p.tokens[i], p.word_end) for i in indices)
    if len(indices) == 1:
        return f"{word!r} → token {indices[0]} ({shown})"
    return f"{word!r} → tokens {indices} ({shown}), one map from all of them (rad.word_tokens)"


def resolve_objects_tokens(tokenizer, prompt: "str | PromptTokens", objects, field_prefix: str = "objects") -> list[list[int]]:
    """Token indices of every object's word (ObjectConfigs or EditObjects: `word`, `occurrence`).

    Logs which tokens each multi-token word uses; two objects naming the same tokens is an error."""
    prompt = tokenize_prompt(tokenizer, prompt)  # once for every object
    result: list[list[int]] = []
    owner: dict[int, int] = {}
    for j, obj in enumerate(objects):
        field = f"{field_prefix}[{j}].word"
        word = obj.word
        indices = word_token_indices(tokenizer, prompt, word, obj.occurrence, field=field)
        for i in indices:
            if i in owner:
                raise ConfigError(field, f"{word!r} maps to token {i}, already used by {field_prefix}[{owner[i]}]; "
                                         f"each object needs its own word (use `occurrence` for repeated words)")
            owner[i] = j
        if len(indices) > 1:
            logger.info("%s", describe_tokens(tokenizer, prompt, word, indices))
        warn_if_shattered(prompt, word, indices, field)
        result.append(indices)
    return result


# A word the tokenizer splits into this many pieces or more (per whitespace word) is most likely
# one the model never learnt: SD's CLIP has one token for nearly every English word.
SHATTERED_PIECES = 3


def warn_if_shattered(prompt: "PromptTokens", word: str, indices: Sequence[int], field: str) -> bool:
    """Warn when `word` is split into many pieces ("elephant" on the shapes model: 6): RAD then
    steers word pieces the model has no object for, and the edit runs without drawing it."""
    words = max(1, len(word.split()))
    if len(indices) < SHATTERED_PIECES * words:
        return False
    pieces = [prompt.tokens[i] for i in indices]
    logger.warning("%s: the tokenizer splits %r into %d pieces (%s): the model most likely does not know the word, "
                   "and RAD cannot place an object it has no word for; use a word the model knows (see the token "
                   "table: known words are one token each)", field, word, len(indices), " ".join(pieces))
    return True


def _checked(tokenizer):
    # transformers builds an empty tokenizer (special tokens only) when no vocabulary file is found.
    if len(tokenizer.get_vocab()) <= len(tokenizer.all_special_tokens):
        raise OSError("no tokenizer vocabulary found (vocab.json, merges.txt)")
    return tokenizer


def load_tokenizer(pretrained: str):
    """The model's own tokenizer (`tokenizer/` of a local folder or hub id).

    Falls back to `openai_clip_tokenizer()` (identical to SD v1.x's) with a warning only when the
    hub cannot be reached and the id looks like a Stable Diffusion v1.x id."""
    from transformers import CLIPTokenizer

    path = os.fspath(pretrained)
    if os.path.isdir(path):
        for folder in (os.path.join(path, "tokenizer"), path):
            if any(os.path.isfile(os.path.join(folder, f)) for f in ("vocab.json", "tokenizer.json")):
                return _checked(CLIPTokenizer.from_pretrained(folder))
        raise ConfigError("model.pretrained", f"{path} has no tokenizer/ folder (vocab.json + merges.txt, or tokenizer.json); point it at a diffusers SD-layout folder")
    try:
        try:  # the local HF cache first: no network, no retries
            return _checked(CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True))
        except (OSError, ValueError):
            pass
        if not hub_reachable():
            raise OSError("the Hugging Face Hub cannot be reached (offline)")
        return _checked(CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"))
    except (OSError, ValueError) as err:  # offline, unknown id, or no tokenizer in the repo
        if _SD1_ID.search(path):
            logger.warning("could not fetch the tokenizer of %s (%s); using OpenAI CLIP's BPE, which SD v1.x ships", path, err)
            return openai_clip_tokenizer()

        check_model_available(path, "model.pretrained")  # offline and not cached: the one wording, with what to do
        raise ConfigError("model.pretrained", f"cannot load a tokenizer from {path!r} ({err}); give a local SD-layout folder or a reachable hub id") from err
