"""data.sampling=resampled over two weighted sources, on 2 workers: the realised mix of every epoch follows
the weights (not the sources' sizes), the console and the metrics report it, and a run whose driver is killed
mid-epoch resumes into exactly the samples its draws hold (each worker's seeded draw list, replayed here)."""
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.config import TrainJobConfig, load_config
from pipeline.data.epoch.plan import RowFilter, draw_shards
from pipeline.data.epoch.source import read_entry
from pipeline.data.formats.shards import shard_names
from pipeline.training.training_set import resampling_plan, resolve_sources
from tests import faults

from . import drivers
from .conftest import ROOT
from .test_exact_resume import _effective, _wait_for_step_checkpoint

SHARDS, ROWS, BATCH, PER_EPOCH, EPOCHS = 10, 12, 16, 960, 2  # 60 steps an epoch from 240 samples


def _write(data: Path) -> None:
    image = faults.encode(faults.good_image(0, size=40))
    for source in ("a", "b"):
        for s in range(SHARDS):
            faults.write_tar(data / source / f"{s:05d}.tar", [
                m for j in range(ROWS) for m in ((f"{j:04d}.jpg", image), (f"{j:04d}.txt", f"{source} square {j}".encode()))])
            (data / source / f"{s:05d}_stats.json").write_text(json.dumps({"count": ROWS, "successes": ROWS}))
    faults.write_tar(data / "val" / "00000.tar", [(f"v{j}.{e}", d) for j in range(32) for e, d in
                                                 (("jpg", image), ("txt", b"a square"))])


def _overrides(data: Path, tmp_path: Path) -> list[str]:
    return [f"data.train=[{{path: '{data}/a', weight: 3, name: a}}, {{path: '{data}/b', weight: 1, name: b}}]",
            f"data.val={data}/val", "data.sampling=resampled", f"train.samples_per_epoch={PER_EPOCH}",
            f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", "train.log_every=20", "data.shuffle_buffer=0",
            "run.checkpoint_every_steps=10", "run.keep_checkpoints=30", "run.record_keys=true",
            f"run.storage_path={tmp_path}", "run.name=mix", "data.synth.enabled=false"]


def _replayed(cfg) -> dict[int, Counter]:
    """What an uninterrupted run trains each epoch: every rank's draw list read in order, cut at its steps."""
    shards, sources = resolve_sources(cfg.data)
    paths = [os.path.abspath(p) for p in shards.paths]
    counts = {p: ROWS for p in paths}
    plan = resampling_plan(cfg, PER_EPOCH, sources, len(paths) * ROWS)
    names, local = shard_names(paths), BATCH // cfg.scaling.num_workers
    out: dict[int, Counter] = {}
    for epoch in range(1, EPOCHS + 1):
        out[epoch] = Counter()
        for rank in range(cfg.scaling.num_workers):
            drawn, keys = draw_shards(paths, counts, plan, cfg.train.seed, epoch, rank), []
            for at, path in enumerate(drawn):
                tables = read_entry(pafs.LocalFileSystem(), path, names[path], at, drawn[:at].count(path),
                                    shuffle_seed=cfg.train.seed, shuffle_block=cfg.data.shuffle_block, epoch=epoch,
                                    row_filter=RowFilter(), with_images=False)
                keys += [k for t in tables for k in t.column("key").to_pylist()]
            out[epoch].update(keys[:PER_EPOCH // BATCH * local])
    return out


def test_weighted_sources_mix_as_weighed_and_resume_mid_epoch_exactly(ray_cluster, tmp_path):
    data = tmp_path / "data"
    _write(data)
    overrides = _overrides(data, tmp_path)
    args = ["--config", str(ROOT / "configs" / "smoke.yaml"), *[x for o in overrides for x in ("--set", o)]]
    log = tmp_path / "driver.log"
    proc = drivers.train(args, ray_cluster, log)
    run_dir = tmp_path / "mix"
    _wait_for_step_checkpoint(run_dir, proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "resampled epochs of 960 samples, shards drawn with replacement from 20 (a weight 3, b weight 1)" in \
        log.read_text()
    resumed = tmp_path / "resumed.log"  # its own process: the workers' console lines land in its log
    assert drivers.train(args, ray_cluster, resumed).wait(timeout=400) == 0, resumed.read_text()[-3000:]
    out = resumed.read_text()
    assert "resuming mix from" in out and "inside epoch 1" in out

    per_epoch, starts, last = _effective(run_dir)
    assert starts and "_step_" in starts[0] and last == EPOCHS * PER_EPOCH // BATCH
    expected = _replayed(load_config(TrainJobConfig, ROOT / "configs" / "smoke.yaml", overrides))
    history = json.loads((run_dir / "checkpoints" / f"epoch_{EPOCHS:04d}" / "state.json").read_text())["history"]
    ends = {r["epoch"]: r for r in history if isinstance(r["epoch"], int) and r["epoch"] > 0 and "data/mix/a" in r}
    for epoch in range(1, EPOCHS + 1):
        seen = per_epoch[epoch]
        assert seen == expected[epoch], f"epoch {epoch}: the resumed run trained other samples than its draws hold"
        from_a = sum(n for k, n in seen.items() if k.startswith("a/"))
        share = from_a / sum(seen.values())
        # 960 samples in draws of 12: sd of the share ~0.04; the sources' sizes alone would give 0.5
        assert abs(share - 0.75) < 0.12, f"epoch {epoch}: {share:.3f} of the samples from a, weight 3/4"
        assert ends[epoch]["data/mix_samples/a"] == from_a and ends[epoch]["data/mix_target/a"] == 0.75
        assert f"epoch {epoch} mix: a {100 * share:.1f}% (expected 75.0%), b" in out
    assert expected[1] != expected[2]  # each epoch draws anew
    assert max(expected[1].values()) > 1  # with replacement: some samples come twice in an epoch
