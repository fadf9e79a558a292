"""A training worker's data for one epoch: its own seeded share of the shards (`data.epoch.plan`), read and
prepared by Ray Data in position order (`ingest.train_epoch_dataset`), cut into local batches that keep the
cursor a mid-epoch checkpoint needs (`data.epoch.batcher`), and moved to the device.

Each worker runs its own Ray Data pipeline instead of taking blocks from a streaming split: what a worker
trains is then a function of (seed, epoch, rank, shard list), so a checkpoint can say where it stopped.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.data.epoch.batcher import EpochBatcher
from pipeline.data.epoch.plan import Cursor, Resampling, choose_layout, worker_share
from pipeline.data.skips import SkipTally
from pipeline.distributed import all_reduce_sum
from pipeline.training.plan import TrainShards


def to_device(batches, device: torch.device, channels_last: bool = False):
    """numpy batches -> {'key', 'pos' (numpy or None), 'image': (b,3,S,S) uint8, 'tokens': (b,L) int64} on the
    device; pinned host memory on GPU lets the copy overlap the previous step."""
    if device.type == "cuda":
        to = lambda a: torch.from_numpy(a).pin_memory().to(device, non_blocking=True)  # noqa: E731
    else:
        to = torch.from_numpy
    fmt = torch.channels_last if device.type == "cuda" and channels_last else torch.contiguous_format
    for batch in batches:
        image = batch["image"]  # data.decode=gpu: already decoded on the device
        image = image.to(device) if isinstance(image, torch.Tensor) else to(np.ascontiguousarray(image))
        yield {"key": batch["key"], "pos": batch.get("pos"), "image": image.contiguous(memory_format=fmt),
               "tokens": to(np.ascontiguousarray(batch["tokens"]))}


def worker_batches(paths: list[str], cfg, tokenizer, rank: int, world: int, epoch: int, device) -> Iterator[dict]:
    """What training feeds worker `rank` of `world` in `epoch`, on `device`: its share of `paths`, read and
    prepared by its own Ray Data pipeline, cut into local batches (the benchmarks measure exactly this)."""
    layout = choose_layout(paths, None, world, cfg.data.readers_per_worker, cfg.train.seed)
    yield from to_device(epoch_batches(TrainShards(paths, layout), cfg, rank, world, tokenizer, epoch,
                                       device=device), device, cfg.train.channels_last)


def data_cpus(cfg) -> float | None:
    """The CPUs one worker's reads and decodes may hold at once: the cluster's CPUs beyond the training
    workers', shared between the workers (each runs its own Ray Data pipeline; unbounded, the first to start
    would take every slot). None outside a Ray cluster."""
    import ray

    if not ray.is_initialized():
        return None
    total = float(ray.cluster_resources().get("CPU", 0))
    n = cfg.scaling.num_workers
    return max(1.0, (total - n * cfg.scaling.cpus_per_worker) / n)


def primed(blocks: Iterable) -> Iterator:
    """`blocks`, the first of them already being fetched in a thread: a Ray Data pipeline takes about a second
    to plan, start its read tasks and bring its first block, and the next epoch's can do that while this one
    validates and checkpoints."""
    it, box = iter(blocks), {}

    def fetch() -> None:
        try:
            box["first"] = next(it)
        except StopIteration:
            pass
        except BaseException as e:  # raised where the batches are taken, in the training thread
            box["error"] = e

    thread = threading.Thread(target=fetch, daemon=True, name="prime-next-epoch")
    thread.start()

    def chain() -> Iterator:
        thread.join()
        if "error" in box:
            raise box["error"]
        if "first" in box:
            yield box["first"]
            yield from it

    return chain()


def epoch_batches(shards: TrainShards, cfg, rank: int, world: int, tokenizer, epoch: int,
                  saved: dict | None = None, prime: bool = False, device=None) -> EpochBatcher:
    """This worker's batches of `shards` for `epoch`, from where `saved` (its part of a mid-epoch checkpoint)
    left off; `prime`: start reading at once (`primed`); `device`: where data.decode=gpu decodes (default the
    CPU)."""
    from pipeline.data import ingest

    paths = shards.paths
    share = worker_share(paths, shards.counts or None, world, rank, shards.layout, cfg.train.seed, epoch,
                         Resampling.from_dict(shards.resampling))
    source_of = dict(zip(paths, shards.sources or [0] * len(paths)))
    cursor = Cursor.from_dict(saved["cursor"]) if saved and "cursor" in saved else None
    ds = ingest.train_epoch_dataset(share, paths, tokenizer, cfg.data, cfg.train.seed, epoch, cursor,
                                    data_cpus(cfg), shards.decoded_cache)
    blocks = [] if ds is None else ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=4)
    if cfg.data.decode == "gpu":
        from pipeline.data.epoch.device_decode import device_blocks
        from pipeline.data.transforms import image_view

        view = image_view(cfg.data)
        blocks = device_blocks(blocks, device or torch.device("cpu"), cfg.data.image_size, view[0],
                               two_step=not cfg.data.augment and view[1] == "shortest")
    if prime:
        blocks = primed(blocks)
    rng = np.random.default_rng([cfg.train.seed, epoch, rank, cursor.next if cursor else 0])
    return EpochBatcher(blocks, cfg.local_batch_size(), cfg.data.shuffle_buffer, rng, cursor,
                        SkipTally.from_dict(saved["tally"]) if saved else None,
                        [source_of[p] for p in share.shards], len(cfg.data.sources()),
                        saved.get("mix") if saved else None)


def skip_check(tally_of, samples: int, max_fraction: float):
    """-> a collective callable: the unusable training samples of this epoch on all workers so far (each
    worker's `tally_of()` counts its own), raising on every rank once they exceed `max_fraction` of
    `samples`. Skips only grow, so crossing the line mid-epoch already decides the epoch's share."""
    if not samples:
        return None

    def check() -> int:
        skipped = all_reduce_sum(tally_of().skipped_samples())
        if skipped > max_fraction * samples:
            raise ValueError(
                f"{skipped} of {samples} training samples ({100 * skipped / samples:.1f}%) are unusable, more "
                f"than data.max_skip_fraction={max_fraction}; see the reasons with `pipeline data inspect "
                f"<data.train>`, fix or drop those shards, or raise data.max_skip_fraction")
        return skipped

    return check


class KeyRecord:
    """run.record_keys: every worker appends the keys each step trained to <run_dir>/keys/rank<r>.jsonl, with
    the checkpoint it started from, so a resumed run can be checked for samples lost or trained twice."""

    def __init__(self, run_dir: str, rank: int, resumed_from: str | None):
        self.path = Path(run_dir) / "keys" / f"rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.start = resumed_from

    def __call__(self, epoch: int, step: int, keys) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"start": self.start, "epoch": epoch, "step": step, "keys": [str(k) for k in keys]})
                    + "\n")
