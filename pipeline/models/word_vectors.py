"""Pretrained word vectors from a GloVe or word2vec *text* file (local or s3://, optionally .gz): the rows of a
vocabulary that the file holds, and how much of the vocabulary that covers.

GloVe lines are `word v1 ... vd`; a word2vec text file adds a first line `count dim`. Both are accepted.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import itertools
from collections.abc import Iterator, Sequence
from typing import TextIO

import numpy as np
import torch

from pipeline import storage

KEY = "model.text.embeddings.path"
N_SPECIAL = 2  # [PAD] and [UNK] lead every vocabulary; no file has vectors for them


@contextlib.contextmanager
def _open_text(path: str) -> Iterator[TextIO]:
    fs, inner = storage.filesystem(path)
    with fs.open(inner, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if str(path).endswith(".gz") else raw
        yield io.TextIOWrapper(stream, encoding="utf-8", errors="replace")


def _parse_first_line(line: str) -> tuple[int, bool]:
    """-> (vector dimension, whether the line is a word2vec `count dim` header rather than a vector)."""
    parts = line.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[1]), True
    if len(parts) < 2:
        raise ValueError(f"{KEY}: the first line {line[:60]!r} is neither `word v1 v2 ...` (GloVe) nor "
                         f"`count dim` (word2vec text format)")
    return len(parts) - 1, False


def vector_file_dim(path: str) -> int:
    """The dimension of the vectors in `path`, from its first line alone (cheap enough for config checks)."""
    with _open_text(path) as f:
        return _parse_first_line(f.readline())[0]


def dim_mismatch_message(path: str, file_dim: int, word_dim: int) -> str:
    return (f"{KEY}={path!r} holds {file_dim}-d vectors but model.text.word_dim={word_dim}; "
            f"set model.text.word_dim={file_dim} (or use a {word_dim}-d vector file)")


def load_word_vectors(path: str, vocab: Sequence[str], dim: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """-> (vectors (V, d) float32, found (V,) bool, coverage) for the words of `vocab` (ids are positions).

    A word matches its exact spelling in the file, or failing that a differently-cased spelling (word2vec files
    keep case; the tokenizer lower-cases). Rows not found are zero in `vectors`; the caller decides their init.
    coverage = {"path", "dim", "vocab_words" (all but [PAD]/[UNK]), "found", "fraction" (found / vocab_words),
    "case_folded", "file_words", "skipped_lines" (vocabulary words whose line had the wrong number of values)}.
    `dim`, when given, must equal the file's (a ValueError says what to change).
    """
    if not storage.exists(path):
        raise FileNotFoundError(f"{KEY}={path!r} does not exist; give a GloVe or word2vec text file, or leave it "
                                "empty for random word vectors")
    index = {w: i for i, w in enumerate(vocab) if i >= N_SPECIAL}
    with _open_text(path) as f:
        first = f.readline()
        file_dim, header = _parse_first_line(first)
        if dim is not None and dim != file_dim:
            raise ValueError(dim_mismatch_message(path, file_dim, dim))
        vectors = np.zeros((len(vocab), file_dim), dtype=np.float32)  # (V, d)
        exact = np.zeros(len(vocab), dtype=bool)
        folded = np.zeros(len(vocab), dtype=bool)
        file_words = skipped = 0
        for line in f if header else itertools.chain([first], f):
            word, _, rest = line.rstrip("\n").partition(" ")
            file_words += 1
            # Only the vocabulary's words are parsed: a 400k-word file costs one dict lookup per line.
            i = index.get(word)
            by_case = i is None
            if by_case:
                i = index.get(word.lower())
                if i is None or exact[i] or folded[i]:
                    continue
            elif exact[i]:  # a repeated word: its first vector wins
                continue
            values = rest.split()
            if len(values) != file_dim:  # a malformed line, or a multi-word entry (GloVe 840B has '. . .')
                skipped += 1
                continue
            vectors[i] = np.asarray(values, dtype=np.float32)
            (folded if by_case else exact)[i] = True
    found = exact | folded
    n_words = max(len(vocab) - N_SPECIAL, 0)
    coverage = {"path": str(path), "dim": file_dim, "vocab_words": n_words, "found": int(found.sum()),
                "fraction": float(found.sum()) / n_words if n_words else 0.0,
                "case_folded": int((folded & ~exact).sum()), "file_words": file_words, "skipped_lines": skipped}
    return torch.from_numpy(vectors), torch.from_numpy(found), coverage
