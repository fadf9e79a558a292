"""data.sampling=resampled and weighted data.train sources, without Ray: the config forms, the per-worker
shard draws against the weights, the realised-mix bookkeeping, and the epoch reader's repeated shards."""
import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest

from pipeline.config import ConfigError, TrainJobConfig, load_config
from pipeline.data.epoch.batcher import EpochBatcher
from pipeline.data.epoch.plan import (ROW_BITS, Resampling, RowFilter, describe_mix, draw_shards, mix_metrics,
                                      mix_targets, worker_share)

BASE = ["data.val=b"]
TWO = "data.train=[{path: a, weight: 3, name: big}, {path: b}]"


def test_a_list_of_sources_parses_from_set_and_yaml(tmp_path):
    cfg = load_config(TrainJobConfig, None, [*BASE, TWO, "data.sampling=resampled", "train.samples_per_epoch=500"])
    assert cfg.data.sources() == [{"path": "a", "weight": 3.0, "name": "big"},
                                  {"path": "b", "weight": 1.0, "name": "source1"}]
    assert cfg.data.train_spec == "a,b"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  sampling: resampled\n  val: v\n  train:\n"
                      "    - path: s3://x/{00000..00009}.tar\n      weight: 2\n"
                      "    - path: s3://y/{00000..00009}.tar\n")
    cfg = load_config(TrainJobConfig, recipe)
    assert [s["weight"] for s in cfg.data.sources()] == [2.0, 1.0]
    assert cfg.data.train_spec == "s3://x/{00000..00009}.tar,s3://y/{00000..00009}.tar"
    plain = load_config(TrainJobConfig, None, [*BASE, "data.train=a/{0..3}.tar"])
    assert plain.data.sources() == [{"path": "a/{0..3}.tar", "weight": 1.0, "name": "train"}]


@pytest.mark.parametrize("overrides, message", [
    ([TWO], r"weights \[3.0, 1.0\] need data.sampling=resampled"),
    (["data.train=[{path: a, wieght: 3}]"], r"data.train\[0\] has unknown key\(s\) \['wieght'\]"),
    (["data.train=[{weight: 3}]", "data.sampling=resampled"], r"data.train\[0\] needs a path"),
    (["data.train=[{path: a, weight: 0}]", "data.sampling=resampled"], r"data.train\[0\].weight=0 must be a positive number"),
    (["data.train=[{path: a, weight: -1}]", "data.sampling=resampled"], "must be a positive number"),
    (["data.train=[a, b]"], r"data.train\[0\]='a' is not a mapping"),
    (["data.train=[{path: a, name: x}, {path: b, name: x}]"], "distinct names"),
    (["data.train=[]"], "data.train is an empty list"),
    (["data.train=a", "data.sampling=random"], "data.sampling='random'; choose one of"),
    (["data.train=a", "train.samples_per_epoch=100"], "train.samples_per_epoch .* needs data.sampling=resampled"),
    (["data.train=a", "data.sampling=resampled", "train.samples_per_epoch=8", "train.batch_size=32"],
     r"train.samples_per_epoch=8 is less than one batch \(train.batch_size=32\)"),
])
def test_bad_sources_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(TrainJobConfig, None, [*BASE, *overrides])
    assert "\n" not in str(e.value)


def _plan(n_a=20, n_b=10, size_a=30, size_b=90, weights=(3.0, 1.0), quota=600):
    paths = [f"a/{i:03d}.tar" for i in range(n_a)] + [f"b/{i:03d}.tar" for i in range(n_b)]
    counts = {p: size_a if p.startswith("a/") else size_b for p in paths}
    return paths, counts, Resampling([0] * n_a + [1] * n_b, list(weights), quota)


def test_draws_follow_the_weights_in_samples_not_in_shards():
    """Source a has twice b's shards but a third of their size (sizes 600 vs 900 samples): with weights 3:1
    three quarters of the samples drawn come from a, over many epochs and ranks."""
    paths, counts, plan = _plan()
    drawn = Counter()
    for epoch in range(1, 41):
        for rank in range(4):
            share = draw_shards(paths, counts, plan, seed=5, epoch=epoch, rank=rank)
            assert sum(counts[p] for p in share) >= plan.quota > sum(counts[p] for p in share[:-1])
            for p in share:
                drawn[p[0]] += counts[p]
    share_a = drawn["a"] / (drawn["a"] + drawn["b"])
    assert abs(share_a - 0.75) < 0.02, share_a
    # and each source's shards alike: no shard of a drawn far more than another
    per_shard = Counter(p for e in range(1, 41) for p in draw_shards(paths, counts, plan, 5, e, 0) if p[0] == "a")
    assert len(per_shard) == 20 and max(per_shard.values()) < 3 * min(per_shard.values())


def test_draws_are_seeded_per_epoch_and_rank_and_repeat_shards():
    paths, counts, plan = _plan(n_a=3, n_b=1, quota=900)
    one = draw_shards(paths, counts, plan, seed=1, epoch=2, rank=0)
    assert one == draw_shards(paths, counts, plan, seed=1, epoch=2, rank=0)  # a resumed run draws the same list
    assert one != draw_shards(paths, counts, plan, seed=1, epoch=3, rank=0)
    assert one != draw_shards(paths, counts, plan, seed=1, epoch=2, rank=1)
    assert len(set(one)) < len(one)  # with replacement
    assert worker_share(paths, counts, 2, 0, "resampled", 1, 2, plan).shards == one


def test_unknown_counts_draw_shards_uniformly_within_a_source():
    paths, _, plan = _plan(n_a=4, n_b=4)
    plan = Resampling(plan.sources, [1.0, 1.0], 4000, mean=50.0)
    drawn = Counter(p for e in range(1, 201) for p in draw_shards(paths, None, plan, seed=0, epoch=e, rank=0))
    assert sum(drawn.values()) == 200 * 4000 // 50  # each shard taken to hold the mean
    assert set(drawn) == set(paths) and max(drawn.values()) < 1.3 * min(drawn.values())


def test_the_batcher_counts_what_each_source_trained():
    entry_source = [0, 1, 0]  # the epoch list: a shard of source 0, one of source 1, source 0 again
    rows = [(e << ROW_BITS) | r for e in range(3) for r in range(4)]
    block = {"key": np.array([f"k{p}" for p in rows] + [""]), "image": np.zeros((13, 1)),
             "tokens": np.zeros((13, 1)), "pos": np.array(rows + [rows[-1]]),
             "tally": np.array([""] * 12 + [json.dumps({"first": rows[0], "last": rows[-1]})], dtype=object)}
    b = EpochBatcher([block], 4, entry_source=entry_source, n_sources=2)
    for batch in b:
        b.mark_trained(batch["pos"])
    assert b.mix.tolist() == [8, 4]
    resumed = EpochBatcher([], 4, entry_source=entry_source, n_sources=2, mix=b.state()["mix"])
    assert resumed.mix.tolist() == [8, 4]


def test_mix_metrics_sum_the_workers_and_name_the_targets():
    names = ["a", "b"]
    m = mix_metrics(names, [[30, 10], [45, 15]], mix_targets([{"weight": 3}, {"weight": 1}], "resampled", None))
    assert m["data/mix_samples/a"] == 75 and m["data/mix/a"] == 0.75 and m["data/mix_target/b"] == 0.25
    assert describe_mix(names, m) == "a 75.0% (expected 75.0%), b 25.0% (25.0%)"
    assert mix_targets([{"weight": 3}, {"weight": 1}], "epoch", [100, 300]) == [0.25, 0.75]  # a pass: the sizes
    assert mix_targets([{"weight": 1}, {"weight": 1}], "epoch", []) is None
    assert mix_metrics(["train"], [[5]], None) == {}


def test_a_repeated_shard_reads_in_an_order_of_its_own(tmp_path):
    """The epoch reader (`epoch_source.read_entry`): the first time a shard appears it is read as a whole
    pass reads it; a repeat has its own order and sample seeds; positions carry the entry's index."""
    pytest.importorskip("ray")
    import pyarrow.fs as pafs

    from pipeline.data.epoch.source import read_entry

    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for j in range(40):
            for ext, data in (("jpg", b"x"), ("txt", f"caption {j}".encode())):
                info = tarfile.TarInfo(f"{j:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    def read(at, repeat, keep=RowFilter()):
        tables = read_entry(pafs.LocalFileSystem(), str(path), "00000.tar", at, repeat, shuffle_seed=3,
                            shuffle_block=16, epoch=1, row_filter=keep, with_images=False)
        rows = [r for t in tables for r in t.to_pylist()]
        return [r["key"] for r in rows], [r["seed"] for r in rows], [r["pos"] for r in rows]

    keys0, seeds0, pos0 = read(0, 0)
    keys1, seeds1, pos1 = read(5, 1)
    assert sorted(keys0) == sorted(keys1) and len(keys0) == 40
    assert keys0 != keys1 and set(seeds0).isdisjoint(seeds1)
    assert pos0 == list(range(40)) and pos1 == [(5 << ROW_BITS) | i for i in range(40)]
    assert read(0, 0) == (keys0, seeds0, pos0)  # seeded
    half = RowFilter(next=(5 << ROW_BITS) | 20)  # a resumed reader inside entry 5: the rows from 20 on
    assert read(5, 1, half)[0] == keys1[20:]
