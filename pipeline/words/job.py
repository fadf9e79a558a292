"""`pipeline embeddings`: word vectors pretrained on the training captions, written in GloVe's text format for
`model.text.embeddings.path`.

    pipeline embeddings --config configs/demo.yaml --out runs/words.txt [--dim 128] [--window 4]
    pipeline embeddings --config configs/demo.yaml --out runs/glove.txt --method glove    # or sgns

Two Ray Data passes over the captions, image bytes never read: the vocabulary (the same tokenizer a training
run on the recipe builds, so the file's words are the model's), then co-occurrence counts per block in
`map_batches`, sparse, merged on the driver. PPMI and the truncated SVD are `words.cooccurrence`; GloVe and skip-gram
with negative sampling (`words.glove_sgns`) train on Ray Train workers, the counts shared through the
object store and each worker taking a seeded share of the word pairs every epoch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.data.text.tokenizer import Tokenizer, split_words
from pipeline.data.transforms import iter_samples, parse_captions
from pipeline.words.cooccurrence import (FIRST_WORD, Counts, count_cooccurrences, format_glove, merge_counts,
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
    without_context: int  # words of the vocabulary that never co-occurred: zero vectors (ppmi)
    seconds: float
    method: str = "ppmi"


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


def train_vectors(counts: Counts, e, seed: int, scaling_cfg, run_cfg) -> np.ndarray:
    """GloVe or SGNS (`e.method`) on scaling.num_workers Ray Train workers: every epoch each worker takes its
    share of a seeded permutation of the co-occurring pairs, in the same number of steps as the others, and DDP
    averages the gradients. -> (V, e.dim) vectors, from rank 0's checkpoint (under run.storage_path)."""
    import ray

    from pipeline.distributed import fit_on_workers

    shared = ray.put({"rows": counts.rows, "cols": counts.cols, "values": counts.values, "vocab": counts.vocab_size})

    def loop(c: dict) -> None:
        import torch

        from pipeline.words import glove_sgns
        from pipeline.distributed import WorkerContext, all_reduce_mean

        ctx = WorkerContext.from_ray()
        rank, world = ctx.rank, ctx.world_size
        d = ray.get(c["counts"])
        rows, cols = torch.from_numpy(d["rows"]).long(), torch.from_numpy(d["cols"]).long()
        values = torch.from_numpy(d["values"]).float()
        noise = torch.from_numpy(glove_sgns.noise_distribution(d["rows"], d["values"], d["vocab"])).float()
        model = glove_sgns.build(c["method"], d["vocab"], c["e"].dim, c["e"], c["seed"])
        ddp = ctx.prepare_model(model)  # DDP over the workers: gradients averaged
        opt = torch.optim.Adagrad(model.parameters(), lr=c["e"].lr)
        steps = max(1, -(-len(rows) // (world * c["e"].batch)))  # the same on every worker
        g = torch.Generator().manual_seed(c["seed"] * 7919 + rank)
        for epoch in range(c["e"].epochs):
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(c["seed"] * 1009 + epoch))
            total, parts = 0.0, order[rank::world].tensor_split(steps)
            # each step's global normaliser, as the mean of the workers' (one collective an epoch)
            norms = all_reduce_mean(torch.stack([glove_sgns.normaliser(model, values[p]) for p in parts]))
            for part, norm in zip(parts, norms):
                loss = glove_sgns.entry_loss(ddp, rows[part], cols[part], values[part], noise, g, norm)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
        # One report, at the end: a report is a round trip to Ray Train's controller, seconds on a small machine
        ctx.report({"epoch": c["e"].epochs, "loss": total / steps},
                   lambda d: np.save(d / "vectors.npy", model.vectors()))

    # Checkpoints where the recipe keeps its runs (local, or s3:// for workers on other nodes)
    root = run_cfg.storage_path if storage.is_remote(run_cfg.storage_path) else str(Path(run_cfg.storage_path).resolve())
    vectors, metrics = fit_on_workers(loop, {"counts": shared, "method": e.method, "e": e, "seed": seed},
                                      scaling_cfg, storage.join(root, f"{run_cfg.name}-embeddings-{e.method}"),
                                      "checkpoints", lambda d: np.load(f"{d}/vectors.npy"))
    print(f"[embeddings] {e.method}: loss {metrics['loss']:.4f} after {e.epochs} epochs on "
          f"{scaling_cfg.num_workers} workers")
    return vectors


def run(e, data_cfg, out: str, seed: int = 0, scaling_cfg=None, run_cfg=None) -> EmbeddingsSummary:
    """Vocabulary scan of data.train, counting pass, then PPMI + SVD or GloVe / SGNS training as the embeddings
    section `e` asks (glove/sgns on scaling_cfg's workers, their checkpoint under run_cfg's storage path); writes
    `out` (local or s3://)."""
    from pipeline.data.ingest import expand_paths, scan_training_data

    t0 = time.time()
    paths = expand_paths(data_cfg.train_spec, "data.train")
    tokenizer = scan_training_data(paths, data_cfg).tokenizer
    counts, tokens, captions = count_dataset(paths, tokenizer, e.window, e.weighting)
    if e.method == "ppmi":
        vectors = word_vectors(counts, e.dim, e.alpha, e.shift, e.power, seed=seed)  # (V, dim)
    else:
        vectors = train_vectors(counts, e, seed, scaling_cfg, run_cfg)  # (V, dim)
    if e.method == "glove":
        # GloVe's vectors share one large component (every log count is positive, and the dot products carry
        # their common level): on a small vocabulary it dwarfs the rest, every cosine near 1. It is removed, the
        # first step of Mu and Viswanath's "all-but-the-top"; differences between words, all GloVe learnt, stay.
        vectors[FIRST_WORD:] -= vectors[FIRST_WORD:].mean(0)
    words = tokenizer.vocab[FIRST_WORD:]
    storage.write_text(out, format_glove(words, vectors[FIRST_WORD:]))
    seen = np.zeros(len(tokenizer), dtype=bool)
    seen[counts.rows] = True
    return EmbeddingsSummary(out, len(words), e.dim, captions, tokens, counts.nnz,
                             int((~seen[FIRST_WORD:]).sum()), time.time() - t0, e.method)


def format_summary(s: EmbeddingsSummary) -> str:
    lines = [f"word vectors: {s.out}", f"  {s.vocab_size} words x {s.dim} dims by {s.method} (GloVe text format)",
             f"  counted {s.tokens} tokens in {s.captions} captions: {s.pairs} co-occurring word pairs"]
    if s.method == "ppmi" and s.dim > s.vocab_size:
        lines.append(f"  only the first {s.vocab_size} of the {s.dim} dims can be non-zero: the SVD of a "
                     f"{s.vocab_size}-word matrix has no more; the rest are zero")
    if s.without_context:
        lines.append(f"  {s.without_context} words never co-occurred with another: their vectors are "
                     + ("zero" if s.method == "ppmi" else "their random start"))
    lines.append(f"  {s.seconds:.1f} s; load with --set model.text.embeddings.path={s.out}")
    return "\n".join(lines)
