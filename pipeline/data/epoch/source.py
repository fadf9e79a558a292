"""The Ray Data datasource of one training worker's epoch: one read task per entry of its epoch list
(`epoch_plan.WorkerShare.shards`), in list order, each row tagged with its position.

Not a FileBasedDatasource: that one keys everything by path (a resampled epoch may list a shard twice, each
time in its own order) and stats every file before the first read (thousands of S3 HEADs per worker and
epoch on a large corpus). Here a shard is opened only when its read task runs.
"""
from __future__ import annotations

from contextlib import ExitStack
from functools import partial
from typing import Iterator

import numpy as np
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.data.epoch.decoded_cache import ShardDecoder
from pipeline.data.formats import files
from pipeline.data.formats.shards import (arrow_paths, chunked, permute_windows, rows_to_batch, rows_to_table,
                                          open_shard, shard_names, shard_rows, shard_seed)

BLOCK_ROWS = 256


class EpochSource(Datasource):
    """`shards[first:]` of a worker's epoch list; `names_of`: the dataset's whole shard list (keys name a
    shard by its path below their common folder); `row_filter`: an `epoch_plan.RowFilter`, applied before
    anything but a row's key is kept."""

    def __init__(self, shards: list[str], first: int, names_of: list[str], *, shuffle_seed: int, shuffle_block: int,
                 epoch: int, row_filter, with_images: bool = True, prepare=None, chunk_rows: int = BLOCK_ROWS,
                 cache=None):
        from pipeline import storage

        self.shards, self.first = shards, first
        self.names = shard_names(names_of)
        self.fs = storage.arrow_filesystem(shards[0])[0]
        self.args = dict(shuffle_seed=shuffle_seed, shuffle_block=shuffle_block, epoch=epoch, row_filter=row_filter,
                         with_images=with_images, prepare=prepare, chunk_rows=chunk_rows, cache=cache,
                         layout=files.current())  # the worker's CSV columns (data.csv_*), into each read task

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
                       ) -> list[ReadTask]:
        tasks, seen = [], {}
        for at, path in enumerate(self.shards):
            repeat = seen[path] = seen.get(path, -1) + 1  # counted from the list's start, wherever it resumes
            if at < self.first:
                continue
            read = partial(read_entry, self.fs, path, self.names[path], at, repeat, **self.args)
            tasks.append(ReadTask(read, BlockMetadata(num_rows=None, size_bytes=None, input_files=[path],
                                                      exec_stats=None), per_task_row_limit=per_task_row_limit))
        return tasks


def read_entry(fs, path: str, shard: str, at: int, repeat: int, *, shuffle_seed: int, shuffle_block: int,
               epoch: int, row_filter, with_images: bool, prepare=None, chunk_rows: int = BLOCK_ROWS,
               cache=None, layout=None) -> Iterator:
    """The rows of entry `at` of the epoch list (the `repeat`-th time its shard appears there): seeded,
    window-shuffled, positioned, filtered, in tables of `chunk_rows` rows; with `prepare` (numpy batch ->
    numpy batch), each table prepared in the task. `cache`: (`decoded_cache.CacheClient`, base side,
    interpolation) where data.cache_decoded is on: the shard's rows come decoded from the cache, or are
    decoded here (all of them, by the reader that claims the shard) and put there."""
    bare = arrow_paths([path])[0]
    # A shard's seed is a function of (seed, epoch, shard); a repeat in a resampled list gets its own order,
    # crops and caption choices.
    base = shard_seed(shuffle_seed, epoch, shard if not repeat else f"{shard}#{repeat}")
    with ExitStack() as stack:
        source, builder = _cached_rows(cache, path), None
        if source is None:
            f = stack.enter_context(open_shard(fs, bare))
            source = shard_rows(fs, f, bare, shard, with_images, layout)
            if cache is not None and cache[0].claim(path):
                builder = ShardDecoder(cache[1], cache[2])
                source = _publishing(builder.decode(source), builder, cache[0], path)
        rows = (dict(row, seed=base + i) for i, row in enumerate(source))
        rows = permute_windows(rows, shuffle_block, np.random.default_rng(base))
        rows = (dict(row, pos=(at << 32) | i) for i, row in enumerate(rows) if row_filter.keeps(at, i))
        if prepare is None:
            out = lambda chunk: rows_to_table(chunk, path)  # noqa: E731
        else:  # straight to a numpy batch: no Arrow round trip, and rows may hold decoded arrays (the cache)
            out = lambda chunk: _prepared(prepare, chunk, path)  # noqa: E731
        yield from (out(chunk) for chunk in chunked(rows, chunk_rows))


def _cached_rows(cache, path: str):
    if cache is None:
        return None
    decoded = cache[0].lookup(path)
    return None if decoded is None else decoded.iter_rows()


def _publishing(rows, builder, client, path: str):
    """`rows`, and once the last has passed, the decoded shard handed to the cache; a read stopped early
    (a resampled epoch ends mid-shard) gives its claim back instead."""
    done = False
    try:
        yield from rows
        done = True
        client.store(path, builder.finish())
    finally:
        if not done:
            client.release(path)


def _prepared(prepare, rows: list[dict], shard: str):
    from ray.data.block import BlockAccessor

    return BlockAccessor.batch_to_block(prepare(rows_to_batch(rows, shard)))

