"""`pipeline cca`: linear and kernel CCA baselines, scored by the same evaluation and report as a trained run.

    pipeline cca --config configs/demo.yaml                         # linear CCA, pixels 16x16 + bag of words
    pipeline cca --config configs/demo.yaml --set cca.kind=kernel  # random Fourier features of each view

Ray Data does the passes: every (image, caption) pair of data.train is featurised in `map_batches` by a pool
of actors, each batch reduced to its CCA statistics (`cca.CCAStats`: n, means, centred co-moments), merged
on the driver as they stream in; memory is O(d^2) whatever the dataset size. The closed-form fit is
`cca.fit_linear_cca`. data.val is embedded through the fitted projection by the passes a checkpoint's gallery
takes (`index.embedding_passes.embed_to_parquet`, into <out>/gallery) and scored by `evaluate.evaluate_gallery`.
Data small enough (eval.in_driver_images) is read and featurised in the driver instead (`data.local_passes`),
by the same classes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.baselines.cca import CCAStats, fit_linear_cca
from pipeline.baselines.autoencoder import AutoencoderEncoder
from pipeline.baselines.features import CCAEncoder, Featurizer, describe, load_towers
from pipeline.data.text.tokenizer import Tokenizer

STATS_BATCH = 1024  # images per statistics row: each row carries d x d matrices, so batches are large
AE_CACHE_BYTES = 1 << 30  # the autoencoder keeps its featurised training pairs in memory up to this size


@dataclass
class Fitted:
    name: str  # linear_cca | kernel_cca: the report's key
    description: str
    encoder: CCAEncoder | AutoencoderEncoder
    pairs: int  # training (image, caption) pairs the statistics cover
    fit_s: float  # statistics pass + closed-form fit, seconds


@dataclass(frozen=True)
class Passes:
    """How a baseline's passes over shards run: a Ray Data pool of `num_actors` actors, or the driver where the
    shards hold at most `max_in_driver` samples; skipped samples go to `skip_log` (a `skips.SkipLog`)."""
    num_actors: int = 1
    max_in_driver: int = 0
    skip_log: Any = None

    @classmethod
    def of(cls, scaling_cfg, eval_cfg, skip_log=None) -> Passes:
        return cls(scaling_cfg.num_workers, eval_cfg.in_driver_images, skip_log)


def build_featurizer(c, data_cfg, model_cfg, tokenizer: Tokenizer | None = None,
                     train_paths: list[str] | None = None) -> Featurizer:
    """Features as the cca section `c` asks: the tokenizer of the training captions (scanned unless given),
    frozen towers, word vectors aligned with the tokenizer."""
    model = None
    if tokenizer is None and not (c.checkpoint and "tower" in (c.image_features, c.text_features)):
        from pipeline.data.ingest import scan_training_data

        tokenizer = scan_training_data(train_paths, data_cfg).tokenizer
    if "tower" in (c.image_features, c.text_features):
        model, tokenizer = load_towers(c, model_cfg, tokenizer)
    vectors = None
    if c.text_features == "word_vectors":
        from pipeline.models.word_vectors import load_word_vectors

        vectors = load_word_vectors(c.word_vectors, tokenizer.vocab)[0].numpy()
    return Featurizer(c, tokenizer, model, vectors)


class PairStats:
    """Ray Data actor: eval rows of the training shards -> one row of CCA statistics per batch."""

    def __init__(self, features: Featurizer):
        self.features = features

    def __call__(self, batch: dict) -> dict:
        x, y = self.features.pairs(batch["image"], [json.loads(c) for c in batch["captions"]])
        return CCAStats.of(x, y).to_row()


class PairFeatures:
    """Ray Data actor: eval rows -> the features of every (image, caption) pair, float32."""

    def __init__(self, features: Featurizer):
        self.features = features

    def __call__(self, batch: dict) -> dict:
        x, y = self.features.pairs(batch["image"], [json.loads(c) for c in batch["captions"]])
        return {"x": x.astype(np.float32), "y": y.astype(np.float32)}


def mapped_batches(paths: list[str], image_size: int, fn_class, fn_args: dict, batch_size: int, passes: Passes,
                   split: str):
    """`fn_class(**fn_args)` over the evaluation rows of `paths`: in the driver where they are few enough
    (`local_passes.fits_in_driver`), else by a Ray Data actor pool. -> its output batches"""
    from pipeline.data import local_passes

    if local_passes.fits_in_driver(paths, passes.max_in_driver):
        fn = fn_class(**fn_args)
        return (fn(b) for b in local_passes.eval_batches(paths, image_size, passes.skip_log, split,
                                                          batch_size=batch_size))
    from ray.data import ActorPoolStrategy

    from pipeline.data.ingest import eval_dataset

    ds = eval_dataset(paths, image_size, passes.skip_log, split=split).map_batches(
        fn_class, fn_constructor_kwargs=fn_args, batch_size=batch_size, batch_format="numpy",
        compute=ActorPoolStrategy(size=passes.num_actors))
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def accumulate_stats(paths: list[str], features: Featurizer, image_size: int, passes: Passes = Passes()
                     ) -> CCAStats:
    """The statistics of every (image, caption) pair in `paths`, reduced per batch on the workers (or in the
    driver, `mapped_batches`) and merged here in arrival order (the merge is exact in any order)."""
    total = None
    for batch in mapped_batches(paths, image_size, PairStats, {"features": features}, STATS_BATCH, passes, "train"):
        part = CCAStats.from_rows(batch)
        total = part if total is None else total.merge(part)
    if total is None or total.n < 2:
        raise ValueError("CCA found fewer than 2 usable (image, caption) pairs in data.train")
    return total


def fit_kernel_maps(paths: list[str], features: Featurizer, image_size: int, sample: int) -> None:
    """Kernel CCA: bandwidths (and Nyström landmarks) from the first `sample` training images and captions."""
    from pipeline.data.ingest import eval_dataset

    pixels, captions = [], []
    ds = eval_dataset(paths, image_size).limit(sample)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        pixels.append(batch["image"])
        captions += [c for cs in batch["captions"] for c in json.loads(cs)]
    features.fit_kernel_maps(np.concatenate(pixels), captions)


def fit(c, data_cfg, model_cfg, passes: Passes, tokenizer: Tokenizer | None = None) -> Fitted:
    """Featurise data.train as the cca section `c` asks, accumulate, fit in closed form (or train the
    autoencoder). `tokenizer`: a trained run's (else scanned)."""
    from pipeline.data.ingest import expand_paths

    if c.kind == "autoencoder":
        return fit_autoencoder(c, data_cfg, model_cfg, passes, tokenizer)
    t0 = time.time()
    paths = expand_paths(data_cfg.train_spec, "data.train")
    features = build_featurizer(c, data_cfg, model_cfg, tokenizer, paths)
    if c.kind == "kernel":
        fit_kernel_maps(paths, features, data_cfg.image_size, c.sample)
    stats = accumulate_stats(paths, features, data_cfg.image_size, passes)
    model = fit_linear_cca(stats, c.k, c.r1, c.r2)
    encoder = CCAEncoder(features, model, c.power, data_cfg.image_size)
    return Fitted(f"{c.kind}_cca", describe(c), encoder, stats.n, time.time() - t0)


def fit_autoencoder(c, data_cfg, model_cfg, passes: Passes, tokenizer: Tokenizer | None = None) -> Fitted:
    """Ngiam et al.'s bimodal autoencoder on the features the cca section `c` asks for: standardised by the
    statistics pass, then `c.ae_epochs` passes of Adam steps over the training pairs (kept in memory after the
    first pass where they take at most AE_CACHE_BYTES, else featurised again each pass)."""
    import torch

    from pipeline.baselines.autoencoder import BimodalAutoencoder, Standardiser, reconstruction_loss
    from pipeline.data.ingest import expand_paths

    t0 = time.time()
    paths = expand_paths(data_cfg.train_spec, "data.train")
    features = build_featurizer(c, data_cfg, model_cfg, tokenizer, paths)
    stats = accumulate_stats(paths, features, data_cfg.image_size, passes)
    var = lambda cov: np.diag(cov) / (stats.n - 1)  # noqa: E731
    std_x, std_y = Standardiser(stats.mean_x, var(stats.cxx)), Standardiser(stats.mean_y, var(stats.cyy))
    torch.manual_seed(c.seed)
    model = BimodalAutoencoder(len(stats.mean_x), len(stats.mean_y), c.ae_hidden, c.k)
    opt = torch.optim.Adam(model.parameters(), lr=c.ae_lr)
    g = torch.Generator().manual_seed(c.seed)
    cache, cached_bytes, losses = [], 0, []
    for epoch in range(c.ae_epochs):
        if epoch > 0 and cache:
            blocks = [cache[i] for i in torch.randperm(len(cache), generator=g)]
        else:
            blocks = mapped_batches(paths, data_cfg.image_size, PairFeatures, {"features": features}, STATS_BATCH,
                                    passes, "train")
        total, seen = 0.0, 0
        for block in blocks:
            if epoch == 0 and cached_bytes <= AE_CACHE_BYTES:
                cache.append(block)
                cached_bytes += block["x"].nbytes + block["y"].nbytes
            x, y = std_x(block["x"]), std_y(block["y"])  # (m, dx), (m, dy)
            for idx in torch.randperm(len(x), generator=g).split(c.ae_batch):
                loss = reconstruction_loss(model, x[idx], y[idx], c.ae_noise, g)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        if cached_bytes > AE_CACHE_BYTES:
            cache = []  # too large to keep: every pass featurises the shards again
        losses.append(total / max(seen, 1))
    print(f"[cca] autoencoder: reconstruction loss {losses[0]:.3f} -> {losses[-1]:.3f} over {c.ae_epochs} passes")
    encoder = AutoencoderEncoder(features, model, std_x, std_y, data_cfg.image_size)
    return Fitted("autoencoder", describe(c), encoder, stats.n, time.time() - t0)


def embed_gallery(encoder: CCAEncoder | AutoencoderEncoder, paths: list[str], image_size: int, out: str,
                  passes: Passes = Passes()):
    """data.val through the fitted baseline into `out` (the passes a checkpoint's gallery takes, Parquet of
    images and captions) -> the evaluation's Gallery."""
    from pipeline.index.embedding_passes import embed_to_parquet, read_gallery

    embed_to_parquet(None, paths, image_size, out, passes.num_actors, skip_log=passes.skip_log,
                     in_driver_images=passes.max_in_driver, encoder=encoder)
    return read_gallery(out)[0]


def score(fitted: Fitted, data_cfg, eval_cfg, index_cfg, passes: Passes, out: str) -> tuple[dict, dict]:
    """Embed data.val into `out`/gallery and score it. -> (the evaluation's metrics, the index block of the
    report)."""
    from pipeline import evaluate
    from pipeline.data.ingest import expand_paths
    from pipeline.index.faiss_indexes import IndexSpec, train_sample
    from pipeline.index.sharded import build_measured

    paths = expand_paths(data_cfg.val, "data.val")
    gallery = embed_gallery(fitted.encoder, paths, data_cfg.image_size, storage.join(out, "gallery"), passes)
    spec = IndexSpec.of(index_cfg)
    queries = train_sample(gallery.text_emb.numpy(), 1000)  # held-out queries of the other modality
    index, index_meta = build_measured(gallery.image_emb.numpy(), queries, spec)
    metrics = evaluate.evaluate_gallery(gallery, eval_cfg.ks, eval_cfg.chunk_size, eval_cfg.examples, spec,
                                        encode_text=fitted.encoder.encode_text, image_index=index)
    return metrics, index_meta


def summary_row(fitted: Fitted, metrics: dict) -> dict:
    """What the main report's `baselines` block holds for one baseline."""
    return {"description": fitted.description, "rsum": metrics["rsum"], "i2t": metrics["i2t"],
            "t2i": metrics["t2i"], "k": fitted.encoder.embed_dim, "train_pairs": fitted.pairs, "fit_s": round(fitted.fit_s, 2)}


def run_baseline(cfg, tokenizer: Tokenizer | None = None) -> dict:
    """`pipeline run` with cca.enabled: fit and score, no report of its own. -> {name: summary_row}"""
    passes = Passes.of(cfg.scaling, cfg.eval)
    fitted = fit(cfg.cca, cfg.data, cfg.model, passes, tokenizer)
    metrics, _ = score(fitted, cfg.data, cfg.eval, cfg.index, passes,
                       storage.join(cfg.run.run_dir(), "baselines", fitted.name))
    return {fitted.name: summary_row(fitted, metrics)}


def run(cfg, out: str | None = None) -> tuple[dict, str]:
    """`pipeline cca`: fit, score and write the report (and the fitted maps, cca.npz or autoencoder.npz) into
    `out`, by default <run dir>/baselines/<linear_cca | kernel_cca | autoencoder>. -> (report, out)"""

    from pipeline import report
    from pipeline.config import to_dict
    from pipeline.data.ingest import expand_paths
    from pipeline.data.skips import SkipLog

    skip_log = SkipLog.start()
    passes = Passes.of(cfg.scaling, cfg.eval, skip_log)
    fitted = fit(cfg.cca, cfg.data, cfg.model, passes)
    out = out or storage.join(cfg.run.run_dir(), "baselines", fitted.name)
    metrics, index_meta = score(fitted, cfg.data, cfg.eval, cfg.index, passes, out)
    saved, arrays = fitted.encoder.saved()
    by_split = skip_log.read()
    skipped = {split: {reason: len(keys) for reason, keys in by.items()} for split, by in by_split.items()}
    rep = report.publish(out, metrics, index_meta, fitted.description, to_dict(cfg), [], {"skipped": skipped},
                         expand_paths(cfg.data.val, "data.val"), cfg.eval.in_driver_images, subdir="report",
                         extra=lambda local: np.savez(local / saved, **arrays))
    return rep, out
