"""Word- and character-level tokenizers built from the training captions; saved with every checkpoint.

Words: lower-cases, splits punctuation off words, maps rare words to [UNK], pads with [PAD] (id 0) to a fixed
length. Characters: the lower-cased caption with its whitespace collapsed, one id per character, so a misspelt or
unseen word still reaches the text tower as the characters it shares with the word it should have been.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

from pipeline.registry import PAD, UNK
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """'A red circle, left of...' -> ['a', 'red', 'circle', ',', 'left', 'of', '.', '.', '.']"""
    return _TOKEN.findall(text.lower())


def count_words(captions: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for c in captions:
        counts.update(split_words(c))
    return counts


class Tokenizer:
    def __init__(self, vocab: list[str], max_tokens: int):
        if vocab[:2] != [PAD, UNK]:
            raise ValueError("a vocabulary starts with [PAD], [UNK]")
        self.vocab = list(vocab)
        self.max_tokens = int(max_tokens)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def from_counts(cls, counts: Counter, max_tokens: int, min_count: int = 1, max_size: int = 30000):
        # Ties broken alphabetically so the same captions always give the same ids.
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([PAD, UNK] + words[: max(0, max_size - 2)], max_tokens)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        unk = self.index[UNK]
        return [self.index.get(w, unk) for w in split_words(text)][: self.max_tokens]

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        """-> (N, max_tokens) int64, zero-padded; an empty caption becomes a single [UNK]."""
        out = np.zeros((len(texts), self.max_tokens), dtype=np.int64)
        for i, t in enumerate(texts):
            ids = self.encode(t) or [self.index[UNK]]
            out[i, : len(ids)] = ids
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i != 0)

    def to_dict(self) -> dict:
        return {"vocab": self.vocab, "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        return cls(d["vocab"], d["max_tokens"])


class CharTokenizer(Tokenizer):
    """Characters of the lower-cased caption, whitespace collapsed to one space; `max_tokens` counts characters.
    The alphabet is every character of the training captions' words (in the order of their counts) plus the
    space; a character never seen maps to [UNK]."""

    kind = "char"

    @classmethod
    def from_counts(cls, counts: Counter, max_tokens: int, min_count: int = 1, max_size: int = 30000):
        """`counts`: word -> count over the training captions (what the vocabulary scan gathers)."""
        chars: Counter = Counter()
        for word, n in counts.items():
            for ch in word:
                chars[ch] += n
        chars[" "] += sum(counts.values())  # one space per word, about
        alphabet = sorted((c for c, n in chars.items() if n >= min_count), key=lambda c: (-chars[c], c))
        return cls([PAD, UNK] + alphabet[: max(0, max_size - 2)], max_tokens)

    def encode(self, text: str) -> list[int]:
        unk = self.index[UNK]
        return [self.index.get(ch, unk) for ch in " ".join(text.lower().split())][: self.max_tokens]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i != 0)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab": self.vocab, "max_tokens": self.max_tokens}
