"""A training worker's batches from its own epoch stream, with the bookkeeping an exact resume needs.

The stream (see `ingest.train_epoch_dataset`) is Ray Data's prepared blocks in position order: sample rows,
and after each prepared batch one tally row {"first", "last", "counts", "examples"} that says which
positions that batch covered and which of them were skipped. The batcher
- cuts equal local batches (the last partial one is dropped), optionally drawn from a seeded shuffle buffer;
- keeps the `Cursor` (`epoch_plan`): a sample is done once the step that trained it has run
  (`mark_trained`), a prepared batch's skipped rows once its tally row has been read;
- sums the tally rows into a `SkipTally`, so skips are counted where the data is consumed, with no actor;
- counts the samples trained from each source of data.train (`mix`), for the realised mix of the epoch.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

import numpy as np

from pipeline.data.epoch.plan import ROW_BITS, Cursor
from pipeline.data.skips import SkipTally

SAMPLE_COLUMNS = ("key", "image", "tokens", "pos")  # data.decode=gpu: 'image' is a tensor on the device


def _rows(column, mask: np.ndarray):
    """The rows of a numpy array or a torch tensor (on any device) where `mask` is True."""
    if isinstance(column, np.ndarray):
        return column[mask]
    import torch

    return column[torch.from_numpy(mask).to(column.device)]


def _cat(a, b):
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    import torch

    return torch.cat([a, b])


class EpochBatcher:
    def __init__(self, blocks: Iterable[dict], batch_size: int, buffer: int = 0,
                 rng: np.random.Generator | None = None, cursor: Cursor | None = None,
                 tally: SkipTally | None = None, entry_source: list[int] | None = None, n_sources: int = 1,
                 mix: list[int] | None = None):
        self.blocks, self.batch_size, self.buffer = blocks, batch_size, buffer
        self.rng = rng or np.random.default_rng(0)
        self.cursor = cursor or Cursor()
        self.tally = tally or SkipTally()
        # entry_source[i]: the source of entry i of the epoch list (None: one source); mix[s]: samples trained
        # from source s so far this epoch
        self.entry_source = None if entry_source is None else np.asarray(entry_source, dtype=np.int64)
        self.mix = np.zeros(n_sources, dtype=np.int64)
        if mix:
            self.mix[:len(mix)] = mix
        self.pool: dict[str, np.ndarray] | None = None  # pulled, untrained sample rows (all pending)

    def __iter__(self) -> Iterator[dict]:
        for block in self.blocks:
            self._take(block)
            while self._size() >= max(self.buffer, self.batch_size):
                yield self._draw()
        while self._size() >= self.batch_size:
            yield self._draw()

    def mark_trained(self, pos: np.ndarray) -> None:
        """After the step that trained the batch with these positions."""
        for p in map(int, pos):
            self.cursor.pending.discard(p)
            if p >= self.cursor.next:
                self.cursor.done.add(p)
        if self.entry_source is None:
            self.mix[0] += len(pos)
        else:
            self.mix += np.bincount(self.entry_source[np.asarray(pos, dtype=np.int64) >> ROW_BITS],
                                    minlength=len(self.mix))

    def state(self) -> dict:
        """What a checkpoint keeps for this worker (pending rows at or past `next` are read again anyway)."""
        c = self.cursor
        return {"cursor": Cursor(c.next, {p for p in c.pending if p < c.next}, set(c.done)).to_dict(),
                "tally": self.tally.to_dict(), "mix": self.mix.tolist()}

    # ------------------------------------------------------------------------------------------ internals

    def _size(self) -> int:
        return 0 if self.pool is None else len(self.pool["pos"])

    def _take(self, block: dict) -> None:
        marks = np.asarray([bool(t) for t in block["tally"]], dtype=bool)
        samples = {c: _rows(block[c] if hasattr(block[c], "device") else np.asarray(block[c]), ~marks)
                   for c in SAMPLE_COLUMNS}
        if len(samples["pos"]):
            self.cursor.pending.update(map(int, samples["pos"]))
            self.pool = samples if self.pool is None else {c: _cat(self.pool[c], samples[c]) for c in SAMPLE_COLUMNS}
        for t in np.asarray(block["tally"])[marks]:  # after the block's samples: they come first in the stream
            self._close(json.loads(t))

    def _close(self, tally: dict) -> None:
        """A prepared batch is over: its skips are counted, and the cursor moves past it."""
        self.tally.merge(SkipTally.from_dict(tally))
        last = int(tally["last"])
        c = self.cursor
        c.next = max(c.next, last + 1)
        c.done = {p for p in c.done if p > last}

    def _draw(self) -> dict:
        n = self._size()
        if self.buffer:
            pick = np.zeros(n, dtype=bool)
            pick[self.rng.choice(n, self.batch_size, replace=False)] = True
        else:
            pick = np.arange(n) < self.batch_size
        out = {c: _rows(self.pool[c], pick) for c in SAMPLE_COLUMNS}
        self.pool = {c: _rows(self.pool[c], ~pick) for c in SAMPLE_COLUMNS}
        return out
