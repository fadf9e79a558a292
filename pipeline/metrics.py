"""Pure retrieval metrics over embeddings (NumPy/PyTorch, no Ray).

i2t: an image query hits at K when any of its captions is among the top K texts.
t2i: a caption query hits at K when its image is among the top K images. Ranks are 1-based.
Ties count against the query: an item's rank is 1 + the number of other candidates (for i2t, other than
the image's own captions) scoring at least as high. Without ties this is the usual rank (clip_benchmark's,
VSE++'s); with ties a collapsed model (all-zero or identical embeddings) ranks last instead of first.
A non-finite score is the worst there is: a NaN or infinite candidate outranks every true item, and a
query whose true item scores non-finite gets the worst rank.
Recalls are percentages. The chunked versions bound memory to chunk x N and are tested against naive loops.
"""
from __future__ import annotations

import numpy as np
import torch


def _rank(sims: torch.Tensor, own: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """sims (c, N) scores of each query's candidates, own (c,) the true item's score, truth (c, N) the
    query's true items -> (c,) 1-based rank: 1 + the other candidates scoring >= own. Non-finite scores
    become +inf (they beat everything), a non-finite own score -inf (it beats nothing)."""
    sims = torch.where(torch.isfinite(sims), sims, torch.inf)
    own = torch.where(torch.isfinite(own), own, -torch.inf)
    return ((sims >= own[:, None]) & ~truth).sum(1) + 1


def _one_hot(index: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(index.shape[0], n, dtype=torch.bool).scatter_(1, index[:, None], True)  # (c, n)


def t2i_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor,
              chunk: int = 1024) -> torch.Tensor:
    """image_emb (N,D), text_emb (M,D), text_to_image (M,) image index of each caption -> (M,) 1-based rank
    of each caption's image among all images."""
    ranks = torch.empty(text_emb.shape[0], dtype=torch.long)
    for s in range(0, text_emb.shape[0], chunk):
        sims = text_emb[s:s + chunk] @ image_emb.T  # (c, N)
        own = sims.gather(1, text_to_image[s:s + chunk, None])[:, 0]  # (c,)
        ranks[s:s + chunk] = _rank(sims, own, _one_hot(text_to_image[s:s + chunk], sims.shape[1]))
    return ranks


def i2t_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor,
              chunk: int = 1024) -> torch.Tensor:
    """-> (N,) 1-based rank of the best-ranked ground-truth caption of each image among all captions."""
    n = image_emb.shape[0]
    ranks = torch.empty(n, dtype=torch.long)
    for s in range(0, n, chunk):
        sims = image_emb[s:s + chunk] @ text_emb.T  # (c, M)
        is_gt = text_to_image[None, :] == torch.arange(s, min(s + chunk, n))[:, None]  # (c, M)
        # the best own caption with a finite score (a NaN one is no hit); the image's other captions are hits
        best_gt = torch.where(torch.isfinite(sims) & is_gt, sims, -torch.inf).max(1).values  # (c,)
        ranks[s:s + chunk] = _rank(sims, best_gt, is_gt)
    return ranks


def summarize_ranks(ranks: torch.Tensor | np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """1-based ranks -> {'R@1': %, ..., 'medr': median rank, 'meanr': mean rank}."""
    r = np.asarray(ranks, dtype=np.float64)
    out = {f"R@{k}": float(100.0 * (r <= k).mean()) for k in ks}
    out["medr"] = float(np.floor(np.median(r)))
    out["meanr"] = float(r.mean())
    return out


def metrics_from_ranks(i2t_rank: torch.Tensor, t2i_rank: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Ranks of both directions -> the contract's report block: {'i2t', 't2i', 'rsum', 'n_images',
    'n_captions'}."""
    i2t, t2i = summarize_ranks(i2t_rank, ks), summarize_ranks(t2i_rank, ks)
    rsum = sum(i2t[f"R@{k}"] + t2i[f"R@{k}"] for k in ks)
    return {"i2t": i2t, "t2i": t2i, "rsum": rsum, "n_images": len(i2t_rank), "n_captions": len(t2i_rank)}


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor,
                      ks=(1, 5, 10), chunk: int = 1024) -> dict:
    """The contract's report block computed from embeddings (chunked: memory bounded by chunk x N)."""
    return metrics_from_ranks(i2t_ranks(image_emb, text_emb, text_to_image, chunk),
                              t2i_ranks(image_emb, text_emb, text_to_image, chunk), ks)


def flat_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    """{'i2t': {'R@1': ..}, 'rsum': ..} -> {'val/i2t_R@1': .., 'val/rsum': ..}: stable, namespaced keys."""
    out = {}
    for direction in ("i2t", "t2i"):
        for k, v in metrics[direction].items():
            out[f"{prefix}/{direction}_{k}"] = v
    out[f"{prefix}/rsum"] = metrics["rsum"]
    return out


def fold_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor, folds: int = 5,
                 ks=(1, 5, 10), chunk: int = 1024) -> dict:
    """The COCO 1K protocol: the metrics of `folds` consecutive, equal blocks of images (each with only its
    own images' captions as the gallery), averaged. Images beyond folds x (N // folds) are left out."""
    size = image_emb.shape[0] // folds
    if size == 0:
        raise ValueError(f"{image_emb.shape[0]} images cannot make {folds} folds")
    per_fold = []
    for f in range(folds):
        lo, hi = f * size, (f + 1) * size
        mine = (text_to_image >= lo) & (text_to_image < hi)  # (M,) captions of this fold's images
        per_fold.append(retrieval_metrics(image_emb[lo:hi], text_emb[mine], text_to_image[mine] - lo, ks, chunk))
    out = {d: {k: float(np.mean([m[d][k] for m in per_fold])) for k in per_fold[0][d]} for d in ("i2t", "t2i")}
    out["rsum"] = float(np.mean([m["rsum"] for m in per_fold]))
    out["n_images"], out["n_captions"], out["folds"] = size, int(np.mean([m["n_captions"] for m in per_fold])), folds
    return out


def zero_shot_accuracy(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor,
                       ks=(1, 5)) -> dict[str, float]:
    """image_emb (N,D), class_emb (C,D) one prompt embedding per class, labels (N,) class index ->
    {'top1': %, 'top5': %}: an image is right at K when its class is among the K most similar prompts."""
    sims = image_emb @ class_emb.T  # (N, C)
    rank = _rank(sims, sims.gather(1, labels[:, None])[:, 0], _one_hot(labels, sims.shape[1]))  # (N,)
    return {f"top{k}": float(100.0 * (rank <= k).float().mean()) for k in ks if k <= class_emb.shape[0]}


def mean_per_class_recall(pred: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict:
    """Predicted and true class indices (N,) -> {'mean': %, 'per_class': [% or 0.0 per class]}: the mean runs over
    the classes that have images (scikit-learn's balanced_accuracy_score, which clip_benchmark reports)."""
    per_class, present = [], []
    for c in range(n_classes):
        mine = labels == c
        present.append(bool(mine.any()))
        per_class.append(float(100.0 * (pred[mine] == c).float().mean()) if mine.any() else 0.0)
    mean = float(np.mean([r for r, p in zip(per_class, present) if p])) if any(present) else 0.0
    return {"mean": mean, "per_class": per_class}
