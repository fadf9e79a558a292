"""Distributed InfoNCE on N gloo processes equals single-process autograd on the concatenated batch:
the loss value, the gradients of every worker's inputs, and (after DDP's averaging) every parameter gradient,
the learned logit scale included. Runs the real train-step module (`ContrastiveObjective`)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.distributed import all_reduce_mean
from pipeline.losses import build_loss
from pipeline.train import ContrastiveObjective

B, D_IN, D = 12, 7, 5


class TinyTowers(nn.Module):
    def __init__(self):
        super().__init__()
        self.img = nn.Linear(D_IN, D)
        self.txt = nn.Linear(D_IN, D)

    def forward(self, x, y):  # (b, D_IN) each -> unit vectors (b, D)
        return F.normalize(self.img(x), dim=-1), F.normalize(self.txt(y), dim=-1)


def _setup():
    torch.manual_seed(0)
    objective = ContrastiveObjective(TinyTowers(), build_loss("infonce", temperature=0.1)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, D_IN, generator=g, dtype=torch.float64), torch.randn(B, D_IN, generator=g,
                                                                                dtype=torch.float64)
    return objective, x, y


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    objective, x, y = _setup()
    ddp = DistributedDataParallel(objective)
    b = B // world
    xl = x[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    yl = y[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    loss = ddp(xl, yl, rank)
    loss.backward()
    torch.save({"loss": all_reduce_mean(loss.detach()), "x_grad": xl.grad, "y_grad": yl.grad,
                "params": {n: p.grad for n, p in objective.named_parameters()}}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_infonce_matches_single_process(tmp_path, world):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    objective, x, y = _setup()
    x.requires_grad_(True)
    y.requires_grad_(True)
    ref = objective(x, y, 0)
    ref.backward()
    b = B // world
    for rank in range(world):
        got = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(got["loss"], ref.detach(), rtol=1e-5, atol=0)
        # A worker's input gradient carries every worker's loss (the all-gather's backward sums them); each
        # worker's loss is a mean over its own rows, so that sum is `world` times the global mean's gradient.
        torch.testing.assert_close(got["x_grad"] / world, x.grad[rank * b:(rank + 1) * b], rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(got["y_grad"] / world, y.grad[rank * b:(rank + 1) * b], rtol=1e-5, atol=1e-12)
        # After DDP's averaging, the update every worker applies is the single-process one, not 1/N of it.
        for name, p in objective.named_parameters():
            torch.testing.assert_close(got["params"][name], p.grad, rtol=1e-5, atol=1e-12, msg=name)
    assert objective.loss.logit_scale.grad is not None and objective.loss.logit_scale.grad.abs() > 0
