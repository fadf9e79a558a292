"""Time per step and peak memory per worker of every loss, and of gradient caching vs none, on 2 gloo workers.

    .venv/bin/python bench/losses.py                      # B_global in 1024 4096 16384
    .venv/bin/python bench/losses.py --sizes 1024 --steps 2

Part A (losses): MLP towers over random 256-d features -> 128-d embeddings, so the loss dominates the step;
each loss's time and peak memory are printed as ratios to `infonce` measured in the same processes.
Part B (gradient caching): the demo's small CNN + bag-of-words towers on random 32x32 images, `infonce` and
`siglip`, with `train.micro_batch_size` 0 (off) and 256; ratios to "off" in the same run.
Peak memory is how far the worker's resident set rose above where it stood when the timed steps began
(VmHWM after resetting it): the step's own working memory, without the ~700 MB of loaded libraries.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import ModelConfig, build  # noqa: E402
from pipeline.losses import LOSSES, build_loss  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.training.objective import ContrastiveObjective, backward_step  # noqa: E402

FEAT, DIM, WORLD = 256, 128, 2


class MLPTowers(nn.Module):
    def __init__(self):
        super().__init__()
        self.img = nn.Sequential(nn.Linear(FEAT, 512), nn.ReLU(), nn.Linear(512, DIM))
        self.txt = nn.Sequential(nn.Linear(FEAT, 512), nn.ReLU(), nn.Linear(512, DIM))

    def forward(self, x, y, normalize=True):
        a, b = self.img(x), self.txt(y)
        return (F.normalize(a, dim=-1), F.normalize(b, dim=-1)) if normalize else (a, b)


def _status_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    """Hand freed heap back to the OS, reset the resident-set high-water mark to the current RSS; -> that RSS.
    Without the trim, memory the previous case freed stays resident and hides this case's allocations."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def measure(objective, ddp, make_batch, rank, steps, micro=0) -> tuple[float, float]:
    opt = torch.optim.SGD(objective.parameters(), lr=1e-3)
    x, y = make_batch()
    base = reset_peak()
    backward_step(ddp, x, y, rank, micro)  # warm-up step: counted for memory, not timed
    opt.zero_grad(set_to_none=True)
    times = []
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        backward_step(ddp, x, y, rank, micro)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak_mb() - base


def worker(rank, size, steps, init_file, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    b = size // WORLD
    rows = []
    g = torch.Generator().manual_seed(rank)
    feats = lambda: (torch.randn(b, FEAT, generator=g), torch.randn(b, FEAT, generator=g))  # noqa: E731
    for name in LOSSES:
        torch.manual_seed(0)
        objective = ContrastiveObjective(MLPTowers(), build_loss(name))
        ddp = nn.parallel.DistributedDataParallel(objective)
        t, m = measure(objective, ddp, feats, rank, steps)
        rows.append(("A", name, 0, t, m))
    cfg = build(ModelConfig, {"embed_dim": DIM, "image": {"arch": "small_cnn", "width": 16},
                              "text": {"arch": "bow", "word_dim": 64}})
    imgs = lambda: (torch.randint(0, 255, (b, 3, 32, 32), dtype=torch.uint8),  # noqa: E731
                    torch.randint(1, 40, (b, 16), generator=g))
    for name in ("infonce", "siglip"):
        for micro in (0, 256):
            torch.manual_seed(0)
            objective = ContrastiveObjective(build_model(cfg, 40), build_loss(name))
            ddp = nn.parallel.DistributedDataParallel(objective)
            t, m = measure(objective, ddp, imgs, rank, max(1, steps // 2), micro)
            rows.append(("B", name, micro, t, m))
    torch.save(rows, os.path.join(out, f"{size}_{rank}.pt"))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384], help="global batch sizes")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per case (median reported)")
    args = ap.parse_args()
    import tempfile

    print(f"2 gloo workers, 1 thread each; median of {args.steps} steps; peak = max over workers of the rise in resident memory during a step")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(worker, args=(size, args.steps, os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
            per_rank = [torch.load(os.path.join(tmp, f"{size}_{r}.pt")) for r in range(WORLD)]
        rows = [(p, n, mb, max(r[i][3] for r in per_rank), max(r[i][4] for r in per_rank))
                for i, (p, n, mb, _, _) in enumerate(per_rank[0])]
        base = next(r for r in rows if r[0] == "A" and r[1] == "infonce")
        print(f"\n## B_global = {size} (local {size // WORLD})\n")
        print("| loss | s/step | × infonce | step MB/worker | × infonce |")
        print("|---|---|---|---|---|")
        for p, n, _, t, m in rows:
            if p == "A":
                print(f"| {n} | {t:.3f} | {t / base[3]:.2f} | {m:.0f} | {m / base[4]:.2f} |")
        print("\n| towers + loss | micro-batch | s/step | × off | step MB/worker | × off |")
        print("|---|---|---|---|---|---|")
        for p, n, mb, t, m in rows:
            if p == "B":
                off = next(r for r in rows if r[0] == "B" and r[1] == n and r[2] == 0)
                print(f"| small_cnn+bow, {n} | {mb or 'off'} | {t:.3f} | {t / off[3]:.2f} | {m:.0f} | "
                      f"{m / off[4]:.2f} |")


if __name__ == "__main__":
    main()
