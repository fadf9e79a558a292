"""GPU check, stage 2, with Ray: the Ray Data -> GPU ingest rate, beside this project's train step against a plain
PyTorch loop for one tower pair. Stage 1, which needs no Ray (train steps of two tower pairs, compile off and
on, MFU, JPEG decode rates), is bench/gpu_noray.py. Run through bench/gpu.sh on a GPU machine; the CPU mode
only checks that the script works:

    bench/gpu.sh                                                       # ResNet-50 + transformer, 224 px
    .venv/bin/python bench/gpu.py --device cpu --steps 2 --warmup 1 --image-size 32 --batch 4 --ingest-images 64

(1) samples/s of `train.train_step` (ContrastiveObjective with the `train.*` speed settings: bf16 autocast on
    GPU, channels_last ResNet, optional torch.compile; AdamW with the project's parameter groups, warmup +
    cosine schedule, gradient clipping) against a plain PyTorch loop over the same architecture, same batch
    held on the device, same autocast / memory format / compile, same clipping: the ratio's target is >= 0.95.
    The plain loop is timed before and after the project's step and averaged, so neither gains from order.
(2) samples/s that the Ray Data training pipeline (what training feeds a worker, `epoch_data.worker_batches`)
    delivers onto the device, over 256 px q95 JPEGs cut from real photographs (`bench/photo_crops.py`; the
    synthetic scenes where scikit-image is missing, and it says so), for each of `--decode`: `cpu` (decode, crop,
    tokenise in read tasks on this machine's CPUs; pinned host memory, non-blocking copies) and `gpu`
    (data.decode=gpu: JPEG bytes to the worker, decoded and cropped on the device), run A B A B; with (1), how
    many decode cores one GPU needs (docs/scaling.md), and the cores each mode kept busy.

Where `import ray` fails (the GPU machine has no Ray), `bench/gpu_bundle.py` builds the wheels to carry and
`bench/gpu.sh` installs them from `.whl/`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import gpu_noray  # noqa: E402
from bench.gpu_noray import in_memory_batch, plain_step, project_step, sync, timed  # noqa: E402
from pipeline.config import TrainJobConfig  # noqa: E402
from pipeline.models.text import TEXT_ARCHS  # noqa: E402
from pipeline.training.worker_data import worker_batches  # noqa: E402


def make_config(args) -> TrainJobConfig:
    text = args.text_arch
    if text not in TEXT_ARCHS:
        print(f"note: text tower {text!r} is not in this checkout (have {sorted(TEXT_ARCHS)}); using gru")
        text = "gru"
    pair = {"data.image_size": args.image_size, "data.max_tokens": 32, "model.image.arch": args.image_arch,
            "model.text.arch": text, "model.embed_dim": 512, "model.text.word_dim": 512, "model.text.hidden": 512}
    if text == "transformer":  # CLIP ViT-B's text encoder: width 512, 12 layers, 8 heads
        pair |= {"model.text.layers": 12, "model.text.heads": 8}
    return gpu_noray.make_config(pair, args.batch, args.precision, not args.no_channels_last, args.compile)


def ingest_paths(n_images: int, size: int) -> tuple[list[str], str]:
    """Shards of n JPEGs for (2): 256 px q95 real-photo crops where scikit-image is there, else the scenes."""
    out = Path(tempfile.mkdtemp()) / "gpu_ingest"
    try:
        from bench.photo_crops import write_dataset

        write_dataset(out, n_images, 0, size=256, quality=95, shard_size=256)
        return sorted(str(p) for p in (out / "train").glob("*.tar")), "256 px q95 crops of real photographs"
    except (ImportError, RuntimeError):
        from pipeline.data.formats.synthetic import write_split

        side = max(320, size + 32)
        return ([str(p) for p in write_split(out, n_images, seed=0, split_id=0, shard_size=256, side=side)],
                f"synthetic {side} px scenes (no scikit-image here)")


def ingest_rates(cfg: TrainJobConfig, device: torch.device, n_images: int, epochs: int, modes: list[str]
                 ) -> tuple[dict, int, str]:
    """({mode: (samples/s delivered onto `device` by `epochs` epochs of the Ray Data pipeline, each decoding
    every image again as training does, busy cores meanwhile)}, logical CPUs Ray had, what the images are);
    the data.decode modes run A B A B."""
    import dataclasses

    import ray

    from bench.process_cpu import busy_core_seconds
    from pipeline import cluster
    from pipeline.data import ingest

    paths, what = ingest_paths(n_images, cfg.data.image_size)
    cluster.connect()
    tok = ingest.scan_training_data(paths, cfg.data).tokenizer
    runs: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for mode in modes * 2:
        c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, decode=mode, cache_decoded="false"))
        for _ in zip(range(2), worker_batches(paths, c, tok, 0, 1, 0, device)):
            pass  # the decode tasks started
        n, t0, busy0 = 0, time.perf_counter(), busy_core_seconds()
        for epoch in range(1, epochs + 1):
            for batch in worker_batches(paths, c, tok, 0, 1, epoch, device):
                n += batch["image"].shape[0]
        sync(device)
        wall = time.perf_counter() - t0
        runs[mode].append((n / wall, (busy_core_seconds() - busy0) / wall))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    ray.shutdown()
    return {m: tuple(sum(x) / len(x) for x in zip(*r)) for m, r in runs.items()}, cpus, what


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
    ap.add_argument("--decode", default="cpu,gpu", help="data.decode modes for (2), run A B A B (default cpu,gpu)")
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
        rates, cpus, what = ingest_rates(cfg, device, args.ingest_images, args.ingest_epochs, args.decode.split(","))
        cores = os.cpu_count() or 1
        for mode, (rate, busy) in rates.items():
            print(f"(2) Ray Data -> {device.type} ingest, data.decode={mode}: {rate:.0f} samples/s of "
                  f"{cfg.data.image_size} px from {what} ({rate / cores:.0f}/s per core, {busy:.1f} of {cores} cores "
                  f"busy; {cpus} logical CPUs given to Ray); one GPU at (1)'s rate needs "
                  f"{ours / max(rate, 1e-9):.2f}x this")
        result |= {"ingest": {m: {"samples_per_s": r, "busy_cores": b} for m, (r, b) in rates.items()},
                   "ingest_images": what, "ingest_cpus": cpus, "cores": cores}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
