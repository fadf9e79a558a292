"""data.decode=gpu on the shared local Ray, the workers' device being their CPU: a worker's epoch brings the
same samples in the same batches, the same captions and skips, and views within two grey levels of the read
tasks' own decode."""
import numpy as np
import pytest
import torch

from pipeline.config import RunJobConfig, load_config
from pipeline.data import ingest
from pipeline.data.epoch.plan import choose_layout
from pipeline.training.plan import TrainShards
from pipeline.training.worker_data import epoch_batches

from .conftest import ROOT


def _epoch(cfg, paths, tokenizer, rank: int, world: int):
    """A worker's batches through its own Ray Data pipeline, as training takes them."""
    layout = choose_layout(paths, None, world, cfg.data.readers_per_worker, cfg.train.seed)
    batches = epoch_batches(TrainShards(paths, layout), cfg, rank, world, tokenizer, 2,
                            device=torch.device("cpu"))
    out = [(list(b["key"]), b["image"], b["tokens"]) for b in batches]
    return out, batches.tally


def _reference(cfg, paths, tokenizer, rank: int, world: int):
    """The same worker's batches with data.decode=cpu, its read tasks run here (no Ray Data pipeline to start)."""
    from ray.data.block import BlockAccessor

    from pipeline.data.epoch.batcher import EpochBatcher
    from pipeline.data.epoch.plan import worker_share

    layout = choose_layout(paths, None, world, cfg.data.readers_per_worker, cfg.train.seed)
    share = worker_share(paths, None, world, rank, layout, cfg.train.seed, 2, None)
    source = ingest.train_epoch_source(share, paths, tokenizer, cfg.data, cfg.train.seed, 2)
    blocks = [BlockAccessor.for_block(b).to_batch_format("numpy") for task in source.get_read_tasks(1)
              for b in task()]
    batches = EpochBatcher(iter(blocks), cfg.local_batch_size(), cfg.data.shuffle_buffer,
                           np.random.default_rng([cfg.train.seed, 2, rank, 0]))
    out = [(list(b["key"]), b["image"], b["tokens"]) for b in batches]
    return out, batches.tally


@pytest.mark.parametrize("world", [2, 3])
def test_a_workers_epoch_decoded_on_its_device_is_the_read_tasks_epoch(ray_cluster, smoke_data, world):
    # 48 px from 64 px JPEGs: the read tasks decode at full size too (no reduced-size draft), so the views match
    over = {"data.train": str(smoke_data / "train"), "data.image_size": 48, "data.cache_decoded": "false"}
    cpu_cfg = load_config(RunJobConfig, ROOT / "configs" / "smoke.yaml", over)
    gpu_cfg = load_config(RunJobConfig, ROOT / "configs" / "smoke.yaml", over | {"data.decode": "gpu"})
    paths = ingest.expand_paths(cpu_cfg.data.train)
    tokenizer = ingest.scan_training_data(paths, cpu_cfg.data).tokenizer
    seen, skipped = [], 0
    for rank in range(world):
        cpu, cpu_tally = _reference(cpu_cfg, paths, tokenizer, rank, world)
        gpu, gpu_tally = _epoch(gpu_cfg, paths, tokenizer, rank, world)
        assert [k for k, _, _ in gpu] == [k for k, _, _ in cpu] and cpu
        assert all(np.array_equal(a[2], b[2]) for a, b in zip(cpu, gpu))
        assert all(isinstance(b[1], torch.Tensor) for b in gpu)
        diff = np.concatenate([np.abs(b[1].numpy().astype(int) - a[1]).ravel() for a, b in zip(cpu, gpu)])
        assert diff.max() <= 2 and diff.mean() < 0.3
        assert gpu_tally.to_dict() == cpu_tally.to_dict()
        seen += [k for keys, _, _ in gpu for k in keys]
        skipped += gpu_tally.skipped_samples()
    assert len(seen) == len(set(seen)) and skipped >= 5  # the faults shard's bad samples, counted once each
