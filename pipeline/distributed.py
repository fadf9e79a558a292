"""The only place the training loop touches ray.train and torch.distributed.

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


def all_reduce_min(value: int, device: torch.device) -> int:
    """Smallest value across workers: lets every worker agree to stop on the same step, so no worker waits
    forever in an all-gather the others never join."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


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

    def prepare_model(self, module: nn.Module) -> nn.Module:
        """Move to the device and wrap in DDP when there is more than one worker."""
        import ray.train.torch

        return ray.train.torch.prepare_model(module)

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

    def count_skipped(self, counter) -> int:
        """Distinct unusable training samples so far, from the ingest's skip counter actor."""
        import ray

        return int(ray.get(counter.skipped_samples.remote("train")))
