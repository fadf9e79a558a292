"""The only place the training loop touches ray.train and torch.distributed (FSDP's sharding aside:
`training.sharding`).

`WorkerContext` wraps the Ray Train worker API (rank, device, dataset shards, report/checkpoint);
`all_gather_with_grad` gathers embeddings so that gradients flow back to the worker that produced them.
"""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(b, D) on each of N workers -> (N*b, D) in rank order. Unlike `dist.all_gather`, the autograd-aware
    version sends each rank's share of the gradient back to it (a reduce-scatter in backward)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the autograd-aware one
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_fn.all_gather(x)
    return torch.cat(parts, dim=0)


_CPU_GROUP: list = []  # a gloo group beside NCCL, made on first use (every rank reaches it on the same step)


def _cpu_group():
    """None (the default group) under gloo; under NCCL a gloo group, so that host-side agreements never
    wait for the GPU: a `.item()` on a CUDA tensor would stall every step until the GPU had drained."""
    if dist.get_backend() == "gloo":
        return None
    if not _CPU_GROUP:
        _CPU_GROUP.append(dist.new_group(backend="gloo"))
    return _CPU_GROUP[0]


def all_reduce_min(value: int, device: torch.device | None = None) -> int:
    """Smallest value across workers: lets every worker agree to stop on the same step, so no worker waits
    forever in an all-gather the others never join. Runs on the CPU (`device` is not used)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value])
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_cpu_group())
    return int(t.item())


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank. DDP broadcasts them at the start of
    each forward, but every rank then updates its own copy from its local batch: after the last step of an
    epoch only rank 0's match the checkpoint, and a rank that evaluates needs those."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def all_reduce_sum(value: int) -> int:
    """Sum of an integer across workers, on the CPU group."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, group=_cpu_group())
    return int(t.item())


def gather_objects(obj) -> list:
    """Every worker's `obj` (picklable), in rank order, on every worker; over the CPU group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_cpu_group())
    return out


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Elementwise largest value across workers (a copy; `values` is left alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def average_gradients(module: nn.Module) -> None:
    """What DDP does after backward, done by hand where its forward hook was bypassed, or beside FSDP for the
    parameters it does not shard (FSDP has reduced the sharded ones' gradients already)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    from torch.distributed.tensor import DTensor

    world = dist.get_world_size()
    for p in module.parameters():
        if p.grad is not None and not isinstance(p.grad, DTensor):
            dist.all_reduce(p.grad)
            p.grad /= world


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_ray(cls) -> WorkerContext:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())

    def dataset_shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def prepare_model(self, module: nn.Module, bucket_cap_mb: int = 25) -> nn.Module:
        """Move to the device and wrap in DDP when there is more than one worker; gradients are all-reduced
        in buckets of `bucket_cap_mb` MiB while the backward pass goes on."""
        import ray.train.torch

        return ray.train.torch.prepare_model(module,
                                             parallel_strategy_kwargs={"bucket_cap_mb": bucket_cap_mb})

    def broadcast(self, obj):
        """Rank 0's `obj` (anything picklable) on every worker, over the CPU group."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=_cpu_group())
        return box[0]

    def report(self, metrics: dict, write_checkpoint: Callable[[Path], None] | None = None,
               name: str | None = None) -> None:
        """Every worker calls this the same number of times; only rank 0 writes and uploads a checkpoint."""
        import ray.train

        if write_checkpoint is None or not self.is_main:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=name)


def fit_on_workers(loop: Callable[[dict], None], config: dict, scaling_cfg, storage_path: str, name: str,
                   read: Callable[[str], object]) -> tuple[object, dict]:
    """A small model fitted by `loop` (Ray Train's per-worker function, handed `config`) on
    scaling.num_workers CPU workers, its checkpoints under `storage_path`/`name` (local, or s3:// for workers on
    other nodes); the last checkpoint the loop reports is read back with `read(folder)`. The jobs beside
    training use it (the re-ranker's head, word vectors); a training run has a driver of its own (`training`).
    -> (what `read` returns, the last reported metrics)"""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline import storage

    fs, path = storage.arrow_filesystem(storage_path)
    result = TorchTrainer(
        loop, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling_cfg.num_workers,
                                               resources_per_worker={"CPU": scaling_cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=name, storage_path=path, storage_filesystem=fs)).fit()
    with result.checkpoint.as_directory() as folder:
        return read(folder), result.metrics
