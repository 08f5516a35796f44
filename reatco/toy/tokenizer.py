"""A BPE tokenizer for the shapes-world captions, saved in OpenAI CLIP's file format.

Trained with the ``tokenizers`` library on the caption vocabulary, with CLIP's conventions:
byte-level alphabet (GPT-2 ``bytes_to_unicode``), ``</w>`` end-of-word suffix, and the
specials ``<|startoftext|>`` / ``<|endoftext|>`` last in the vocabulary. The vocabulary is
big enough that every caption word is one token, so a word of interest is one token index.
``transformers.CLIPTokenizer.from_pretrained(folder)`` loads the result.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tokens import bytes_to_unicode
from .world import vocabulary

MAX_LENGTH = 17  # SOT + longest caption (15 tokens, three objects) + EOT: a short padding sink
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def train_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train BPE on the words; return CLIP-ordered vocab and the merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    alphabet = list(bytes_to_unicode().values())
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Enough merges to make every word a single token; alphabet twice (plain and with </w>).
    trainer = trainers.BpeTrainer(vocab_size=10_000, min_frequency=1, initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False, special_tokens=[])
    tok.train_from_iterator([" ".join(words)] * 4, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    # CLIP order: bytes, bytes + </w>, one entry per merge, then the two specials.
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    for a, b in merges:
        t = a + b
        if t not in tokens:
            tokens.append(t)
    tokens += [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}, merges


def save_tokenizer(folder: str | Path, max_length: int = MAX_LENGTH) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = train_bpe(vocabulary())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    specials = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    cfg = dict(specials, tokenizer_class="CLIPTokenizer", model_max_length=max_length,
               do_lower_case=True, errors="replace", add_prefix_space=False)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def load(folder: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))
