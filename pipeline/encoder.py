"""Inference side of a trained checkpoint: PIL images and strings in, L2-normalised float32 vectors out.

    enc = pipeline.load("runs/demo")            # a run dir or one checkpoint dir
    img = enc.encode_image([PIL.Image.open("x.jpg")])   # (1, D)
    txt = enc.encode_text(["a red circle left of a blue square"])  # (1, D)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import checkpoint
from pipeline.config import ModelConfig, build
from pipeline.data.tokenizer import Tokenizer
from pipeline.data.transforms import image_view, resize_image
from pipeline.models import TwoTower, build_model


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
        pixels = np.stack([resize_image(im.convert("RGB"), self.image_size, *self.view) for im in images]) if images else \
            np.zeros((0, 3, self.image_size, self.image_size), np.uint8)
        return self.encode_pixels(pixels)

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
    cfg = checkpoint.read_config(ckpt)
    tokenizer = checkpoint.read_tokenizer(ckpt)
    # load_files=False: model.pt holds the trained weights, so the files the model started from (image weights,
    # word vectors) need not exist where it is loaded.
    model = build_model(build(ModelConfig, cfg["model"]), len(tokenizer), image_size=cfg["data"]["image_size"],
                        max_tokens=tokenizer.max_tokens, load_files=False, spec=checkpoint.read_spec(ckpt))
    checkpoint.load_weights(ckpt, model)
    enc = Encoder(model, tokenizer, cfg["data"]["image_size"], device, view=image_view(cfg["data"]))
    enc.checkpoint = str(ckpt)
    return enc


@dataclass
class Gallery:
    """Embedded evaluation set: every image once, every caption once, and which image each caption is of."""
    image_emb: torch.Tensor  # (N, D)
    text_emb: torch.Tensor  # (M, D)
    text_to_image: torch.Tensor  # (M,) int64 index into the images
    keys: list[str]  # (N,) sample keys
    captions: list[str]  # (M,)
    labels: list[str] | None = None  # (N,) class names when the samples carry a "label" (zero-shot)


class GalleryBuilder:
    """Collects embedded eval rows in order: image and caption vectors, keys, and each caption's image."""

    def __init__(self):
        self.img: list = []
        self.txt: list = []
        self.keys: list[str] = []
        self.captions: list[str] = []
        self.owner: list[int] = []
        self.labels: list[str] = []

    def add_rows(self, keys, captions_json, labels=None) -> list[list[str]]:
        """Register rows (key, JSON list of captions, optional class label); -> the parsed caption lists."""
        lists = [json.loads(c) for c in captions_json]
        self.labels += [str(x) for x in labels] if labels is not None else [""] * len(lists)
        for key, caps in zip(keys, lists):
            self.owner += [len(self.keys)] * len(caps)
            self.keys.append(str(key))
            self.captions += caps
        return lists

    def build(self) -> Gallery:
        if not self.keys:
            raise ValueError("the gallery has no readable samples")
        labelled = all(self.labels) and len(set(self.labels)) > 1  # zero-shot needs every image labelled
        return Gallery(_stack(self.img), _stack(self.txt), torch.tensor(self.owner, dtype=torch.long),
                       self.keys, self.captions, list(self.labels) if labelled else None)


def _stack(parts: list) -> torch.Tensor:
    """Row blocks (tensors or arrays) -> one float32 tensor."""
    # np.array copies: blocks from Ray's object store are read-only, which torch warns about
    return torch.cat([torch.from_numpy(np.array(p, dtype=np.float32)) for p in parts])


def embed_gallery(encode_pixels, encode_text, batches) -> Gallery:
    """Eval batches {'key', 'image', 'captions' (JSON list)} -> Gallery. The two encoders are callables so
    the same code serves a live training model and a loaded checkpoint."""
    g = GalleryBuilder()
    for batch in batches:
        g.img.append(encode_pixels(batch["image"]))
        g.add_rows(batch["key"], batch["captions"])
    g.txt = [encode_text(g.captions[s:s + 1024]) for s in range(0, len(g.captions), 1024)]
    return g.build()
