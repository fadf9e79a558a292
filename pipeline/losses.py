"""Contrastive losses over embeddings: pure PyTorch, no Ray, no rank or world-size objects.

Every loss is called as `loss(image_emb, text_emb)` on one batch. In a distributed run the train step also
passes the all-gathered global batch and this worker's row offset into it:

    loss(img_local, txt_local, image_all=img_global, text_all=txt_global, offset=rank * b)

Each worker then scores only its own rows against the global columns (O(b*B) memory) and returns the mean
over its rows. With gradients flowing back through the all-gather and DDP averaging parameter gradients
over workers, the applied update equals single-process autograd on the concatenated global batch.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: beyond it the softmax saturates and training turns unstable


def _globals(image_emb, text_emb, image_all, text_all):
    if (image_all is None) != (text_all is None):
        raise ValueError("pass both image_all and text_all, or neither")
    return (image_emb, text_emb) if image_all is None else (image_all, text_all)


class InfoNCE(nn.Module):
    """Symmetric CLIP loss / NT-Xent over cosine similarities with logit scale s = 1/tau:

        L = 1/2 * mean_i [ -log softmax_j(s * <x_i, y_j>)[i]  -  log softmax_j(s * <y_i, x_j>)[i] ]

    x = image embeddings, y = text embeddings, j over the global batch; s = exp(logit_scale) clamped at 100,
    learnable when `learn_temperature`.
    """

    def __init__(self, temperature: float = 0.07, learn_temperature: bool = True, label_smoothing: float = 0.0):
        super().__init__()
        if not 0 < temperature <= 10:
            raise ValueError(f"temperature={temperature} must lie in (0, 10]")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1)")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.label_smoothing = label_smoothing

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_all: torch.Tensor | None = None,
                text_all: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        image_all, text_all = _globals(image_emb, text_emb, image_all, text_all)
        s = self.scale()
        labels = torch.arange(image_emb.shape[0], device=image_emb.device) + offset  # (b,)
        logits_i2t = s * image_emb @ text_all.T  # (b, B)
        logits_t2i = s * text_emb @ image_all.T  # (b, B)
        ls = self.label_smoothing
        return 0.5 * (F.cross_entropy(logits_i2t, labels, label_smoothing=ls)
                      + F.cross_entropy(logits_t2i, labels, label_smoothing=ls))


LOSSES: dict[str, type[nn.Module]] = {"infonce": InfoNCE}


def loss_params(name: str) -> list[str]:
    """The keyword parameters loss `name` takes."""
    return [p for p in inspect.signature(LOSSES[name].__init__).parameters if p != "self"]


def build_loss(name, **params) -> nn.Module:
    """`build_loss('infonce', temperature=0.05)`, or `build_loss(cfg.loss)` with a LossConfig section.

    From a config section only the fields the chosen loss takes are passed; explicit keyword parameters the
    loss does not take are an error naming the ones it does.
    """
    if not isinstance(name, str):  # a LossConfig-like section
        section = name
        name = section.name
        params = {k: getattr(section, k) for k in loss_params(name) if hasattr(section, k)} | params
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    accepted = loss_params(name)
    extra = sorted(set(params) - set(accepted))
    if extra:
        raise ValueError(f"loss {name!r} takes no parameter {extra[0]!r}; it takes {accepted}")
    return LOSSES[name](**params)
