"""Validation inside the training loop.

Two ways, chosen by the driver (`in_memory`) so every rank agrees:
- streamed: rank 0 reads data.val through Ray Data and embeds all of it each time, the other ranks waiting
  (a validation set too large to hold);
- in memory (data.cache_decoded, where the prepared set fits): every rank reads it once, keeps it, and from
  then on embeds only its own slice; the slices' embeddings are gathered on rank 0, which scores them. The
  images are prepared once, no rank waits for another, and no JPEG is decoded again.
Both score the same gallery (in memory it is in key order; the metrics do not depend on the order).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.distributed import broadcast_buffers, gather_objects
from pipeline.encoder import Encoder
from pipeline.gallery import Gallery, embed_gallery
from pipeline.metrics import retrieval_metrics

IN_MEMORY_BYTES = 2 * 2**30  # the most a worker keeps of prepared validation images (auto)


def in_memory(mode: str, n_val: int, image_size: int) -> bool:
    """Whether the workers keep the prepared validation set (data.cache_decoded=`mode`, `n_val` samples by
    their count, 0 where no file says)."""
    if mode == "false" or not n_val:
        return False
    return mode == "true" or n_val * 3 * image_size * image_size <= IN_MEMORY_BYTES


def embed(model, tokenizer, batches, device, loss=None) -> Gallery:
    maps = loss.retrieval_maps() if hasattr(loss, "retrieval_maps") else None
    if maps is not None:  # deep CCA: retrieve in the canonical space its statistics define
        model.set_retrieval_maps(*maps)
    encoder = Encoder(model, tokenizer, 0, device)  # puts the model in eval mode
    gallery = embed_gallery(encoder.encode_pixels, encoder.encode_text, batches)
    model.train()
    return gallery


def validate(model, tokenizer, shard, device, eval_batch: int = 256, loss=None) -> dict:
    """Retrieval metrics of the whole of `shard` (anything with Ray Data's `iter_batches`), on this worker."""
    gallery = embed(model, tokenizer, shard.iter_batches(batch_size=eval_batch, batch_format="numpy"), device, loss)
    return retrieval_metrics(gallery.image_emb, gallery.text_emb, gallery.text_to_image)


class ValidationSet:
    """This worker's side of validation: `stream` (a Ray Data shard, read on rank 0 each time) or `blocks` (a
    callable -> the prepared set's blocks, called once; every rank then keeps the set in memory). `run` is
    collective in memory (every rank calls it at the same step) and returns the metrics on rank 0, None
    elsewhere; streamed, only rank 0 calls it."""

    def __init__(self, rank: int, world: int, stream=None, blocks=None, eval_batch: int = 256):
        self.rank, self.world, self.stream, self.blocks, self.eval_batch = rank, world, stream, blocks, eval_batch
        self.split = blocks is not None
        self.rows: dict[str, np.ndarray] | None = None  # the whole prepared set, once read

    def run(self, model, tokenizer, device, loss=None) -> dict | None:
        if not self.split:
            return validate(model, tokenizer, self.stream, device, self.eval_batch, loss)
        broadcast_buffers(model)  # every rank embeds with the statistics the checkpoint keeps (rank 0's)
        batches = list(self._my_batches())
        if batches:
            part = embed(model, tokenizer, batches, device, loss)
            mine = (part.image_emb, part.text_emb, part.text_to_image)
        else:  # fewer validation rows than workers
            empty = torch.zeros(0, model.embed_dim)
            mine = (empty, empty, torch.zeros(0, dtype=torch.long))
        parts = gather_objects(mine)
        if self.rank != 0:
            return None
        images, texts, owners, offset = [], [], [], 0
        for img, txt, owner in parts:  # rank order is row order: owners move by the images before them
            images.append(img)
            texts.append(txt)
            owners.append(owner + offset)
            offset += len(img)
        return retrieval_metrics(torch.cat(images), torch.cat(texts), torch.cat(owners))

    def _my_batches(self):
        if self.rows is None:
            blocks = [b for b in self.blocks() if len(b["key"])]
            if not blocks:
                raise ValueError("data.val has no readable samples")
            rows = {k: np.concatenate([b[k] for b in blocks]) for k in ("key", "image", "captions")}
            # Blocks come in any order (read tasks finish when they do): the same order on every rank (the
            # keys', unique in a split) is what makes the slices a partition of the set.
            order = np.argsort(rows["key"].astype(str), kind="stable")
            self.rows = {k: v[order] for k, v in rows.items()}
        n = len(self.rows["key"])
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        for s in range(lo, hi, self.eval_batch):
            yield {k: v[s:min(hi, s + self.eval_batch)] for k, v in self.rows.items()}
