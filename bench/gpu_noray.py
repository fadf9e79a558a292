"""GPU check, stage 1, without Ray: what runs on a GPU machine that has torch, torchvision, timm and this
checkout but no Ray, no FAISS and no network. Writes its figures to `--json` (default `$OUT/gpu_noray.json`
where $OUT is set) as it goes, so a call cut short still leaves what it measured.

    python bench/gpu_noray.py                        # on the GPU: demo and ViT-B/32-sized pairs, compile off/on
    python bench/gpu_noray.py --pairs vit_b32 --compile off --steps 30
    python bench/gpu_noray.py --device cpu --smoke   # a check of the script on a CPU (under a minute)

(1) Train step, per tower pair (`demo`: the demo recipe's small CNN + BiGRU at 64 px; `vit_b32`: timm's
    ViT-B/32 at 224 px + a 12-layer, 512-wide text transformer, CLIP ViT-B/32's shapes), on one batch held in
    device memory: this project's `train_step` (ContrastiveObjective, the train.* speed settings: bf16 autocast,
    channels_last, torch.compile on or off) against a plain PyTorch loop of the same model and settings, timed
    plain / project / plain so neither gains from order. MFU: the step's FLOPs (torch's FlopCounterMode on the
    plain loop's forward and backward) times steps/s over the GPU's dense bf16 peak; peak memory per loop.
(2) JPEG decode, images/s on all cores: PIL and torchvision.io.decode_jpeg on the CPU (one process a core),
    and batched torchvision.io.decode_jpeg(device="cuda"), on 256 px q95 JPEGs cut from real photographs
    (`bench/photo_crops.py`, where scikit-image is installed; otherwise smooth random textures, said so); and
    data.decode=gpu's worker side (`pipeline.data.epoch.device_decode`: batched decode, crops, brightness) at 64 and
    224 px on the device.
(3) Memory: the ViT-B/32-sized pair's step at --memory-batches with activation checkpointing and patch dropout
    off and on: peak memory (torch.cuda.max_memory_allocated) and samples/s.
Stage 2, the Ray Data -> GPU path, is `bench/gpu.py` (it needs Ray); `bench/gpu.sh` runs both.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import TrainJobConfig, load_config  # noqa: E402
from pipeline.losses import build_loss  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.training.objective import ContrastiveObjective  # noqa: E402
from pipeline.training.optimisation import make_optimizer, make_scheduler, speed_up, train_step  # noqa: E402

VOCAB = 10_000
# The demo recipe's towers (configs/demo.yaml's model section; a unit test holds the two equal) and CLIP
# ViT-B/32's shapes. Set here, not read from the YAML: the GPU machine may have no PyYAML.
PAIRS = {
    "demo": {"data.image_size": 64, "data.max_tokens": 24, "model.embed_dim": 128, "model.image.arch": "small_cnn",
             "model.image.width": 16, "model.text.arch": "gru", "model.text.word_dim": 128,
             "model.text.hidden": 128, "batch": 128},
    "vit_b32": {"data.image_size": 224, "data.max_tokens": 32, "model.embed_dim": 512,
                "model.image.arch": "timm:vit_base_patch32_224", "model.text.arch": "transformer",
                "model.text.word_dim": 512, "model.text.layers": 12, "model.text.heads": 8, "batch": 256},
}
# Dense bf16 tensor-core peaks (FLOP/s) by the name torch reports; MFU is against these.
PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
         ("L4", 121e12))


def make_config(pair: dict, batch: int, precision: str = "auto", channels_last: bool = True,
                compile_: bool = False) -> TrainJobConfig:
    towers = {k: v for k, v in pair.items() if k != "batch"}
    return load_config(TrainJobConfig, None, {
        "data.train": "unused", "data.val": "unused", **towers, "train.batch_size": batch,
        "scaling.num_workers": 1, "train.warmup_steps": 10, "train.precision": precision,
        "train.channels_last": channels_last, "train.compile": compile_})


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


def plain_step(cfg: TrainJobConfig, device: torch.device, compile_: bool | None = None):
    """What one writes by hand: the same model and speed settings, CLIP's loss inline, AdamW, clipping."""
    model = fresh_model(cfg)
    if device.type == "cuda" and cfg.train.channels_last:
        model.image_tower.to(memory_format=torch.channels_last)
    if cfg.train.compile if compile_ is None else compile_:
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


def step_flops(cfg: TrainJobConfig, device: torch.device, batch: dict) -> float:
    """FLOPs of one forward and backward of the plain loop, uncompiled (torch counts matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = plain_step(cfg, device, compile_=False)
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return float(counter.get_total_flops())


def peak_flops(name: str) -> float | None:
    return next((peak for key, peak in PEAKS if key in name), None)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_steps(name: str, pair: dict, args, device: torch.device, compile_: bool, device_name: str) -> dict:
    """(1) for one tower pair and one compile setting -> its figures."""
    batch_size = pair["batch"] if args.smoke else args.batch or pair["batch"]
    cfg = make_config(pair, batch_size, args.precision, not args.no_channels_last, compile_)
    batch = in_memory_batch(cfg, device)
    flops = step_flops(cfg, device, batch)
    total = 3 * (args.steps + args.warmup)
    reset_peak(device)
    plain = plain_step(cfg, device)
    plain_a = timed(plain, batch, args.steps, args.warmup, device)
    plain_mem = peak_gib(device)
    del plain
    reset_peak(device)
    project = project_step(cfg, device, total)
    ours = timed(project, batch, args.steps, args.warmup, device)
    project_mem = peak_gib(device)
    del project
    plain = plain_step(cfg, device)
    plain_b = timed(plain, batch, args.steps, args.warmup, device)
    del plain
    base = (plain_a + plain_b) / 2
    n = cfg.train.batch_size
    peak = peak_flops(device_name) if device.type == "cuda" else None
    mfu = (lambda rate: flops * rate / n / peak) if peak else (lambda rate: None)
    out = {"pair": name, "compile": compile_, "image_size": cfg.data.image_size, "batch": n,
           "autocast": cfg.train.autocast_dtype(device.type), "channels_last": cfg.train.channels_last,
           "step_gflops": flops / 1e9, "plain_samples_per_s": base, "plain_before": plain_a, "plain_after": plain_b,
           "project_samples_per_s": ours, "ratio": ours / base, "mfu_plain": mfu(base), "mfu_project": mfu(ours),
           "peak_flops": peak, "peak_gib_plain": plain_mem, "peak_gib_project": project_mem}
    pct = lambda x: f"{100 * x:.1f}%" if x is not None else "n/a"  # noqa: E731
    mem = f"; peak memory {plain_mem:.1f} / {project_mem:.1f} GiB" if plain_mem is not None else ""
    print(f"(1) {name} compile {'on' if compile_ else 'off'}: plain {base:.0f} samples/s (before {plain_a:.0f}, "
          f"after {plain_b:.0f}), project {ours:.0f}, ratio {ours / base:.3f}; {flops / n / 1e9:.2f} GFLOP a "
          f"sample, MFU {pct(out['mfu_plain'])} / {pct(out['mfu_project'])}{mem}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- (3) memory

MEMORY_OPTIONS = {"none": {}, "grad_checkpointing": {"model.image.grad_checkpointing": True,
                                                     "model.text.grad_checkpointing": True},
                  "patch_dropout 0.5": {"model.image.patch_dropout": 0.5},
                  "both": {"model.image.grad_checkpointing": True, "model.text.grad_checkpointing": True,
                           "model.image.patch_dropout": 0.5}}


def memory_rows(spec: dict, batches: list[int], args, device: torch.device) -> list[dict]:
    """(3) the project's step on the ViT-B/32-sized pair per batch and memory option: peak memory
    (torch.cuda.max_memory_allocated) and samples/s. FSDP needs two GPUs: bench/memory.py measures it on CPUs."""
    rows = []
    for batch in batches:
        for option, keys in MEMORY_OPTIONS.items():
            if args.smoke and option not in ("none", "both"):
                continue
            cfg = make_config({**spec, **keys}, batch, args.precision, not args.no_channels_last)
            data = in_memory_batch(cfg, device)
            reset_peak(device)
            try:
                step = project_step(cfg, device, 3 * (args.steps + args.warmup))
                rate = timed(step, data, args.steps, args.warmup, device)
                row = {"batch": batch, "option": option, "samples_per_s": rate, "peak_gib": peak_gib(device)}
                del step
            except torch.OutOfMemoryError:
                row = {"batch": batch, "option": option, "samples_per_s": None, "peak_gib": "out of memory"}
            print(f"(3) vit_b32 batch {batch} {option}: {row['samples_per_s'] or 0:.0f} samples/s, peak memory "
                  f"{row['peak_gib']} GiB", flush=True)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- (2) decode


def real_jpegs(n: int, size: int = 256, quality: int = 95) -> tuple[list[bytes], str]:
    """n JPEGs of size x size: crops of real photographs where scikit-image is installed, else textures."""
    from PIL import Image

    rng = np.random.default_rng(0)
    try:
        from bench.photo_crops import crop_sample, sources

        photos, what = sources(), "crops of real photographs"
        if not photos:
            raise ImportError
        pictures = (crop_sample(*photos[i % len(photos)][1:], rng, size)[0] for i in range(n))
    except ImportError:
        what = "smooth random textures (no scikit-image here)"
        pictures = (Image.fromarray(texture(rng, size)) for _ in range(n))
    out = []
    for picture in pictures:
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out, what


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour noise upsampled with bicubic: photo-like spectra, not white noise."""
    from PIL import Image

    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def _pil_decode(blobs: list[bytes]) -> int:
    from PIL import Image

    for b in blobs:
        np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    return len(blobs)


def _tv_decode(blobs: list[bytes]) -> int:
    import torchvision.io

    torch.set_num_threads(1)
    for b in blobs:
        torchvision.io.decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))
    return len(blobs)


def cpu_decode_rate(fn, blobs: list[bytes], cores: int) -> float:
    """images/s with one process a core, each decoding its slice of `blobs` (the pool started beforehand)."""
    chunks = [blobs[i::cores] for i in range(cores)]
    with Pool(cores) as pool:
        pool.map(fn, [c[:2] for c in chunks])  # the workers started and imported
        t0 = time.perf_counter()
        n = sum(pool.map(fn, chunks))
        return n / (time.perf_counter() - t0)


def cuda_decode_rate(blobs: list[bytes], device: torch.device, batch: int = 256, rounds: int = 3) -> float:
    import torchvision.io

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    torchvision.io.decode_jpeg(data[:batch], device=device)  # CUDA context, nvjpeg handles
    sync(device)
    t0 = time.perf_counter()
    for _ in range(rounds):
        for i in range(0, len(data), batch):
            torchvision.io.decode_jpeg(data[i:i + batch], device=device)
    sync(device)
    return rounds * len(data) / (time.perf_counter() - t0)


def worker_view_rate(blobs: list[bytes], device: torch.device, size: int, batch: int = 128, rounds: int = 2) -> float:
    """images/s of data.decode=gpu's worker side (`device_decode.device_views`: one batched decode per block of a
    read task's 128 rows, each crop box resampled to size x size, brightness), on `device`, one process."""
    from pipeline.data.epoch import device_decode as dd

    rng, batch = np.random.default_rng(0), min(batch, len(blobs))
    planned = [dd.plan_view(dd.jpeg_size(b), size, True, 0.8, "shortest", rng) for b in blobs]
    blocks = []
    for i in range(0, len(blobs) - batch + 1, batch):
        part = range(i, i + batch)
        blocks.append({"tally": np.array([""] * batch, dtype=object), "encoded": np.ones(batch, dtype=bool),
                       "jpeg": np.array([blobs[j] for j in part], dtype=object),
                       "box": np.array([planned[j][0] for j in part]), "gain": np.array([planned[j][1] for j in part])})
    dd.device_views(blocks[0], device, size)  # CUDA context, nvjpeg handles
    sync(device)
    t0 = time.perf_counter()
    for _ in range(rounds):
        for block in blocks:
            dd.device_views(block, device, size)
    sync(device)
    return rounds * batch * len(blocks) / (time.perf_counter() - t0)


def decode_rates(args, device: torch.device) -> dict:
    blobs, what = real_jpegs(args.decode_images)
    cores = os.cpu_count() or 1
    out = {"images": len(blobs), "what": what, "mean_kib": sum(map(len, blobs)) / len(blobs) / 1024, "cores": cores,
           "pil_per_s": cpu_decode_rate(_pil_decode, blobs, cores),
           "torchvision_cpu_per_s": cpu_decode_rate(_tv_decode, blobs, cores)}
    out["cuda_per_s"] = cuda_decode_rate(blobs, device) if device.type == "cuda" else None
    cuda = f", batched CUDA {out['cuda_per_s']:.0f}" if out["cuda_per_s"] else ", CUDA decode: no CUDA device"
    print(f"(2) decode of {len(blobs)} 256 px q95 JPEGs ({what}, {out['mean_kib']:.0f} KiB mean) on {cores} cores: "
          f"PIL {out['pil_per_s']:.0f}/s, torchvision CPU {out['torchvision_cpu_per_s']:.0f}/s{cuda}", flush=True)
    for size in (64, 224):  # data.decode=gpu's worker: decode, crop and brightness on the device
        out[f"worker_views_{size}_per_s"] = rate = worker_view_rate(blobs, device, size)
        print(f"    data.decode=gpu worker views at {size} px on {device.type}, one process: {rate:.0f}/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a check of the script)")
    ap.add_argument("--pairs", default="demo,vit_b32", help=f"tower pairs, of {', '.join(PAIRS)}")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="both")
    ap.add_argument("--batch", type=int, default=0, help="samples per step (default: the pair's, 256)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps before each timing")
    ap.add_argument("--precision", default="auto", help="train.precision: auto (bf16 on GPU) | fp32 | bf16")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--decode-images", type=int, default=2048, help="JPEGs for (2); 0 skips it")
    ap.add_argument("--memory-batches", default="64,128,256",
                    help="(3): batches of the ViT-B/32-sized pair to measure memory at; empty skips it")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: a check that the script runs")
    ap.add_argument("--json", default="", help="where the figures go (default $OUT/gpu_noray.json)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.decode_images = 2, 1, min(args.decode_images, 32)
        args.compile = "off" if args.compile == "both" else args.compile
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch; run with --device cpu --smoke for a check of the script only")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    path = Path(args.json or (Path(os.environ["OUT"]) / "gpu_noray.json" if os.environ.get("OUT") else ""))
    result = {"device": name, "torch": torch.__version__, "cores": os.cpu_count(), "args": vars(args), "steps": []}
    print(f"device {name}, torch {torch.__version__}, {os.cpu_count()} cores", flush=True)

    def save() -> None:
        if str(path) not in ("", "."):
            path.write_text(json.dumps(result, indent=2))

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    for pair in args.pairs.split(","):
        if pair not in PAIRS:
            sys.exit(f"--pairs: unknown pair {pair!r}; choose from {', '.join(PAIRS)}")
        spec = dict(PAIRS[pair])
        if args.smoke:  # small batches; timm's ViT-B/32 takes only 224 px, so it keeps that with 2 text layers
            spec |= {"model.text.layers": 2, "batch": 4} if pair == "vit_b32" else {"batch": 8}
        for compile_ in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
            result["steps"].append(train_steps(pair, spec, args, device, compile_, name))
            save()
    if args.memory_batches:
        spec = dict(PAIRS["vit_b32"])
        if args.smoke:  # timm's tiny test ViT (160 px) for a check of the script
            spec |= {"model.image.arch": "timm:test_vit", "data.image_size": 160, "model.text.layers": 2}
        batches = [4] if args.smoke else [int(b) for b in args.memory_batches.split(",")]
        result["memory"] = memory_rows(spec, batches, args, device)
        save()
    if args.decode_images:
        result["decode"] = decode_rates(args, device)
        save()
    if str(path) not in ("", "."):
        print(f"figures written to {path}")


if __name__ == "__main__":
    main()
