"""Every loss on N gloo processes equals single-process autograd on the concatenated global batch: the loss
value, the gradients of every worker's inputs and, after DDP's averaging, every parameter gradient (the
loss's own temperature and bias included, and the re-ranker head trained with the towers). Gradient caching (micro-batches) gives the same parameter
gradients. Runs the real train-step module (`ContrastiveObjective`, `backward_step`)."""
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.distributed import all_reduce_mean
from pipeline.losses import build_loss
from pipeline.training.objective import ContrastiveObjective, backward_step
from pipeline.rerank.fusion import FusionScorer
from tests.gloo import process_group

B, D_IN, D = 12, 7, 5
LOSSES = [("infonce", {"temperature": 0.1}), ("infonce", {"temperature": 0.2, "label_smoothing": 0.1}),
          ("siglip", {"bias_init": -2.0}), ("vse", {}), ("vse++", {}), ("contrastive", {}),
          ("triplet", {"mining": "hardest"}), ("triplet", {"mining": "semi-hard"}), ("triplet", {"mining": "all"}),
          ("npair", {}), ("lifted", {}), ("dcca", {"top_k": 3}),
          # rerank.enabled: the fusion head's in-batch listwise loss on top, its gradients into the towers too.
          # (Not compact_bilinear here: its signed square root turns the FFT's ~1e-17 round-off in empty buckets
          # into ~1e-6, so micro-batches, whose embeddings differ in the last bits, agree to ~1e-8 only.)
          ("infonce", {"temperature": 0.1, "head": "low_rank"}), ("vse++", {"head": "product"})]
MICRO = 2


class TinyTowers(nn.Module):
    """Per-sample towers (no BatchNorm), so micro-batching changes nothing but memory."""

    def __init__(self):
        super().__init__()
        self.img = nn.Linear(D_IN, D)
        self.txt = nn.Linear(D_IN, D)

    def forward(self, x, y, normalize=True):  # (b, D_IN) each -> (b, D)
        a, b = self.img(x), self.txt(y)
        return (F.normalize(a, dim=-1), F.normalize(b, dim=-1)) if normalize else (a, b)


def _setup(name, params):
    torch.manual_seed(0)
    params = dict(params)
    fusion = params.pop("head", None)
    head = FusionScorer(fusion, D, D, dim=4, hidden=6, rank=3, sketch_dim=16) if fusion else None
    objective = ContrastiveObjective(TinyTowers(), build_loss(name, **params), head=head, head_negatives=3).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    y = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    return objective, x, y


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _worker(rank, world, init_file, out_dir):
    with process_group(init_file, rank, world):
        b = B // world
        results = []
        for name, params in LOSSES:
            objective, x, y = _setup(name, params)
            ddp = DistributedDataParallel(objective)
            mine = slice(rank * b, (rank + 1) * b)
            xl, yl = x[mine].clone().requires_grad_(True), y[mine].clone().requires_grad_(True)
            loss = backward_step(ddp, xl, yl, rank)
            plain = {"loss": all_reduce_mean(loss), "x_grad": xl.grad, "y_grad": yl.grad,
                     "params": _grads(objective)}
            objective.zero_grad(set_to_none=True)
            cached_loss = backward_step(ddp, x[mine], y[mine], rank, MICRO)
            results.append({**plain, "cached_loss": all_reduce_mean(cached_loss),
                            "cached": _grads(objective)})
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))


@pytest.mark.parametrize("world", [2, 3])
def test_every_loss_is_exact_across_workers(tmp_path, world):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    got = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]
    b = B // world
    for i, (name, params) in enumerate(LOSSES):
        objective, x, y = _setup(name, params)
        x.requires_grad_(True)
        y.requires_grad_(True)
        ref = objective(x, y, 0)
        ref.backward()
        ref_params = _grads(objective)
        assert ref_params, name
        for rank in range(world):
            r = got[rank][i]
            tag = f"{name}{params} rank {rank}/{world}"
            torch.testing.assert_close(r["loss"], ref.detach(), rtol=1e-5, atol=1e-10, msg=tag)
            torch.testing.assert_close(r["cached_loss"], ref.detach(), rtol=1e-5, atol=1e-10, msg=tag)
            # A worker's inputs receive every worker's share of the gradient (the all-gather's backward sums
            # them); each worker's loss is a mean over its rows, so that sum is `world` x the global one.
            sl = slice(rank * b, (rank + 1) * b)
            torch.testing.assert_close(r["x_grad"] / world, x.grad[sl], rtol=1e-5, atol=1e-10, msg=tag)
            torch.testing.assert_close(r["y_grad"] / world, y.grad[sl], rtol=1e-5, atol=1e-10, msg=tag)
            # After DDP's averaging the applied update is the single-process one, not 1/N of it; the same
            # holds for gradient caching, whose averaging is done by hand.
            assert set(r["params"]) == set(ref_params) == set(r["cached"]), tag
            for pname, g in ref_params.items():
                torch.testing.assert_close(r["params"][pname], g, rtol=1e-5, atol=1e-10, msg=f"{tag} {pname}")
                torch.testing.assert_close(r["cached"][pname], g, rtol=1e-5, atol=1e-10,
                                           msg=f"{tag} {pname} cached")
