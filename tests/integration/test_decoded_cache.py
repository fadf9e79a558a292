"""data.cache_decoded on the shared local Ray: a shard is decoded once, by the reader that claims it; later
epochs read it from the object store without the file; every path trains on the same pixels and skips."""
import shutil

import numpy as np

from pipeline.config import RunJobConfig, load_config
from pipeline.data import ingest
from pipeline.data.epoch import decoded_cache
from pipeline.data.epoch.plan import worker_share

from .conftest import ROOT


def _epoch(paths, cfg, tokenizer, epoch, cache, rank=0, world=1, layout="shards"):
    """Every row one worker's epoch stream yields: (key, image, tokens, tally) in stream order."""
    share = worker_share(paths, None, world, rank, layout, 5, epoch)
    ds = ingest.train_epoch_dataset(share, paths, tokenizer, cfg.data, 5, epoch, cache=cache)
    rows = []
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows += [(str(k), img.copy(), tok.copy(), str(t)) for k, img, tok, t in
                 zip(b["key"], b["image"], b["tokens"], b["tally"])]
    return rows


def _same(a, b):
    assert [r[0] for r in a] == [r[0] for r in b] and [r[3] for r in a] == [r[3] for r in b]
    assert all(np.array_equal(x[1], y[1]) and np.array_equal(x[2], y[2]) for x, y in zip(a, b))


def test_each_shard_is_decoded_once_and_read_from_the_cache_after(ray_cluster, smoke_data, tmp_path):
    import ray

    data = tmp_path / "train"
    shutil.copytree(smoke_data / "train", data)
    paths = sorted(str(p) for p in data.glob("*.tar"))
    cfg = load_config(RunJobConfig, ROOT / "configs" / "smoke.yaml", {"data.train": str(data)})
    tokenizer = ingest.scan_training_data(paths, cfg.data).tokenizer
    budget = 2**30

    fresh = _epoch(paths, cfg, tokenizer, 2, decoded_cache.cache_actor(budget))  # decoded while building
    taken = decoded_cache.cache_actor(budget)  # every shard claimed elsewhere: decoded by a reader without it
    assert all(ray.get(taken.claim.remote(p)) for p in paths)
    unclaimed = _epoch(paths, cfg, tokenizer, 2, taken)
    assert ray.get(taken.stats.remote())["shards"] == 0
    _same(fresh, unclaimed)

    cache = decoded_cache.cache_actor(budget)
    first = _epoch(paths, cfg, tokenizer, 1, cache)
    stats = ray.get(cache.stats.remote())
    assert stats["shards"] == len(paths) and stats["bytes"] > 0
    shutil.rmtree(data)  # from here on, a read that opened a shard would fail
    cached = _epoch(paths, cfg, tokenizer, 2, cache)
    _same(cached, fresh)
    assert [r[0] for r in cached] != [r[0] for r in first]  # a new epoch: a new order and new crops
    keys = [r[0] for r in cached if r[0]]
    assert len(keys) == len(set(keys)) == len([r for r in first if r[0]])
    tallies = [r[3] for r in cached if r[3]]
    assert sum('"corrupt_image"' in t for t in tallies) >= 1  # the faults shard's reasons, counted from the cache

    # Two workers in the rows layout: each keeps its own rows of every shard, from the one cache.
    parts = [_epoch(paths, cfg, tokenizer, 2, cache, rank, 2, "rows") for rank in (0, 1)]
    both = [r[0] for p in parts for r in p if r[0]]
    assert sorted(both) == sorted(keys)


def test_without_the_cache_the_same_samples_and_skips(ray_cluster, smoke_data):
    cfg = load_config(RunJobConfig, ROOT / "configs" / "smoke.yaml", {"data.train": str(smoke_data / "train")})
    paths = sorted(str(p) for p in (smoke_data / "train").glob("*.tar"))
    tokenizer = ingest.scan_training_data(paths, cfg.data).tokenizer
    plain = _epoch(paths, cfg, tokenizer, 3, None)
    cached = _epoch(paths, cfg, tokenizer, 3, decoded_cache.cache_actor(2**30))
    assert [r[0] for r in plain] == [r[0] for r in cached] and [r[3] for r in plain] == [r[3] for r in cached]
    # (the views differ a little, cut from the file's decode or from the base, and so may the caption drawn
    # after them: a crop's tries depend on the image's size)
