"""Word vectors from the caption corpus: windowed co-occurrence counts (sparse, mergeable), PPMI with
context-distribution smoothing, truncated SVD, and the GloVe text format. Pure NumPy/PyTorch, no Ray; the
Ray Data pass that feeds it is `words.job`.

Counts are symmetric: a pair of words d <= window positions apart adds weight w(d) to (a, b) and to (b, a);
w(d) = 1/d ("harmonic", GloVe's weighting: near words count more) or 1 ("uniform"). Ids below 2 ([PAD],
[UNK]) take up their positions but are never counted. Sparse counts are COO triples (row, col, count) with
each (row, col) once, sorted by row * V + col.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.registry import N_SPECIAL

FIRST_WORD = N_SPECIAL  # ids 0, 1 are [PAD] and [UNK]
DENSE_MAX_VOCAB = 3000  # above this the PPMI matrix stays sparse and the SVD is randomised


@dataclass
class Counts:
    """Sparse symmetric co-occurrence counts over a vocabulary of `vocab_size` ids."""
    rows: np.ndarray  # (nnz,) int64
    cols: np.ndarray  # (nnz,) int64
    values: np.ndarray  # (nnz,) float64
    vocab_size: int

    @property
    def nnz(self) -> int:
        return len(self.values)

    def dense(self) -> np.ndarray:
        out = np.zeros((self.vocab_size, self.vocab_size))
        np.add.at(out, (self.rows, self.cols), self.values)
        return out


def _aggregate(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, vocab_size: int) -> Counts:
    """Sum the values of repeated (row, col) pairs."""
    keys = rows.astype(np.int64) * vocab_size + cols.astype(np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=values, minlength=len(uniq))
    return Counts(uniq // vocab_size, uniq % vocab_size, summed.astype(np.float64), vocab_size)


def count_cooccurrences(token_lists: Iterable[list[int]], vocab_size: int, window: int = 4,
                        weighting: str = "harmonic") -> Counts:
    """Captions as lists of word ids -> their symmetric co-occurrence counts within `window`."""
    if weighting not in ("harmonic", "uniform"):
        raise ValueError(f"weighting={weighting!r}; use harmonic or uniform")
    lists = [t for t in token_lists if len(t) > 1]
    if not lists or window < 1:
        return _aggregate(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), vocab_size)
    ids = np.full((len(lists), max(len(t) for t in lists)), -1, dtype=np.int64)  # (n, L), -1 = no token
    for i, t in enumerate(lists):
        ids[i, :len(t)] = t
    rows, cols, vals = [], [], []
    for d in range(1, min(window, ids.shape[1] - 1) + 1):
        a, b = ids[:, :-d].ravel(), ids[:, d:].ravel()
        keep = (a >= FIRST_WORD) & (b >= FIRST_WORD)
        a, b = a[keep], b[keep]
        w = np.full(len(a), 1.0 / d if weighting == "harmonic" else 1.0)
        rows += [a, b]
        cols += [b, a]
        vals += [w, w]
    return _aggregate(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), vocab_size)


def merge_counts(parts: Iterable[Counts], vocab_size: int) -> Counts:
    """Partial counts (of disjoint caption batches) -> the counts of them all."""
    parts = list(parts)
    if not parts:
        return _aggregate(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), vocab_size)
    return _aggregate(np.concatenate([p.rows for p in parts]), np.concatenate([p.cols for p in parts]),
                      np.concatenate([p.values for p in parts]), vocab_size)


def ppmi(counts: Counts, alpha: float = 0.75, shift: float = 1.0) -> Counts:
    """Positive pointwise mutual information, sparse: max(0, log P(w,c) / (P(w) P_alpha(c)) - log shift).

    P_alpha(c) = n(c)^alpha / sum n^alpha smooths the context distribution (Levy, Goldberg and Dagan 2015):
    rare contexts otherwise get inflated PMI. shift = k is SGNS's k negative samples; 1: no shift."""
    if counts.nnz == 0:
        return counts
    total = counts.values.sum()
    word = np.bincount(counts.rows, weights=counts.values, minlength=counts.vocab_size)  # (V,)
    ctx = np.bincount(counts.cols, weights=counts.values, minlength=counts.vocab_size) ** alpha
    p_ctx = ctx / ctx.sum()
    pmi = (np.log(counts.values / total) - np.log(word[counts.rows] / total) - np.log(p_ctx[counts.cols])
           - np.log(shift))
    keep = pmi > 0
    return Counts(counts.rows[keep], counts.cols[keep], pmi[keep], counts.vocab_size)


def truncated_svd_vectors(matrix: Counts, dim: int, power: float = 0.5, seed: int = 0) -> np.ndarray:
    """(V, dim) word vectors U_d S_d^power of the matrix's top-dim SVD (power 0.5 splits S between words and
    contexts, as Levy et al. recommend). Exact SVD up to DENSE_MAX_VOCAB words, else torch's randomised SVD
    on the sparse matrix. Columns past the matrix's rank are zero."""
    v = matrix.vocab_size
    k = min(dim, v)
    if v <= DENSE_MAX_VOCAB:
        u, s, _ = np.linalg.svd(matrix.dense(), hermitian=False)
        u, s = u[:, :k], s[:k]
    else:
        import torch

        torch.manual_seed(seed)
        idx = torch.from_numpy(np.stack([matrix.rows, matrix.cols]))
        sparse = torch.sparse_coo_tensor(idx, torch.from_numpy(matrix.values), (v, v),
                                         check_invariants=True).coalesce()
        u, s, _ = torch.svd_lowrank(sparse, q=min(k + 10, v), niter=6)
        u, s = u[:, :k].numpy(), s[:k].numpy()
    out = np.zeros((v, dim))
    out[:, :k] = u * s ** power
    return out


def word_vectors(counts: Counts, dim: int, alpha: float = 0.75, shift: float = 1.0, power: float = 0.5,
                 seed: int = 0) -> np.ndarray:
    """Co-occurrence counts -> (V, dim) vectors: PPMI, then truncated SVD."""
    return truncated_svd_vectors(ppmi(counts, alpha, shift), dim, power, seed)


def format_glove(words: list[str], vectors: np.ndarray) -> str:
    """GloVe's text format: one line per word, `word v1 v2 ... vd`, no header (what
    `pipeline.models.word_vectors.load_word_vectors` reads)."""
    if len(words) != len(vectors):
        raise ValueError(f"{len(words)} words but {len(vectors)} vectors")
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise ValueError(f"words with whitespace cannot be written in GloVe format: {bad[:3]}")
    return "".join(w + " " + " ".join(f"{x:.6g}" for x in vec) + "\n" for w, vec in zip(words, vectors))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
