"""Hard negatives for the re-ranker, mined from the two-tower model's own ranking of the training set: what
the towers put near the top is what the head must learn to push down. Pure PyTorch, chunked over queries."""
from __future__ import annotations

import torch


def hardest_images(text_emb: torch.Tensor, image_emb: torch.Tensor, text_to_image: torch.Tensor, m: int,
                   chunk: int = 1024) -> torch.Tensor:
    """For each caption (M, d), the `m` images (N, d) the towers rank highest other than its own. -> (M, m)"""
    out = []
    for lo in range(0, len(text_emb), chunk):
        sims = text_emb[lo:lo + chunk] @ image_emb.T  # (c, N)
        sims[torch.arange(len(sims)), text_to_image[lo:lo + chunk]] = float("-inf")
        out.append(sims.topk(m, dim=1).indices)
    return torch.cat(out)


def hardest_captions(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor, m: int,
                     chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image, one of its captions (the first) and the `m` captions of other images the towers rank
    highest. -> (positives (N,), negatives (N, m))"""
    n = len(image_emb)
    first = torch.full((n,), -1, dtype=torch.long)
    order = torch.arange(len(text_to_image) - 1, -1, -1)
    first[text_to_image[order]] = order  # the lowest caption id of each image wins (written last)
    out = []
    for lo in range(0, n, chunk):
        sims = image_emb[lo:lo + chunk] @ text_emb.T  # (c, M)
        own = text_to_image.unsqueeze(0) == torch.arange(lo, lo + len(sims)).unsqueeze(1)  # (c, M)
        out.append(sims.masked_fill(own, float("-inf")).topk(m, dim=1).indices)
    return first, torch.cat(out)
