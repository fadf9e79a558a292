"""The train step's objective: embed the local batch, all-gather with gradients, score with a pure loss; and
gradient caching for global batches whose activations do not fit in memory.

Gradient caching (Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"):
1. embed the local batch chunk by chunk without a graph;
2. all-gather, compute the loss on the whole global batch, backpropagate into the (detached) embeddings;
3. re-embed each chunk with a graph and backpropagate its cached embedding gradients.
Parameter gradients equal the full-batch ones for models whose forward treats samples independently
(BatchNorm sees per-chunk statistics, as under any micro-batching). Activation memory is one chunk's.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.distributed import all_gather_with_grad, average_gradients
from pipeline.losses import in_batch_loss


class ContrastiveObjective(nn.Module):
    """Model + loss in one module, so DDP averages the loss's own parameters (logit scale, bias) too."""

    def __init__(self, model: nn.Module, loss: nn.Module, autocast_dtype: torch.dtype | None = None,
                 head: nn.Module | None = None, head_weight: float = 1.0, head_negatives: int = 15):
        super().__init__()
        self.model, self.loss = model, loss
        # rerank.enabled: the fusion re-ranker (rerank.fusion.FusionScorer) learns beside the towers, its in-batch
        # listwise loss added with `head_weight`; its gradients reach the towers too (they are not frozen).
        self.head, self.head_weight, self.head_negatives = head, head_weight, head_negatives
        self.normalized = getattr(loss, "normalized_inputs", True)  # deep CCA wants raw projections
        self.autocast_dtype = autocast_dtype  # e.g. torch.bfloat16: the towers run in it, the rest in fp32
        self.nonfinite: torch.Tensor | None = None  # (2,) bool: image, text embeddings non-finite since last read
        self.clock = None  # a phases.PhaseClock: the forward all-gather is timed on the steps it says
        self.timed = False

    def embed(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.autocast_dtype is None:
            img, txt = self.model(images, tokens, normalize=self.normalized)  # (b, D), (b, D)
        else:
            with torch.autocast(images.device.type, dtype=self.autocast_dtype):
                img, txt = self.model(images, tokens, normalize=self.normalized)
            # fp32 from here on: the all-gather and the b x B logits keep full precision for the softmax
            img, txt = img.float(), txt.float()
        self._note_finite(img, txt)
        return img, txt

    @torch.no_grad()
    def _note_finite(self, img: torch.Tensor, txt: torch.Tensor) -> None:
        """Flag a tower whose embeddings hold NaN or inf, on the device (no host sync on the hot path)."""
        bad = torch.stack([~torch.isfinite(img).all(), ~torch.isfinite(txt).all()])
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad

    def take_nonfinite(self, device: torch.device) -> torch.Tensor:
        """-> (2,) bool, image and text towers non-finite since the last call; resets the flags."""
        out = self.nonfinite if self.nonfinite is not None else torch.zeros(2, dtype=torch.bool, device=device)
        self.nonfinite = None
        return out

    def score(self, img: torch.Tensor, txt: torch.Tensor, rank: int) -> torch.Tensor:
        if self.clock is None:
            img_all, txt_all = all_gather_with_grad(img), all_gather_with_grad(txt)  # (B, D)
        else:
            with self.clock("all_gather", self.timed):
                img_all, txt_all = all_gather_with_grad(img), all_gather_with_grad(txt)
        loss = self.loss(img, txt, image_all=img_all, text_all=txt_all, offset=rank * img.shape[0])
        if self.head is None:
            return loss
        return loss + self.head_weight * in_batch_loss(self.head, img, txt, img_all, txt_all, rank * img.shape[0],
                                                       self.head_negatives)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, rank: int) -> torch.Tensor:
        return self.score(*self.embed(images, tokens), rank)


def unwrap(objective: nn.Module) -> nn.Module:
    """The bare objective inside a DistributedDataParallel wrapper (itself when there is none)."""
    return objective.module if isinstance(objective, nn.parallel.DistributedDataParallel) else objective


def _chunks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def grad_cached_backward(objective: ContrastiveObjective, images: torch.Tensor, tokens: torch.Tensor, rank: int,
                         micro_batch: int) -> torch.Tensor:
    """Backpropagate the global-batch loss chunk by chunk; gradients land in `objective`'s parameters,
    averaged over workers. `objective` is the bare module, not its DDP wrapper. -> the loss (detached)."""
    spans = _chunks(images.shape[0], micro_batch)
    with torch.no_grad():
        parts = [objective.embed(images[a:b], tokens[a:b]) for a, b in spans]
    img = torch.cat([p[0] for p in parts]).requires_grad_(True)  # (b, D) leaf: collects dL/dimg
    txt = torch.cat([p[1] for p in parts]).requires_grad_(True)
    loss = objective.score(img, txt, rank)
    loss.backward()  # fills img.grad, txt.grad and the loss's own parameter gradients
    for a, b in spans:
        ie, te = objective.embed(images[a:b], tokens[a:b])
        torch.autograd.backward([ie, te], [img.grad[a:b], txt.grad[a:b]])
    average_gradients(objective)
    return loss.detach()


def backward_step(objective: nn.Module, images: torch.Tensor, tokens: torch.Tensor, rank: int,
                  micro_batch: int = 0) -> torch.Tensor:
    """Loss and gradients for one step: plain (through DDP when wrapped) or gradient-cached."""
    if micro_batch and micro_batch < images.shape[0]:
        return grad_cached_backward(unwrap(objective), images, tokens, rank, micro_batch)
    loss = objective(images, tokens, rank)
    loss.backward()
    if getattr(objective, "sharded", False):  # FSDP: the loss's and the head's gradients are not sharded
        average_gradients(objective)
    return loss.detach()
