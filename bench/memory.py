"""Peak memory per training worker against the batch size, with and without each memory option: activation
checkpointing (model.image/text.grad_checkpointing), patch dropout (model.image.patch_dropout) and FSDP
(scaling.strategy=fsdp), for the demo's towers and a ViT-B/32-sized OpenCLIP pair (random weights).

    .venv/bin/python bench/memory.py                      # the table in docs/benchmarks.md
    .venv/bin/python bench/memory.py --models vit_b_32 --batches 16 --options none "patch_dropout 0.5" --rounds 2

Each cell is two gloo worker processes on this machine, started afresh, running the worker's own step
(`worker.prepare`, `train_step`: DDP as Ray Train's prepare_model wraps it, or FSDP2) for one warm-up and one
timed step on random pixels and tokens. A worker's peak is its process's peak resident set (ru_maxrss): weights,
gradients, AdamW's two moments, activations, and under FSDP rank 0's whole copy for validation (host memory,
which on a GPU stays off the device). On a GPU, bench/gpu_noray.py measures torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {
    "demo": {"data": {"image_size": 64, "max_tokens": 24},
             "model": {"embed_dim": 128, "image": {"arch": "small_cnn", "width": 16},
                       "text": {"arch": "gru", "word_dim": 128, "hidden": 128}}},
    "vit_b_32": {"data": {"image_size": 224, "max_tokens": 77, "tokenizer": "pretrained"},
                 "model": {"arch": "open_clip:ViT-B-32"}},
}
OPTIONS = {  # name -> (overrides, the models it applies to)
    "none": ({}, ("demo", "vit_b_32")),
    "grad_checkpointing": ({"model": {"image": {"grad_checkpointing": True}, "text": {"grad_checkpointing": True}}},
                           ("vit_b_32",)),
    "image grad_checkpointing": ({"model": {"image": {"grad_checkpointing": True}}}, ("demo",)),
    "patch_dropout 0.5": ({"model": {"image": {"patch_dropout": 0.5}}}, ("vit_b_32",)),
    "fsdp": ({"scaling": {"strategy": "fsdp"}}, ("demo", "vit_b_32")),
    "all three": ({"model": {"image": {"grad_checkpointing": True, "patch_dropout": 0.5},
                             "text": {"grad_checkpointing": True}}, "scaling": {"strategy": "fsdp"}}, ("vit_b_32",)),
}
BATCHES = {"demo": [128, 256, 512], "vit_b_32": [8, 16, 32]}
VOCAB = 49408  # OpenCLIP's BPE; the demo's GRU gets ids below its own vocabulary


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out


def _worker(rank: int, world: int, raw: dict, batch: int, init: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.config import TrainJobConfig, build
    from pipeline.distributed import WorkerContext
    from pipeline.losses import build_loss
    from pipeline.models import build_model
    from pipeline.training.loop import WorkerParts
    from pipeline.training.objective import ContrastiveObjective
    from pipeline.training.optimisation import make_optimizer, train_step
    from pipeline.training.worker import prepare, schedule_for

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    cfg = build(TrainJobConfig, raw)
    vocab = VOCAB if cfg.model.open_clip else 64
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab, image_size=cfg.data.image_size, max_tokens=cfg.data.max_tokens)
    loss = build_loss(cfg.loss)
    objective = ContrastiveObjective(model, loss)
    opt = make_optimizer(objective, cfg.train, cfg.model)
    plan = SimpleNamespace(n_train=batch * world * 10, val_blocks=None)
    parts = WorkerParts(model, loss, None, objective, opt, schedule_for(opt, plan, cfg), None, None)
    ctx = WorkerContext(rank, world, torch.device("cpu"))
    if cfg.scaling.strategy == "fsdp":
        parts = prepare(parts, plan, cfg, ctx)
    else:
        parts.objective = DistributedDataParallel(parts.objective)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size, length = cfg.data.image_size, cfg.data.max_tokens
    g = torch.Generator().manual_seed(rank)
    step = {"image": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
            "tokens": torch.randint(1, vocab, (batch, length), generator=g)}
    times = []
    for _ in range(2):  # a warm-up step, then the timed one
        t0 = time.perf_counter()
        train_step(parts.objective, parts.opt, parts.sched, step, rank, cfg.train)
        dist.barrier()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out, f"{rank}.json").write_text(json.dumps({"before_mb": before, "peak_mb": peak, "step_s": times[-1]}))
    dist.destroy_process_group()


def cell(model: str, option: str, batch: int) -> dict:
    """One cell in a process of its own (a clean peak). -> per-rank figures"""
    with tempfile.TemporaryDirectory() as tmp:
        arg = json.dumps({"model": model, "option": option, "batch": batch, "out": tmp})
        run = subprocess.run([sys.executable, __file__, "--cell", arg], capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"{model} {option} {batch}: {run.stderr[-2000:]}")
        return {r: json.loads(Path(tmp, f"{r}.json").read_text()) for r in (0, 1)}


def run_cell(arg: str) -> None:
    import torch.multiprocessing as mp

    c = json.loads(arg)
    base = merge({"data": {"train": "x", "val": "x"}, "scaling": {"num_workers": 2}}, MODELS[c["model"]])
    raw = merge(base, OPTIONS[c["option"]][0])
    mp.spawn(_worker, args=(2, raw, c["batch"], os.path.join(c["out"], "init"), c["out"]), nprocs=2, join=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--batches", nargs="*", type=int, help="per-worker batches (default: each model's three)")
    ap.add_argument("--options", nargs="*", default=list(OPTIONS), help=f"of {', '.join(OPTIONS)}")
    ap.add_argument("--rounds", type=int, default=1, help="each cell this many times, the options alternating")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        return run_cell(args.cell)
    print("| towers | option | batch per worker | peak RSS rank 0 (MB) | peak RSS rank 1 (MB) | before the first step, "
          "rank 1 (MB) | step (s) | samples/s per worker |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for batch in args.batches or BATCHES[model]:
            for _, option in [(i, o) for i in range(args.rounds) for o in args.options if model in OPTIONS[o][1]]:
                r = cell(model, option, batch)
                step = max(r[0]["step_s"], r[1]["step_s"])
                print(f"| {model} | {option} | {batch} | {r[0]['peak_mb']:.0f} | {r[1]['peak_mb']:.0f} | "
                      f"{r[1]['before_mb']:.0f} | {step:.2f} | {batch / step:.1f} |", flush=True)


if __name__ == "__main__":
    main()
