"""The two-tower model: image tower and text tower, each projected into one L2-normalised space.

Knows nothing of distribution; the loss (and its temperature) lives in `pipeline.losses`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.image import build_image_tower
from pipeline.models.text import build_text_tower

# ImageNet statistics: what torchvision ResNet weights expect, harmless for towers trained from scratch.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class TwoTower(nn.Module):
    """`freeze_image`: locked-image tuning. The image tower's parameters take no gradient and the tower stays
    in eval mode even when the model trains (its BatchNorm statistics are those it was loaded with); only the
    image projection and the text side learn."""

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, embed_dim: int, freeze_image: bool = False):
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.freeze_image = freeze_image
        if freeze_image:
            image_tower.requires_grad_(False)
        self.image_proj = nn.Linear(image_tower.out_dim, embed_dim)
        self.text_proj = nn.Linear(text_tower.out_dim, embed_dim)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        # A linear map applied at retrieval time only: identity for the contrastive losses; deep CCA sets it to
        # the canonical projections, because its objective ignores how the raw outputs are scaled and rotated.
        self.register_buffer("image_center", torch.zeros(embed_dim))
        self.register_buffer("image_map", torch.eye(embed_dim))
        self.register_buffer("text_center", torch.zeros(embed_dim))
        self.register_buffer("text_map", torch.eye(embed_dim))
        self.embed_dim = embed_dim

    def train(self, mode: bool = True) -> TwoTower:
        super().train(mode)
        if self.freeze_image:
            self.image_tower.eval()
        return self

    @property
    def word_coverage(self) -> dict | None:
        """How much of the vocabulary the word-vector file covered (see `load_word_vectors`); None without one."""
        return getattr(self.text_tower, "coverage", None)

    def set_retrieval_maps(self, image_center, image_map, text_center, text_map) -> None:
        """(D,), (D,D), (D,), (D,D): encode_* return normalize((projection - center) @ map)."""
        for name, value in (("image_center", image_center), ("image_map", image_map),
                            ("text_center", text_center), ("text_map", text_map)):
            getattr(self, name).copy_(value.detach().to(getattr(self, name).dtype))

    def project_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) uint8 pixels (or floats in [0,1]) -> (B,D) projections, not normalised (deep CCA)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        x = (x - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image):  # no activations kept
            feats = self.image_tower(x)  # (B, F)
        return self.image_proj(feats)

    def project_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,L) int64 word ids, 0 = padding -> (B,D) projections, not normalised."""
        return self.text_proj(self.text_tower(tokens))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) uint8 pixels (or floats in [0,1]) -> (B,D) unit vectors for retrieval."""
        return F.normalize((self.project_image(images) - self.image_center) @ self.image_map, dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,L) int64 word ids, 0 = padding -> (B,D) unit vectors for retrieval."""
        return F.normalize((self.project_text(tokens) - self.text_center) @ self.text_map, dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, normalize: bool = True):
        img, txt = self.project_image(images), self.project_text(tokens)  # (B, D) each
        return (F.normalize(img, dim=-1), F.normalize(txt, dim=-1)) if normalize else (img, txt)


def build_model(cfg, vocab_size: int, *, vocab: list[str] | None = None, image_size: int = 64,
                max_tokens: int = 32, load_files: bool = True) -> TwoTower:
    """cfg: a `ModelConfig` section (or anything with the same attributes).

    vocab: the words behind the ids (`tokenizer.vocab`), needed when model.text.embeddings.path is set.
    image_size, max_tokens: the data's `data.image_size` and the tokenizer's `max_tokens` (the ViT and the text
    transformer size their position embeddings by them); the defaults are the demo's.
    load_files: False skips model.image.weights and model.text.embeddings.path, for a caller that loads trained
    weights over the model anyway (a checkpoint need not travel with the files it started from).
    """
    image = build_image_tower(cfg.image.arch, cfg.image.width, cfg.image.weights if load_files else "", image_size)
    text = build_text_tower(cfg.text, vocab_size, max_tokens, vocab, load_vectors=load_files)
    return TwoTower(image, text, cfg.embed_dim, freeze_image=cfg.image.freeze)
