"""Retrieval evaluation: contract metrics from an embedded gallery, plus index statistics and examples.

    pipeline evaluate --checkpoint runs/demo --data data/demo/val --out runs/demo/report
"""
from __future__ import annotations

import torch

from pipeline import storage
from pipeline.gallery import Gallery
from pipeline.index.faiss_indexes import IndexSpec
from pipeline.metrics import fold_metrics, i2t_ranks, metrics_from_ranks, t2i_ranks, zero_shot_accuracy


def examples(gallery: Gallery, n: int = 5, k: int = 5) -> list[dict]:
    """A few caption -> top-k image queries, with the ground-truth image marked."""
    out = []
    step = max(1, len(gallery.captions) // max(n, 1))
    for qi in range(0, min(len(gallery.captions), n * step), step):
        sims = gallery.image_emb @ gallery.text_emb[qi]  # (N,)
        top = torch.topk(sims, min(k, len(sims))).indices.tolist()
        truth = int(gallery.text_to_image[qi])
        out.append({"query": gallery.captions[qi], "truth": gallery.keys[truth],
                    "top": [{"key": gallery.keys[i], "score": float(sims[i]), "hit": i == truth} for i in top]})
    return out


def image_examples(gallery: Gallery, n: int = 5, k: int = 5) -> list[dict]:
    """A few image -> top-k caption queries; a hit is a caption of the query image."""
    out = []
    step = max(1, len(gallery.keys) // max(n, 1))
    for ii in range(0, min(len(gallery.keys), n * step), step):
        sims = gallery.text_emb @ gallery.image_emb[ii]  # (M,)
        top = torch.topk(sims, min(k, len(sims))).indices.tolist()
        out.append({"query": gallery.keys[ii],
                    "top": [{"caption": gallery.captions[j], "score": float(sims[j]),
                             "hit": int(gallery.text_to_image[j]) == ii} for j in top]})
    return out


def recall_curve(ranks: torch.Tensor, max_k: int = 50) -> list[float]:
    """Recall@K in percent for K = 1..max_k from 1-based ranks."""
    r = ranks.numpy()
    return [float(100.0 * (r <= k).mean()) for k in range(1, max_k + 1)]


def approximate_t2i(gallery: Gallery, index, kind: str, ks=(1, 5, 10)) -> dict:
    """Text -> image Recall@K when the image gallery is searched through the approximate `index` (the
    numbers a deployed search returns), beside the exact ones. The rank beyond the index's top max(K) is
    unknown, so only recalls are reported."""
    k = min(max(ks), len(gallery.keys))
    found = index.search(gallery.text_emb.numpy(), k)[1]  # (M, k)
    hit_at = (found == gallery.text_to_image.numpy()[:, None])  # (M, k)
    return {"type": kind, **{f"R@{kk}": float(100.0 * hit_at[:, :kk].any(1).mean()) for kk in ks if kk <= k}}


PROMPT = "a photo of a {}"


def zero_shot(gallery: Gallery, encode_text, prompt: str = PROMPT) -> dict | None:
    """Classify every labelled image among its gallery's classes by the prompt embeddings -> top-1/top-5."""
    if not gallery.labels:
        return None
    classes = sorted(set(gallery.labels))
    class_emb = encode_text([prompt.format(c) for c in classes])  # (C, D)
    labels = torch.tensor([classes.index(x) for x in gallery.labels])
    return {"classes": len(classes), "prompt": prompt,
            **zero_shot_accuracy(gallery.image_emb, class_emb.float(), labels)}


def evaluate_gallery(gallery: Gallery, ks=(1, 5, 10), chunk: int = 1024, n_examples: int = 5,
                     spec: IndexSpec | None = None, folds: int = 5, encode_text=None,
                     image_index=None) -> dict:
    """The contract metrics, plus: the COCO 1K protocol (mean over `folds` folds) when the gallery has
    5,000 images, text -> image recall through the approximate index when one is configured, recall@K
    curves and rank lists for the plots, and example queries both ways."""
    i2t = i2t_ranks(gallery.image_emb, gallery.text_emb, gallery.text_to_image, chunk)  # (N,)
    t2i = t2i_ranks(gallery.image_emb, gallery.text_emb, gallery.text_to_image, chunk)  # (M,)
    metrics = metrics_from_ranks(i2t, t2i, tuple(ks))
    if len(gallery.keys) == 5000 and folds > 1:  # COCO's 5K test set: report 5K and the 1K folds
        order = sorted(range(len(gallery.keys)), key=gallery.keys.__getitem__)  # folds follow the split's order
        position = torch.empty(len(order), dtype=torch.long)
        position[torch.tensor(order)] = torch.arange(len(order))
        metrics["protocols"] = {"5k": {k: metrics[k] for k in ("i2t", "t2i", "rsum")},
                                "1k": fold_metrics(gallery.image_emb[order], gallery.text_emb,
                                                   position[gallery.text_to_image], folds, tuple(ks), chunk)}
    if spec is not None and spec.resolve(len(gallery.keys)) != "flat":
        if image_index is None:  # not handed the index the job built: build one like it
            from pipeline.index.faiss_indexes import build_index

            image_index, _ = build_index(gallery.image_emb.numpy(), spec)
        metrics["approximate"] = approximate_t2i(gallery, image_index, spec.resolve(len(gallery.keys)), tuple(ks))
    if encode_text is not None and gallery.labels:
        metrics["zero_shot"] = zero_shot(gallery, encode_text)
    metrics["curves"] = {"i2t": recall_curve(i2t), "t2i": recall_curve(t2i)}
    metrics["ranks"] = {"i2t": i2t.tolist(), "t2i": t2i.tolist()}
    metrics["examples"] = examples(gallery, n_examples)
    metrics["image_examples"] = image_examples(gallery, n_examples)
    lopsided = caption_concentration(gallery)
    if lopsided:
        metrics["caption_concentration"] = lopsided
    return metrics


def caption_concentration(gallery: Gallery, share: float = 0.2) -> dict | None:
    """{'key', 'share', 'captions'} when one image holds more than `share` of the gallery's captions (and more
    than five times an even share): its captions then make most of the text -> image queries, and the recall
    says mostly how that one image is found. None for a balanced gallery."""
    m, n = len(gallery.text_to_image), len(gallery.keys)
    if not m or n < 2:
        return None
    counts = torch.bincount(gallery.text_to_image, minlength=n)
    top = int(counts.argmax())
    frac = float(counts[top]) / m
    if frac <= share or frac <= 5.0 / n:
        return None
    return {"key": gallery.keys[top], "share": round(frac, 4), "captions": int(counts[top])}


def checkpoint_label(ckpt: str, taken: set) -> str:
    """A short unique name for a checkpoint in a comparison: its run and checkpoint folder names."""
    parts = [p for p in str(ckpt).rstrip("/").split("/") if p and p != "checkpoints"]
    label = "/".join(parts[-2:]) or str(ckpt)
    while label in taken:
        label += "'"
    taken.add(label)
    return label


def index_and_score(ckpt: str, paths: list[str], index_dir: str, eval_cfg, index_cfg, scaling, skip_log=None,
                    reranker=None, rerank_k: int = 20):
    """Embed the gallery into `index_dir` (two passes to Parquet: Ray Data's, or the driver's where it is
    small), build and save its indexes, read the gallery back and score it (and, given a `reranker`, re-score
    each query's top `rerank_k` with it: metrics['rerank']). -> (metrics, index meta, captions dropped with
    their skipped images)"""
    from pipeline.checkpoint import read_config
    from pipeline.console import phase
    from pipeline.encoder import load
    from pipeline.index.embedding_passes import embed_to_parquet, read_gallery
    from pipeline.index.sharded import build_gallery_indexes, load_gallery_index, write_index

    spec = IndexSpec.of(index_cfg)
    with phase("embed gallery (images, captions)"):
        emb = embed_to_parquet(ckpt, paths, read_config(ckpt)["data"]["image_size"], index_dir,
                               scaling.num_workers, scaling.use_gpu, eval_cfg.batch_size, skip_log,
                               eval_cfg.in_driver_images)
    with phase(f"build index ({emb.n_images} images, {emb.n_captions} captions)"):
        built = build_gallery_indexes(index_dir, spec, index_cfg.shard_rows)
        meta = write_index(index_dir, built, ckpt, spec, emb.n_images, emb.n_captions, emb.dim)
    with phase("evaluate"):
        gallery, orphans = read_gallery(index_dir)
        image_index = built["images"][0] or load_gallery_index(index_dir, "images", meta)
        metrics = evaluate_gallery(gallery, eval_cfg.ks, eval_cfg.chunk_size, eval_cfg.examples, spec,
                                   encode_text=load(ckpt).encode_text, image_index=image_index)
        if reranker is not None:
            metrics["rerank"] = rerank_block(reranker, gallery, rerank_k, eval_cfg.ks)
    return metrics, meta, orphans


def rerank_block(reranker, gallery: Gallery, k: int, ks) -> dict:
    """R@K both ways before and after the head re-scores each query's top `k` (clamped to the gallery, with a
    note), and its cost per query."""
    from pipeline.rerank.fusion import rerank_recalls

    scorer, meta = reranker
    n = min(len(gallery.keys), len(gallery.text_emb))
    if k > n:
        print(f"[evaluate] rerank.k={k} is larger than the gallery ({len(gallery.keys)} images, "
              f"{len(gallery.text_emb)} captions): re-scoring the top {n}")
    block = rerank_recalls(scorer, gallery.image_emb, gallery.text_emb, gallery.text_to_image, min(k, n), tuple(ks))
    for d in ("i2t", "t2i"):
        print(f"[evaluate] re-ranked {d} R@1 {block[d]['before']['R@1']:.1f} -> {block[d]['after']['R@1']:.1f}")
    return {**block, "description": meta["description"], "reranker": meta["two_tower"]["checkpoint"]}


def comparison_row(label: str, ckpt: str, metrics: dict, meta: dict) -> dict:
    return {"label": label, "checkpoint": str(ckpt), "i2t": metrics["i2t"], "t2i": metrics["t2i"],
            "rsum": metrics["rsum"], "index": {k: meta.get(k) for k in ("type", "recall@10_vs_exact", "qps")},
            **({"approximate": metrics["approximate"]} if "approximate" in metrics else {})}


def run(checkpoints: str | list[str], data: str, out: str, eval_cfg, scaling, index_cfg,
        train_history: list | None = None, reranker=None, rerank_k: int = 20) -> dict:
    """Score one checkpoint, or several side by side: each gallery embedded and indexed under
    `out`/index[/<label>], the first checkpoint's full report in `out`, with a comparison table of all.
    `reranker`: (fusion head, its meta) from `rerank.job.load`: the report adds R@K with each query's top
    `rerank_k` re-scored by it. -> report dict"""

    from pipeline import report
    from pipeline.checkpoint import find_latest, read_config, read_state
    from pipeline.data.ingest import expand_paths
    from pipeline.data.skips import SkipLog

    checkpoints = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)
    paths = expand_paths(data, "--data")
    rows, taken, first = [], set(), None
    for i, given in enumerate(checkpoints):
        ckpt = find_latest(given)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint under {given}")
        label = checkpoint_label(ckpt, taken)
        index_dir = storage.join(out, "index", *([label.replace("/", "_")] if len(checkpoints) > 1 else []))
        skip_log = SkipLog.start()
        metrics, meta, orphans = index_and_score(ckpt, paths, index_dir, eval_cfg, index_cfg, scaling, skip_log,
                                                 reranker if i == 0 else None, rerank_k)
        rows.append(comparison_row(label, ckpt, metrics, meta))
        if i == 0:
            skipped = skip_log.read().get("gallery", {})
            first = (ckpt, metrics, meta, {r: len(k) for r, k in skipped.items()}, orphans)
        print(f"[evaluate] {label}: rsum {metrics['rsum']:.1f} ({i + 1}/{len(checkpoints)})")
    ckpt, metrics, meta, skipped, orphans = first
    if len(rows) > 1:
        metrics["comparison"] = rows
    history = train_history if train_history is not None else read_state(ckpt).get("history", [])
    data_block = {"skipped": {"gallery": skipped}, **({"captions_of_skipped_images": orphans} if orphans else {})}
    return report.publish(out, metrics, meta, ckpt, read_config(ckpt), history, data_block, paths,
                          eval_cfg.in_driver_images)
