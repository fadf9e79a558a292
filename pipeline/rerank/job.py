"""`pipeline rerank`: train the fusion re-ranker on a trained two-tower checkpoint, its towers frozen.

    pipeline rerank --checkpoint runs/demo --data data/demo/train --out runs/demo/rerank [--set rerank.fusion=...]
    pipeline evaluate --checkpoint runs/demo --data data/demo/val --out runs/demo/report-rr --rerank runs/demo/rerank

The training shards are embedded once by the checkpoint (the same passes as a gallery: Ray Data actor pools, or
the driver when small); each caption's hardest images and each image's hardest captions under the towers'
own ranking are mined (`mining`); the head then learns, on scaling.num_workers Ray Train workers, to put each
query's true partner first among them (a listwise cross-entropy, both directions), every worker taking its
share of the queries each epoch and DDP averaging the gradients. `out` holds rerank.pt and rerank.json, which
names the two-tower checkpoint and its weights' hash: a re-ranker is only used with the checkpoint it was trained
on. (The towers stay frozen: the head reads their embeddings, so training never decodes an image twice.)
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict

from pipeline import storage

WEIGHTS, META = "rerank.pt", "rerank.json"


def fingerprint(ckpt: str) -> str:
    """The two-tower checkpoint's weights, by the SHA-256 its manifest records for model.pt (a checkpoint written
    before the manifest had hashes: its path)."""
    from pipeline.checkpoint import read_state

    return str(read_state(ckpt).get("sha256", {}).get("model.pt") or storage.join(str(ckpt)))


def describe(r) -> str:
    extra = {"low_rank": f", rank {r.rank}", "compact_bilinear": f", sketch {r.sketch_dim}"}.get(r.fusion, "")
    return f"{r.fusion} fusion{extra}, {r.hidden} hidden"


def train(ckpt: str, paths: list[str], out: str, cfg) -> dict:
    """Embed `paths` with `ckpt`, mine, train the head (cfg: an EvalJobConfig), write it to `out`. -> meta"""
    import torch

    from pipeline.checkpoint import read_config
    from pipeline.console import phase
    from pipeline.index.embedding_passes import embed_to_parquet, read_gallery
    from pipeline.rerank.mining import hardest_captions, hardest_images

    r, t0 = cfg.rerank, time.time()
    with tempfile.TemporaryDirectory() as tmp:
        with phase("embed training set (images, captions)"):
            embed_to_parquet(ckpt, paths, read_config(ckpt)["data"]["image_size"], tmp, cfg.scaling.num_workers,
                             cfg.scaling.use_gpu, cfg.eval.batch_size, None, cfg.eval.in_driver_images)
            gallery, _ = read_gallery(tmp)
    img, txt, t2i = gallery.image_emb, gallery.text_emb, gallery.text_to_image  # (N, D), (M, D), (M,)
    m = min(r.negatives, len(img) - 1)
    if m < 1:
        raise ValueError(f"the training set {paths[0]} has one image: a re-ranker needs negatives")
    with phase(f"mine hard negatives ({m} per query)"):
        neg_img = hardest_images(txt, img, t2i, m)  # (M, m)
        pos_cap, neg_cap = hardest_captions(img, txt, t2i, min(m, len(txt) - 1))  # (N,), (N, m')
    data = {"img": img.numpy(), "txt": txt.numpy(), "t2i": t2i.numpy(), "neg_img": neg_img.numpy(),
            "pos_cap": pos_cap.numpy(), "neg_cap": neg_cap.numpy()}
    with phase(f"train the {r.fusion} head ({r.epochs} epochs)"):
        state, loss = train_head(data, r, cfg.scaling)
    meta = {"fusion": asdict(r), "description": describe(r), "dim": int(img.shape[1]),
            "two_tower": {"checkpoint": str(ckpt), "model_sha256": fingerprint(ckpt)},
            "trained_on": {"data": paths[0] if len(paths) == 1 else f"{paths[0]} ... ({len(paths)} shards)",
                           "images": len(img), "captions": len(txt), "negatives": m},
            "loss": loss, "seconds": round(time.time() - t0, 1)}
    with storage.staging_dir(out) as local:
        torch.save(state, local / WEIGHTS)
        (local / META).write_text(json.dumps(meta, indent=2))
    return meta


def train_head(data: dict, r, scaling_cfg) -> tuple[dict, float]:
    """The head trained on Ray Train workers from `data` (shared through the object store). -> (state, loss)"""
    import ray

    from pipeline.distributed import fit_on_workers

    shared = ray.put(data)

    def loop(c: dict) -> None:
        import torch

        from pipeline.distributed import WorkerContext
        from pipeline.losses import listwise_loss
        from pipeline.rerank.fusion import FusionScorer

        ctx, r = WorkerContext.from_ray(), c["r"]
        d = {k: torch.from_numpy(v) for k, v in ray.get(c["data"]).items()}
        img, txt = d["img"], d["txt"]
        scorer = FusionScorer.from_config(r, img.shape[1])  # both towers embed to the same width
        ddp = ctx.prepare_model(scorer)
        opt = torch.optim.Adam(scorer.parameters(), lr=r.lr)
        steps = max(1, -(-len(txt) // (ctx.world_size * r.batch)))  # the same on every worker

        def share(n: int, epoch: int, salt: int) -> torch.Tensor:  # (steps, b): this worker's queries per step
            order = torch.randperm(n, generator=torch.Generator().manual_seed(r.seed * 7919 + epoch * 31 + salt))
            mine = order[ctx.rank::ctx.world_size]
            per = max(1, -(-len(mine) // steps))
            return mine.repeat(-(-steps * per // max(len(mine), 1)))[:steps * per].view(steps, per)

        total = 0.0
        for epoch in range(r.epochs):
            total = 0.0
            for qt, qi in zip(share(len(txt), epoch, 0), share(len(img), epoch, 1)):
                images = img[torch.cat([d["t2i"][qt, None], d["neg_img"][qt]], 1)]  # (b, 1+m, D): true first
                by_caption = listwise_loss(ddp, images, txt[qt].unsqueeze(1).expand_as(images))
                captions = txt[torch.cat([d["pos_cap"][qi, None], d["neg_cap"][qi]], 1)]  # (b', 1+m', D)
                by_image = listwise_loss(ddp, img[qi].unsqueeze(1).expand_as(captions), captions)
                loss = 0.5 * (by_caption + by_image)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
        ctx.report({"loss": total / steps}, lambda p: torch.save(scorer.state_dict(), p / WEIGHTS))

    import torch

    with tempfile.TemporaryDirectory() as root:  # the head is small: its checkpoint only passes through
        state, metrics = fit_on_workers(loop, {"data": shared, "r": r}, scaling_cfg, root, "rerank",
                                        lambda d: torch.load(f"{d}/{WEIGHTS}", weights_only=True))
    return state, round(float(metrics["loss"]), 4)


def load(rerank_dir: str, ckpt: str):
    """The head in `rerank_dir` for the two-tower checkpoint `ckpt`, refused (ValueError naming both) when it
    was trained on another. `rerank_dir`: a `pipeline rerank` output, or a checkpoint (or run directory) of a run
    with rerank.enabled, whose head was trained with its own towers. -> (FusionScorer in eval mode, meta)"""
    import torch

    from pipeline.config import RerankConfig, build
    from pipeline.rerank.fusion import FusionScorer

    if storage.exists(storage.join(str(rerank_dir), META)):
        with storage.local_copy(rerank_dir) as local:
            meta = json.loads((local / META).read_text())
            state = torch.load(local / WEIGHTS, weights_only=True)
    else:
        meta, state = _from_checkpoint(rerank_dir)
    trained_on = meta["two_tower"]
    if trained_on["model_sha256"] != fingerprint(ckpt):
        raise ValueError(f"the re-ranker {rerank_dir} was trained on the two-tower checkpoint "
                         f"{trained_on['checkpoint']}, not on {ckpt} (their weights differ): train one for it with "
                         f"`pipeline rerank --checkpoint {ckpt} ...`")
    r = build(RerankConfig, meta["fusion"])
    scorer = FusionScorer.from_config(r, meta["dim"])
    scorer.load_state_dict(state)
    return scorer.eval(), meta


def run_head(path: str) -> str | None:
    """The newest checkpoint under `path` (or `path` itself) when its run trained a re-ranker beside the towers
    (rerank.enabled), else None: `pipeline serve` over such a run offers re-ranking without being told."""
    from pipeline import checkpoint

    found = checkpoint.find_latest(path) if storage.exists(path) else None
    return found if found and storage.exists(storage.join(found, checkpoint.HEAD)) else None


def _from_checkpoint(path: str) -> tuple[dict, dict]:
    """The head a run with rerank.enabled trained beside its towers, from its newest checkpoint under `path`
    (or `path` itself). -> (meta as `train` writes it, state dict)"""
    from pipeline import checkpoint
    from pipeline.config import RerankConfig, build

    ckpt = checkpoint.find_latest(path)
    if ckpt is None or not storage.exists(storage.join(ckpt, checkpoint.HEAD)):
        raise ValueError(f"{path} holds no re-ranker: give a `pipeline rerank` output (rerank.json, rerank.pt) or "
                         "a checkpoint of a run trained with rerank.enabled=true")
    r = build(RerankConfig, checkpoint.read_config(ckpt)["rerank"])
    meta = {"fusion": asdict(r), "description": describe(r) + ", trained with the towers",
            "dim": int(checkpoint.read_state(ckpt)["head_dim"]),
            "two_tower": {"checkpoint": ckpt, "model_sha256": fingerprint(ckpt)}}
    return meta, checkpoint.load_head(ckpt)
