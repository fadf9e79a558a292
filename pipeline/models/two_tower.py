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
    image projection and the text side learn. `freeze_text` does the same for the text tower.

    A tower marked `.projected` (OpenCLIP's) maps into the joint space itself and gets no projection of ours.
    `mean`, `std`: the per-channel statistics the image tower's weights expect. `spec`: what rebuilds the towers
    without their source files (see `pipeline.models.pretrained`); it is saved with every checkpoint."""

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, embed_dim: int, freeze_image: bool = False,
                 freeze_text: bool = False, mean=MEAN, std=STD, spec: dict | None = None):
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.freeze_image, self.freeze_text = freeze_image, freeze_text
        if freeze_image:
            image_tower.requires_grad_(False)
        if freeze_text:
            text_tower.requires_grad_(False)
        projected = getattr(image_tower, "projected", False) and getattr(text_tower, "projected", False)
        embed_dim = image_tower.out_dim if projected else embed_dim
        self.image_proj = nn.Identity() if projected else nn.Linear(image_tower.out_dim, embed_dim)
        self.text_proj = nn.Identity() if projected else nn.Linear(text_tower.out_dim, embed_dim)
        self.spec = spec or {}
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
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
        if self.freeze_text:
            self.text_tower.eval()
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
        """(B,L) int64 token ids, right-padded with the tokenizer's pad id -> (B,D) projections, not normalised."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text):
            feats = self.text_tower(tokens)  # (B, F)
        return self.text_proj(feats)

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
                max_tokens: int = 32, load_files: bool = True, spec: dict | None = None) -> TwoTower:
    """cfg: a `ModelConfig` section (or anything with the same attributes).

    vocab: the words behind the ids (`tokenizer.vocab`), needed when model.text.embeddings.path is set.
    image_size, max_tokens: the data's `data.image_size` and the tokenizer's `max_tokens` (the ViT and the text
    transformer size their position embeddings by them); the defaults are the demo's.
    load_files: False skips every weights file (model.weights, model.image.weights, the hf: folder's weights,
    model.text.embeddings.path), for a caller that loads trained weights over the model anyway.
    spec: a checkpoint's towers.json; rebuilds timm:, hf: and open_clip: towers without their source files.
    """
    from pipeline.models import pretrained

    spec = spec or {}
    parts: dict = {}
    name = getattr(cfg, "open_clip", "")  # bench/test stand-ins for ModelConfig may lack the property
    if name:
        image, text, oc = pretrained.build_open_clip(name, cfg.weights if load_files else "", image_size,
                                                     spec.get("open_clip"), cfg.pretrained_tag)
        if vocab_size > oc["vocab_size"]:
            raise ValueError(f"the tokenizer has {vocab_size} ids but open_clip:{name}'s text tower embeds "
                             f"{oc['vocab_size']}; use data.tokenizer=pretrained")
        parts, pre = {"open_clip": oc}, oc["preprocess"]
    else:
        image, parts["image"] = _image_tower(cfg.image, image_size, load_files, spec.get("image"))
        text, parts["text"] = _text_tower(cfg.text, vocab_size, max_tokens, vocab, load_files, spec.get("text"))
        pre = parts["image"].get("preprocess", {})
    _memory_options(image, text, cfg, bool(name))
    parts = {k: v for k, v in parts.items() if v}
    parts["preprocess"] = {"mean": list(pre.get("mean", MEAN)), "std": list(pre.get("std", STD)),
                           **{k: pre[k] for k in ("interpolation", "resize_mode", "image_size", "crop_pct")
                              if k in pre}}
    return TwoTower(image, text, cfg.embed_dim, freeze_image=cfg.image.freeze,
                    freeze_text=getattr(cfg.text, "freeze", False), mean=parts["preprocess"]["mean"],
                    std=parts["preprocess"]["std"], spec=parts)


def _memory_options(image: nn.Module, text: nn.Module, cfg, open_clip: bool) -> None:
    """model.image/text.grad_checkpointing and model.image.patch_dropout, each as the tower's library does it.
    Both act in train mode only: the same weights embed alike with them or without."""
    from pipeline.models import memory

    def kind(arch: str) -> str:
        return "open_clip" if open_clip else arch.split(":")[0] if ":" in arch else arch

    ikind, tkind = kind(cfg.image.arch), kind(cfg.text.arch)
    if getattr(cfg.image, "grad_checkpointing", False):
        memory.enable_grad_checkpointing(image, ikind, "model.image.grad_checkpointing")
    if getattr(cfg.text, "grad_checkpointing", False):
        memory.enable_grad_checkpointing(text, tkind, "model.text.grad_checkpointing")
    if getattr(cfg.image, "patch_dropout", 0.0):
        memory.set_patch_dropout(image, ikind, cfg.image.patch_dropout)


def _image_tower(cfg, image_size: int, load_files: bool, spec: dict | None) -> tuple[nn.Module, dict]:
    from pipeline.models import pretrained

    weights = cfg.weights if load_files else ""
    if cfg.arch.startswith("timm:"):
        return pretrained.build_timm(cfg.arch[len("timm:"):], weights, image_size, spec)
    return build_image_tower(cfg.arch, cfg.width, weights, image_size), {}


def _text_tower(cfg, vocab_size: int, max_tokens: int, vocab, load_files: bool, spec: dict | None):
    from pipeline.models import pretrained

    if cfg.arch.startswith("hf:"):
        tower, tspec = pretrained.build_hf(cfg.arch[len("hf:"):], cfg.pooling, load_files, spec)
        rows = tower.encoder.get_input_embeddings().num_embeddings
        if vocab_size > rows:
            raise ValueError(f"the tokenizer has {vocab_size} ids but {cfg.arch}'s embedding table has {rows} rows: "
                             "use data.tokenizer=pretrained (the folder's own tokenizer)")
        if max_tokens > tower.max_tokens:
            raise ValueError(f"data.max_tokens={max_tokens} exceeds the {tower.max_tokens} positions of {cfg.arch}")
        return tower, tspec
    return build_text_tower(cfg, vocab_size, max_tokens, vocab, load_vectors=load_files), {}
