"""Passes over data small enough to read in this process: the rows, evaluation batches and report thumbnails
that the Ray Data passes give, without a pipeline's start (seconds on a small machine, about 10 s where the
pass needs an actor pool holding a model). Which passes qualify: `fits_in_driver`, against
eval.in_driver_images.
"""
from __future__ import annotations

import os
from typing import Iterator

from pipeline.data import transforms


def fits_in_driver(paths: list[str], max_images: int) -> bool:
    """At most `max_images` samples in `paths` by their stats files or Parquet footers, or by reading shards
    small enough (`counts.count_or_read`; larger shards no file counts are left to Ray Data); `max_images` 0:
    never."""
    from pipeline.data.formats.counts import count_or_read

    return max_images > 0 and 0 < count_or_read(paths) <= max_images


def shard_batch(path: str, name: str) -> dict:
    """One shard's rows as one numpy batch (`name`: its name in the keys, `shards.shard_names`), with the "shard"
    column the Ray Data read gives (s3:// paths as they are, local ones absolute)."""
    from pipeline import storage
    from pipeline.data.formats.shards import iter_shard, rows_to_batch

    source = path if storage.is_remote(path) else os.path.abspath(path)
    return rows_to_batch(list(iter_shard(path, name)), source)


def shard_batches(paths: list[str]) -> Iterator[dict]:
    """`shard_batch` of each shard, in shard order."""
    from pipeline.data.formats.shards import shard_names

    names = shard_names(paths)
    for path in paths:
        yield shard_batch(path, names[path])


def prepare_eval(rows: dict, image_size: int, skip_log=None, split: str = "val",
                 view: tuple[str, str] = ("bilinear", "shortest"), captionless: bool = False) -> dict:
    """A batch of rows -> their evaluation rows (`transforms.prepare_eval_batch`), skips recorded in
    `skip_log` (a `skips.SkipLog`) under `split`: the one preparation of `ingest.eval_dataset` and the passes here
    (`ingest.eval_shard_tasks` returns its skips instead)."""
    out, skips = transforms.prepare_eval_batch(rows, image_size, view, captionless)
    if skip_log is not None and skips:
        skip_log.record(split, skips)
    return out


def chunks(batch: dict, size: int) -> Iterator[dict]:
    """A numpy batch in slices of at most `size` rows (none for an empty batch)."""
    n = len(batch["key"])
    for i in range(0, n, size):
        yield {k: v[i:i + size] for k, v in batch.items()}


def eval_batches(paths: list[str], image_size: int, skip_log=None, split: str = "val",
                 view: tuple[str, str] = ("bilinear", "shortest"), batch_size: int = 128) -> Iterator[dict]:
    """`ingest.eval_dataset`'s rows, in batches of at most `batch_size` (none crosses a shard)."""
    for rows in shard_batches(paths):
        yield from chunks(prepare_eval(rows, image_size, skip_log, split, view), batch_size)


def images_by_key(paths: list[str], keys: set[str]) -> dict[str, bytes]:
    """key -> image bytes of the wanted samples, as `by_key.images_by_key` reads them with Ray."""
    return {key: image for rows in shard_batches(paths) for key, image in zip(rows["key"], rows["image"])
            if key in keys and image is not None}
