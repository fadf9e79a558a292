"""Inference side of a trained checkpoint: PIL images and strings in, L2-normalised float32 vectors out.

    enc = pipeline.load("runs/demo")            # a run dir or one checkpoint dir
    img = enc.encode_image([PIL.Image.open("x.jpg")])   # (1, D)
    txt = enc.encode_text(["a red circle left of a blue square"])  # (1, D)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import checkpoint
from pipeline.data.text.tokenizer import Tokenizer
from pipeline.data.transforms import image_view, pil_pixels
from pipeline.models import TwoTower


class Encoder:
    def __init__(self, model: TwoTower, tokenizer: Tokenizer, image_size: int, device: str | torch.device = "cpu",
                 batch_size: int = 256, view: tuple[str, str] = ("bilinear", "shortest")):
        self.model = model.to(device).eval()
        self.view = view  # (interpolation, resize mode) of the evaluation view, as the checkpoint was trained
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.device = torch.device(device)
        self.batch_size = batch_size

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @torch.no_grad()
    def encode_pixels(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N,3,S,S) uint8 -> (N,D) float32 on the CPU."""
        out = [self.model.encode_image(torch.as_tensor(images[s:s + self.batch_size]).to(self.device)).float().cpu()
               for s in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def encode_image(self, images: list) -> torch.Tensor:
        """List of PIL images -> (N,D) L2-normalised float32."""
        return self.encode_pixels(pil_pixels(images, self.image_size, self.view))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """List of captions -> (N,D) L2-normalised float32."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            tokens = torch.from_numpy(self.tokenizer.encode_batch(list(texts[s:s + self.batch_size])))
            out.append(self.model.encode_text(tokens.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)


def load(path: str | Path, device: str = "cpu") -> Encoder:
    """A checkpoint dir, or a run dir (its newest checkpoint) -> Encoder."""
    ckpt = checkpoint.find_latest(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint under {path}; expected model.pt, tokenizer.json, config.json")
    model, tokenizer, cfg = checkpoint.load_model(ckpt)
    enc = Encoder(model, tokenizer, cfg["data"]["image_size"], device, view=image_view(cfg["data"]))
    enc.checkpoint = str(ckpt)
    return enc
