"""Words of interest -> token indices, through the model's own tokenizer."""

from __future__ import annotations

import functools
import gzip
import json
import os
import tempfile


def _bytes_to_unicode() -> dict[int, str]:
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


@functools.lru_cache(maxsize=1)
def openai_clip_tokenizer():
    """The Stable Diffusion v1.x tokenizer (OpenAI CLIP BPE, 49408 tokens), built offline.

    open_clip_torch ships OpenAI's merges file (`bpe_simple_vocab_16e6.txt.gz`); the vocabulary
    is derived from it exactly as CLIP does, then handed to transformers' CLIPTokenizer.
    """
    import open_clip
    from transformers import CLIPTokenizer

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        merges_file = os.path.join(tmp, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump({tok: i for i, tok in enumerate(vocab)}, f)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=77, pad_token="<|endoftext|>")
