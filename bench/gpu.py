"""GPU efficiency on one GPU: this project's train step against a plain PyTorch loop, and the Ray Data -> GPU
ingest rate. Run through bench/gpu.sh on a GPU machine; the CPU mode only checks that the script works:

    bench/gpu.sh                                                       # ResNet-50 + transformer, 224 px
    .venv/bin/python bench/gpu.py --device cpu --steps 2 --warmup 1 --image-size 32 --batch 4 --ingest-images 64

(1) samples/s of `train.train_step` (ContrastiveObjective with the `train.*` speed settings: bf16 autocast on
    GPU, channels_last ResNet, optional torch.compile; AdamW with the project's parameter groups, warmup +
    cosine schedule, gradient clipping) against a plain PyTorch loop over the same architecture, same batch
    held on the device, same autocast / memory format / compile, same clipping: the ratio's target is >= 0.95.
    The plain loop is timed before and after the project's step and averaged, so neither gains from order.
(2) samples/s that the Ray Data training pipeline (what training feeds a worker, `epoch_data.worker_batches`,
    over synthetic JPEG shards: decode + crop + tokenise on this machine's CPUs) delivers onto the device (pinned
    host memory, non-blocking copies): with (1), how many decode cores one GPU needs (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import TrainJobConfig, load_config  # noqa: E402
from pipeline.losses import build_loss  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.models.text import TEXT_ARCHS  # noqa: E402
from pipeline.objective import ContrastiveObjective  # noqa: E402
from pipeline.epoch_data import worker_batches  # noqa: E402
from pipeline.train import make_optimizer, make_scheduler, speed_up, train_step  # noqa: E402

VOCAB = 10_000


def make_config(args) -> TrainJobConfig:
    text = args.text_arch
    if text not in TEXT_ARCHS:
        print(f"note: text tower {text!r} is not in this checkout (have {sorted(TEXT_ARCHS)}); using gru")
        text = "gru"
    overrides = {
        "data.train": "unused", "data.val": "unused", "data.image_size": args.image_size, "data.max_tokens": 32,
        "model.image.arch": args.image_arch, "model.text.arch": text, "model.embed_dim": 512,
        "model.text.word_dim": 512, "model.text.hidden": 512,
        "train.batch_size": args.batch, "scaling.num_workers": 1, "train.warmup_steps": 10,
        "train.precision": args.precision, "train.channels_last": not args.no_channels_last,
        "train.compile": args.compile,
    }
    if text == "transformer":  # CLIP ViT-B's text encoder: width 512, 12 layers, 8 heads
        overrides |= {"model.text.layers": 12, "model.text.heads": 8}
    return load_config(TrainJobConfig, None, overrides)


def in_memory_batch(cfg: TrainJobConfig, device: torch.device) -> dict:
    """One batch held on the device: uint8 images, captions of 8-20 real tokens padded to max_tokens."""
    g = torch.Generator().manual_seed(0)
    n, size, length = cfg.train.batch_size, cfg.data.image_size, cfg.data.max_tokens
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    tokens = torch.randint(2, VOCAB, (n, length), generator=g)
    lengths = torch.randint(8, 21, (n, 1), generator=g)
    tokens[torch.arange(length).unsqueeze(0) >= lengths] = 0
    fmt = torch.channels_last if device.type == "cuda" and cfg.train.channels_last else torch.contiguous_format
    return {"image": images.to(device).contiguous(memory_format=fmt), "tokens": tokens.to(device)}


def fresh_model(cfg: TrainJobConfig):
    torch.manual_seed(0)
    return build_model(cfg.model, VOCAB, image_size=cfg.data.image_size, max_tokens=cfg.data.max_tokens)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, batch: dict, steps: int, warmup: int, device: torch.device) -> float:
    """samples/s over `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step(batch)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(batch)
    sync(device)
    return steps * batch["image"].shape[0] / (time.perf_counter() - t0)


def project_step(cfg: TrainJobConfig, device: torch.device, total_steps: int):
    objective = speed_up(ContrastiveObjective(fresh_model(cfg), build_loss(cfg.loss)), cfg.train, device).to(device)
    opt = make_optimizer(objective, cfg.train)
    sched = make_scheduler(opt, cfg.train.warmup_steps, total_steps)
    return lambda batch: train_step(objective, opt, sched, batch, 0, cfg.train)


def plain_step(cfg: TrainJobConfig, device: torch.device):
    """What one writes by hand: the same model and speed settings, CLIP's loss inline, AdamW, clipping."""
    model = fresh_model(cfg)
    if device.type == "cuda" and cfg.train.channels_last:
        model.image_tower.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model.image_tower.compile()
        model.text_tower.compile()
    model.to(device)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    params = [*model.parameters(), log_scale]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    dtype = cfg.train.autocast_dtype(device.type)

    def step(batch):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=getattr(torch, dtype or "float32"), enabled=dtype is not None):
            img, txt = model(batch["image"], batch["tokens"])
        logits = log_scale.exp().clamp(max=100) * img.float() @ txt.float().T  # (B, B)
        labels = torch.arange(logits.shape[0], device=device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()

    return step


def ingest_rate(cfg: TrainJobConfig, device: torch.device, n_images: int, epochs: int) -> tuple[float, int]:
    """(samples/s delivered onto `device` by `epochs` epochs of the Ray Data pipeline, each decoding every
    image again as training does, logical CPUs Ray had)."""
    import ray

    from pipeline import cluster
    from pipeline.data import ingest
    from pipeline.data.synthetic import write_split

    paths = [str(p) for p in write_split(Path(tempfile.mkdtemp()) / "gpu_ingest", n_images, seed=0, split_id=0,
                                         shard_size=256, side=max(320, cfg.data.image_size + 32))]
    cluster.connect()
    tok = ingest.scan_training_data(paths, cfg.data).tokenizer
    for _ in zip(range(2), worker_batches(paths, cfg, tok, 0, 1, 0, device)):
        pass  # the decode tasks started
    n, t0 = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        for batch in worker_batches(paths, cfg, tok, 0, 1, epoch, device):
            n += batch["image"].shape[0]
    sync(device)
    rate = n / (time.perf_counter() - t0)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    ray.shutdown()
    return rate, cpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a quick check of the script)")
    ap.add_argument("--image-arch", default="resnet50")
    ap.add_argument("--text-arch", default="transformer")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256, help="samples per step on the one GPU")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per loop")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps before each timing")
    ap.add_argument("--precision", default="auto", help="train.precision: auto | fp32 | bf16")
    ap.add_argument("--compile", action="store_true", help="train.compile: torch.compile both towers")
    ap.add_argument("--no-channels-last", action="store_true", help="train.channels_last=false")
    ap.add_argument("--ingest-images", type=int, default=2048, help="JPEGs for the ingest measurement; 0 skips it")
    ap.add_argument("--ingest-epochs", type=int, default=5, help="timed passes over them (each decodes again)")
    ap.add_argument("--json", default="", help="also write the figures to this file")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch; run with --device cpu for a check of the script only")
    cfg = make_config(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}; {cfg.model.image.arch} + {cfg.model.text.arch} towers, "
          f"{cfg.data.image_size} px, batch {cfg.train.batch_size}, autocast "
          f"{cfg.train.autocast_dtype(device.type) or 'off'}, channels_last "
          f"{device.type == 'cuda' and cfg.train.channels_last}, compile {cfg.train.compile}")
    batch = in_memory_batch(cfg, device)
    total = 3 * (args.steps + args.warmup)
    plain, project = plain_step(cfg, device), project_step(cfg, device, total)
    plain_a = timed(plain, batch, args.steps, args.warmup, device)
    ours = timed(project, batch, args.steps, args.warmup, device)
    plain_b = timed(plain, batch, args.steps, args.warmup, device)
    base = (plain_a + plain_b) / 2
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    print(f"(1) plain PyTorch loop {base:.1f} samples/s (before {plain_a:.1f}, after {plain_b:.1f}); "
          f"this project's train step {ours:.1f} samples/s; ratio {ours / base:.3f} (target >= 0.95)"
          + (f"; peak GPU memory {peak:.1f} GiB" if peak is not None else ""))
    result = {"device": name, "torch": torch.__version__, "config": vars(args), "image_arch": cfg.model.image.arch,
              "text_arch": cfg.model.text.arch, "plain_samples_per_s": base, "plain_before": plain_a,
              "plain_after": plain_b, "project_samples_per_s": ours, "ratio": ours / base, "peak_gib": peak}
    del plain, project, batch
    if args.ingest_images:
        rate, cpus = ingest_rate(cfg, device, args.ingest_images, args.ingest_epochs)
        cores = os.cpu_count() or 1
        print(f"(2) Ray Data -> {device.type} ingest: {rate:.0f} samples/s of {cfg.data.image_size} px "
              f"({rate / cores:.0f}/s per core; {cores} cores, {cpus} logical CPUs given to Ray); one GPU at "
              f"(1)'s rate needs {ours / max(rate, 1e-9):.2f}x this machine's decode")
        result |= {"ingest_samples_per_s": rate, "ingest_cpus": cpus, "cores": cores}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
