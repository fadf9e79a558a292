"""`pipeline embeddings`: word vectors pretrained on the training captions, written in GloVe's text format for
`model.text.embeddings.path`.

    pipeline embeddings --config configs/demo.yaml --out runs/words.txt [--dim 128] [--window 4]

Two Ray Data passes over the captions, image bytes never read: the vocabulary (the same tokenizer a training
run on the recipe builds, so the file's words are the model's), then co-occurrence counts per block in
`map_batches`, sparse, merged on the driver. PPMI and the truncated SVD are `pipeline.ppmi`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pipeline import storage
from pipeline.data.tokenizer import Tokenizer, split_words
from pipeline.data.transforms import iter_samples, parse_captions
from pipeline.ppmi import (FIRST_WORD, Counts, count_cooccurrences, format_glove, merge_counts,
                                   word_vectors)

COMPACT_EVERY = 5_000_000  # pending partial entries merged on the driver once they pass this many


@dataclass
class EmbeddingsSummary:
    out: str
    vocab_size: int  # words in the file ([PAD] and [UNK] excluded)
    dim: int
    captions: int
    tokens: int
    pairs: int  # distinct co-occurring word pairs
    without_context: int  # words of the vocabulary that never co-occurred: zero vectors
    seconds: float


def count_batch(batch: dict, tokenizer: Tokenizer, window: int, weighting: str) -> dict[str, np.ndarray]:
    """Shard rows (read without images) -> COO rows {'row', 'col', 'count'} of their captions' counts, plus
    two reserved rows: (-1, 0, tokens) and (-1, 1, captions). Every caption of a sample counts; samples
    without an image or caption are left out, as in the vocabulary scan."""
    unk = tokenizer.index["[UNK]"]
    token_lists = []
    for i, (_key, _raw, txt, meta, problem, _seed) in enumerate(iter_samples(batch)):
        caps, why = parse_captions(txt, meta)
        if problem or why or not bool(batch["has_image"][i]):
            continue
        token_lists += [[tokenizer.index.get(w, unk) for w in split_words(c)] for c in caps]
    c = count_cooccurrences(token_lists, len(tokenizer), window, weighting)
    extra = np.array([sum(len(t) for t in token_lists), len(token_lists)], dtype=np.float64)
    return {"row": np.concatenate([c.rows, [-1, -1]]), "col": np.concatenate([c.cols, [0, 1]]),
            "count": np.concatenate([c.values, extra])}


def count_dataset(paths: list[str], tokenizer: Tokenizer, window: int, weighting: str
                  ) -> tuple[Counts, int, int]:
    """The Ray Data pass: per-block counts, merged on the driver as they stream in. -> (counts, tokens,
    captions)."""
    from pipeline.data.ingest import read_shards

    v = len(tokenizer)
    ds = read_shards(paths, with_images=False).map_batches(
        count_batch, fn_kwargs={"tokenizer": tokenizer, "window": window, "weighting": weighting},
        batch_format="numpy")
    parts, pending, tokens, captions = [], 0, 0, 0
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        special = b["row"] < 0
        tokens += int(b["count"][special & (b["col"] == 0)].sum())
        captions += int(b["count"][special & (b["col"] == 1)].sum())
        parts.append(Counts(b["row"][~special], b["col"][~special], b["count"][~special], v))
        pending += parts[-1].nnz
        if pending > COMPACT_EVERY:  # bounded driver memory: at most the distinct pairs plus one window
            parts = [merge_counts(parts, v)]
            pending = parts[0].nnz
    return merge_counts(parts, v), tokens, captions


def run(e, data_cfg, out: str, seed: int = 0) -> EmbeddingsSummary:
    """Vocabulary scan of data.train, counting pass, PPMI + SVD as the embeddings section `e` asks; writes `out`
    (local or s3://)."""
    from pipeline.data.ingest import expand_paths, scan_training_data

    t0 = time.time()
    paths = expand_paths(data_cfg.train_spec, "data.train")
    tokenizer = scan_training_data(paths, data_cfg).tokenizer
    counts, tokens, captions = count_dataset(paths, tokenizer, e.window, e.weighting)
    vectors = word_vectors(counts, e.dim, e.alpha, e.shift, e.power, seed=seed)  # (V, dim)
    words = tokenizer.vocab[FIRST_WORD:]
    storage.write_text(out, format_glove(words, vectors[FIRST_WORD:]))
    seen = np.zeros(len(tokenizer), dtype=bool)
    seen[counts.rows] = True
    return EmbeddingsSummary(out, len(words), e.dim, captions, tokens, counts.nnz,
                             int((~seen[FIRST_WORD:]).sum()), time.time() - t0)


def format_summary(s: EmbeddingsSummary) -> str:
    lines = [f"word vectors: {s.out}", f"  {s.vocab_size} words x {s.dim} dims (GloVe text format)",
             f"  counted {s.tokens} tokens in {s.captions} captions: {s.pairs} co-occurring word pairs"]
    if s.dim > s.vocab_size:
        lines.append(f"  only the first {s.vocab_size} of the {s.dim} dims can be non-zero: the SVD of a "
                     f"{s.vocab_size}-word matrix has no more; the rest are zero")
    if s.without_context:
        lines.append(f"  {s.without_context} words never co-occurred with another: their vectors are zero")
    lines.append(f"  {s.seconds:.1f} s; load with --set model.text.embeddings.path={s.out}")
    return "\n".join(lines)
