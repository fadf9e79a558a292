"""An embedded evaluation set (`Gallery`): every image once, every caption once, and which image each caption is
of; built batch by batch from any pair of encoders, so one code path serves a live training model (validation),
a loaded checkpoint (evaluation) and the baselines."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch


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
