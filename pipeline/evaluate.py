"""Retrieval evaluation: contract metrics from an embedded gallery, plus index statistics and examples.

    pipeline evaluate --checkpoint runs/demo --data data/demo/val --out runs/demo/report
"""
from __future__ import annotations

import torch

from pipeline import storage
from pipeline.encoder import Gallery
from pipeline.indexes import IndexSpec
from pipeline.metrics import retrieval_metrics


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


def evaluate_gallery(gallery: Gallery, ks=(1, 5, 10), chunk: int = 1024, n_examples: int = 5) -> dict:
    metrics = retrieval_metrics(gallery.image_emb, gallery.text_emb, gallery.text_to_image, tuple(ks), chunk)
    metrics["examples"] = examples(gallery, n_examples)
    return metrics


def run(checkpoint: str, data: str, out: str, eval_cfg, scaling, train_history: list | None = None,
        index_meta: dict | None = None, index_spec: IndexSpec | None = None) -> dict:
    """Embed the eval shards with Ray Data, score them, write the report into `out`. -> report dict."""
    from pipeline import report
    from pipeline.checkpoint import find_latest, read_config, read_state
    from pipeline.data.ingest import expand_paths, skip_counter
    from pipeline.index import embed_dataset

    ckpt = find_latest(checkpoint)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint under {checkpoint}")
    cfg = read_config(ckpt)
    counter = skip_counter()
    gallery = embed_dataset(ckpt, expand_paths(data, "--data"), cfg["data"]["image_size"],
                            scaling.num_workers, scaling.use_gpu, eval_cfg.batch_size, counter)
    metrics = evaluate_gallery(gallery, eval_cfg.ks, eval_cfg.chunk_size, eval_cfg.examples)
    if index_meta is None:  # the approximate index's numbers beside the exact ones
        from pipeline.index import held_out
        from pipeline.indexes import build_index, measure

        spec = index_spec or IndexSpec()
        vectors = gallery.image_emb.numpy()
        index, build_s = build_index(vectors, spec)
        index_meta = {"type": spec.resolve(len(vectors)), "build_s": build_s,
                      **measure(index, vectors, held_out(gallery.text_emb.numpy()), k=min(10, len(vectors)))}
    import ray

    skipped = ray.get(counter.get.remote()).get("gallery", {})
    history = train_history if train_history is not None else read_state(ckpt).get("history", [])
    with storage.staging_dir(out) as local:  # s3:// outputs are written locally, then uploaded
        return report.write_report(local, metrics, index_meta, ckpt, cfg, history,
                                   {"skipped": {"gallery": {r: len(k) for r, k in skipped.items()}}})
