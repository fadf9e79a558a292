"""Exactly-once mid-epoch resume, without Ray: shard dealing, row filters, the batcher's cursor and skip tally.

The stream stand-in below keeps the contract `ingest.train_epoch_dataset` gives the batcher: rows in position
order, each prepared batch's sample rows followed by one tally row; blocks cut at random places."""
import json

import numpy as np
import pytest

from pipeline.data.epoch.batcher import EpochBatcher
from pipeline.data.epoch.plan import (Cursor, RowFilter, choose_layout, deal_shards, layout, position,
                                      sample_shards, unused_by_deal, worker_share)
from pipeline.data.skips import EXAMPLES, SkipTally


def make_shards(n_shards=6, rows=24, bad_every=6):
    """shard -> rows (key, bad?): every bad_every-th row of a shard is unusable."""
    return {f"s{i:02d}.tar": [(f"s{i:02d}/{j:03d}", j % bad_every == 0) for j in range(rows)]
            for i in range(n_shards)}


def stream(shards, share, cursor, prepare_batch=5, seed=0):
    """Blocks as the worker's Ray Data pipeline yields them, from `cursor` on."""
    rng = np.random.default_rng(seed)
    keep = RowFilter.of(share, cursor)
    first = cursor.first_shard() if cursor else 0
    rows = [(position(i, j), key, bad) for i, path in enumerate(share.shards) if i >= first
            for j, (key, bad) in enumerate(shards[path]) if keep.keeps(i, j)]
    out_rows = []
    for b in range(0, len(rows), prepare_batch):
        chunk = rows[b:b + prepare_batch]
        tally = SkipTally()
        tally.add_keys({"corrupt_image": [k for _, k, bad in chunk if bad]})
        out_rows += [(p, k, "") for p, k, bad in chunk if not bad]
        out_rows.append((chunk[-1][0], "", json.dumps({"first": chunk[0][0], "last": chunk[-1][0],
                                                       **tally.to_dict()})))
    i = 0
    while i < len(out_rows):  # blocks of random length: a tally row may land in the next block
        n = int(rng.integers(1, 9))
        part = out_rows[i:i + n]
        i += n
        yield {"key": np.array([k for _, k, _ in part], dtype=object),
               "image": np.zeros((len(part), 1), np.uint8), "tokens": np.zeros((len(part), 2), np.int64),
               "pos": np.array([p for p, _, _ in part], np.int64),
               "tally": np.array([t for _, _, t in part], dtype=object)}


def run_worker(shards, share, batch, buffer, stop_after=None, saved=None):
    cursor = Cursor.from_dict(saved["cursor"]) if saved else None
    b = EpochBatcher(stream(shards, share, cursor), batch, buffer, np.random.default_rng(1), cursor,
                     SkipTally.from_dict(saved["tally"]) if saved else None)
    trained = []
    for step, out in enumerate(b, 1):
        trained.append(list(out["key"]))
        b.mark_trained(out["pos"])
        if stop_after is not None and step == stop_after:
            return trained, json.loads(json.dumps(b.state()))  # through JSON, as a checkpoint keeps it
    return trained, b.state()


@pytest.mark.parametrize("buffer", [0, 12])
@pytest.mark.parametrize("stop_after", [1, 3, 7])
@pytest.mark.parametrize("world", [1, 2])
def test_an_interrupted_epoch_trains_every_usable_sample_exactly_once(buffer, stop_after, world):
    shards = make_shards()
    usable = {k for rows in shards.values() for k, bad in rows if not bad}
    batch, full, resumed, steps_full, steps_resumed = 4, [], [], [], []
    for rank in range(world):
        share = worker_share(sorted(shards), None, world, rank, layout(6, world, 2), seed=3, epoch=1)
        keys_full, state_full = run_worker(shards, share, batch, buffer)
        before, saved = run_worker(shards, share, batch, buffer, stop_after=stop_after)
        after, state_after = run_worker(shards, share, batch, buffer, saved=saved)
        full += keys_full
        resumed += before + after
        steps_full.append(len(keys_full))
        steps_resumed.append(len(before) + len(after))
        assert state_after["tally"] == state_full["tally"]  # each skip counted once, none lost
    flat = [k for b in resumed for k in b]
    assert len(flat) == len(set(flat)), "a sample was trained twice"
    assert steps_resumed == steps_full
    # each worker holds 20 usable samples a shard, a whole number of batches: every one of them is trained
    assert set(flat) == {k for b in full for k in b} == usable


def test_the_tally_counts_every_skip_with_bounded_examples():
    shards = make_shards(n_shards=4, rows=40, bad_every=3)
    share = worker_share(sorted(shards), None, 1, 0, "shards", seed=0, epoch=1)
    _, state = run_worker(shards, share, 4, 0)
    bad = sum(bad for rows in shards.values() for _, bad in rows)
    assert state["tally"]["counts"] == {"corrupt_image": bad}
    assert len(state["tally"]["examples"]["corrupt_image"]) == EXAMPLES
    merged = SkipTally.merged([state["tally"], state["tally"]])
    assert merged.counts["corrupt_image"] == 2 * bad and len(merged.examples["corrupt_image"]) == EXAMPLES
    assert merged.skipped_samples() == 2 * bad
    nots = SkipTally.from_keys({"not_downloaded": ["a", "b"], "corrupt_image": ["c"]})
    assert nots.skipped_samples() == 1  # failed downloads are no samples


def test_shards_are_dealt_level_and_the_same_in_every_run():
    paths = [f"{i:05d}.tar" for i in range(40)]
    counts = {p: 100 + (i % 7) * 50 for i, p in enumerate(paths)}
    a = deal_shards(paths, counts, 4, seed=1, epoch=2)
    assert a == deal_shards(paths, counts, 4, seed=1, epoch=2)
    assert a != deal_shards(paths, counts, 4, seed=1, epoch=3)  # a new order each epoch
    assert sorted(p for share in a for p in share) == paths  # each shard to one worker
    loads = [sum(counts[p] for p in share) for share in a]
    assert max(loads) - min(loads) <= max(counts.values())
    assert layout(40, 4, 2) == "shards" and layout(7, 4, 2) == "rows"
    # 4096 samples in 4 shards of 1000 and one of 96 on 2 workers: whole shards leave 96 unused, and one worker
    # short of a 2048 batch; rows it is. Eight equal shards deal evenly.
    uneven = dict(zip(paths[:5], [1000, 1000, 1000, 1000, 96]))
    assert unused_by_deal(paths[:5], uneven, 2, 0) == 96 and choose_layout(paths[:5], uneven, 2, 2, 0) == "rows"
    even = dict.fromkeys(paths[:8], 1000)
    assert choose_layout(paths[:8], even, 2, 2, 0) == "shards" and choose_layout(paths[:8], None, 2, 2, 0) == "shards"
    rows = [worker_share(paths[:3], None, 2, r, "rows", 0, 1) for r in range(2)]
    assert rows[0].shards == rows[1].shards and (rows[0].stride, rows[1].offset) == (2, 1)


def test_rows_layout_gives_each_row_to_one_worker():
    shards = make_shards(n_shards=3, rows=10, bad_every=1000)
    seen = []
    for rank in range(3):
        share = worker_share(sorted(shards), None, 3, rank, "rows", seed=0, epoch=1)
        keys, _ = run_worker(shards, share, 1, 0)
        seen += [k for b in keys for k in b]
    assert sorted(seen) == sorted(k for rows in shards.values() for k, bad in rows if not bad)


def test_the_vocabulary_sample_is_fixed_and_capped():
    paths = [f"{i:05d}.tar" for i in range(100)]
    counts = dict.fromkeys(paths, 1000)
    chosen = sample_shards(paths, counts, 5000, seed=0)
    assert len(chosen) == 5 and chosen == sample_shards(paths, counts, 5000, seed=0)
    assert sample_shards(paths, counts, 0, seed=0) == paths
