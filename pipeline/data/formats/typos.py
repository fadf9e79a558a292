"""Misspelt captions, to measure what a character-level text tower is for (`bench/typos.py`, and its test).

`misspell` gives a share of a caption's words one edit each, the kinds people make: two neighbouring letters
swapped, a letter dropped, doubled or replaced. The first and last letters stay, as they mostly do in real
misspellings, and words of fewer than four letters are left alone. Seeded by the caller's `random.Random`.
"""
from __future__ import annotations

import random
import string

EDITS = ("swap", "drop", "double", "replace")


def misspell_word(word: str, rng: random.Random) -> str:
    """One edit inside `word` (its first and last letters kept) that changes it."""
    for _ in range(10):  # a swap of two equal letters ('ll') changes nothing: draw again
        i = rng.randrange(1, len(word) - 2)  # an inner letter; a swap takes it and the next
        kind = rng.choice(EDITS)
        if kind == "swap":
            out = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif kind == "drop":
            out = word[:i] + word[i + 1:]
        elif kind == "double":
            out = word[:i] + word[i] + word[i:]
        else:
            out = word[:i] + rng.choice([c for c in string.ascii_lowercase if c != word[i]]) + word[i + 1:]
        if out != word:
            return out
    return word


def misspell(text: str, rate: float, rng: random.Random) -> str:
    """`text` with each alphabetic word of 4+ letters misspelt with probability `rate`; spacing and
    punctuation kept."""
    words = text.split(" ")
    return " ".join(misspell_word(w, rng) if len(w) >= 4 and w.isalpha() and rng.random() < rate else w
                    for w in words)
