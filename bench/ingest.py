"""Ingest throughput: the Ray Data pipeline against single-process loops, and training fed by it against
training fed from memory, all measured in one run on the same shards.

    .venv/bin/python bench/ingest.py                    # 6000 real-photo JPEGs of 256 px q95, sizes 64 and 224
    .venv/bin/python bench/ingest.py --n 2000 --sizes 224 --parts ab
    .venv/bin/python bench/ingest.py --dataset synthetic --side 320   # the synthetic scenes, as before

The JPEGs are img2dataset-shaped: 256 px, quality 95, crops cut from the photographs scikit-image, scikit-learn
and matplotlib ship (`bench/photo_crops.py`), with real photos' detail and file sizes (~20 KiB, where a
synthetic scene of two shapes is a few KiB and decodes faster than any photo).

(a)  a plain single-process loop: tarfile -> PIL open -> RGB -> resize to S x S, samples/s;
(a2) the pipeline's own transform (`prepare_train_batch`: JPEG draft decode, random resized crop,
     brightness, tokenising) in a single-process loop;
(a3) what a PyTorch user runs instead: a torch `DataLoader` with two worker processes over the same tar shards
     (split between the workers), OpenCLIP's training transform (torchvision RandomResizedCrop(S, scale
     (0.8, 1), bicubic), then uint8 CHW) and the same tokenizer, batch 128, samples/s on the same cores;
(b)  the Ray Data pipeline alone: what training feeds a worker (`epoch_data.worker_batches`: its share of the
     shards, read and prepared by its own Ray Data pipeline, cut into batches by the batcher), here one worker
     taking the whole epoch in the driver, samples/s divided by the machine's cores: per core, the target is
     >= 0.9 x (a);
(p)  (--parts p) what a read task spends its time on: one worker's read tasks run in this process under
     cProfile, the functions' own time added up by stage (tar parsing, JPEG decode, crop/resize/brightness,
     tokenising, numpy/Arrow conversion, shuffle and positions; the object-store put and the batcher are
     outside the task);
(s)  (--parts s) outside the task: `ds.stats()` of one worker's epoch (per operator: the tasks' wall and CPU
     time, bytes through the object store) and the batcher timed alone over the blocks already pulled;
(g)  (--parts g) data.decode=gpu: one worker's read tasks run in this process, core-ms a sample with
     data.decode=cpu (decode, crop, brightness, tokenising) against data.decode=gpu (the JPEG header, the
     views' boxes, tokenising), and what the worker's device then spends on the blocks (`device_blocks`; on a
     CPU-only machine, the CPU standing in for the GPU);
(c)  training steps/s with batches from the pipeline (`epoch_data.worker_batches` on each worker) over steps/s
     on in-memory tensors of the same shape, same workers, same run, on the demo recipe and 8000 demo-sized
     (64 px) JPEGs: the target is >= 0.9.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import RunJobConfig, TrainJobConfig, load_config, narrow, to_dict  # noqa: E402
from pipeline.data import transforms  # noqa: E402
from pipeline.data.formats.shards import iter_tar_samples  # noqa: E402
from pipeline.data.formats.synthetic import write_split  # noqa: E402

from bench.process_cpu import busy_core_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(paths: list[str], size: int) -> float:
    """(a): samples/s of the obvious single-process decode + resize."""
    from PIL import Image

    n, t0 = 0, time.perf_counter()
    for p in paths:
        with tarfile.open(p) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                    np.asarray(img.resize((size, size), Image.BILINEAR))
                    n += 1
    return n / (time.perf_counter() - t0)


def transform_loop(paths: list[str], size: int, tokenizer) -> float:
    """(a2): samples/s of the pipeline's own batch transform, without Ray."""
    n, t0 = 0, time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            rows = list(iter_tar_samples(f, Path(p).name))
        for lo in range(0, len(rows), 128):
            chunk = rows[lo:lo + 128]
            batch = {c: np.array([r[c] for r in chunk], dtype=object) for c in ("key", "image", "txt", "json",
                                                                                "problem")}
            batch["seed"] = np.arange(lo, lo + len(chunk))
            out, _ = transforms.prepare_train_batch(batch, tokenizer, size, True, 0.8)
            n += len(out["key"])
    return n / (time.perf_counter() - t0)


class TarSamples(torch.utils.data.IterableDataset):
    """(a3)'s dataset: every tar sample, the shards dealt between the DataLoader's workers."""

    def __init__(self, paths: list[str], size: int, tokenizer):
        self.paths, self.size, self.tokenizer = paths, size, tokenizer

    def __iter__(self):
        import json

        from PIL import Image
        from torchvision import transforms as T

        info = torch.utils.data.get_worker_info()
        mine = self.paths[info.id::info.num_workers] if info else self.paths
        crop = T.RandomResizedCrop(self.size, scale=(0.8, 1.0), interpolation=T.InterpolationMode.BICUBIC)
        for p in mine:
            with tarfile.open(p) as tar:
                members = {m.name: m for m in tar}
                for name in sorted(n for n in members if n.endswith(".jpg")):
                    img = Image.open(io.BytesIO(tar.extractfile(members[name]).read())).convert("RGB")
                    caption = json.loads(tar.extractfile(members[name[:-4] + ".json"]).read())["captions"][0]
                    pixels = torch.from_numpy(np.asarray(crop(img)).copy()).permute(2, 0, 1)
                    yield pixels, torch.from_numpy(self.tokenizer.encode_batch([caption])[0])


def dataloader_loop(paths: list[str], size: int, tokenizer, workers: int = 2) -> float:
    """(a3): samples/s of a torch DataLoader over the shards, timed from its first batch (the workers' start,
    a second or so, is left out, as (b)'s warm-up leaves its tasks' start out)."""
    loader = torch.utils.data.DataLoader(TarSamples(paths, size, tokenizer), batch_size=128, num_workers=workers)
    n, t0 = 0, None
    for images, _ in loader:
        if t0 is None:
            t0 = time.perf_counter()
            continue
        n += len(images)
    return n / (time.perf_counter() - t0)


def ray_data_pipeline(paths: list[str], cfg, tokenizer) -> tuple[float, float, float]:
    """(b): samples/s of one epoch of the training's Ray Data pipeline, one worker's share being all of it (the
    data CPUs then go to that one pipeline), iterated by the driver. -> (samples/s, core-seconds a sample, share
    of the machine's cores busy meanwhile)"""
    import torch

    from pipeline.training.worker_data import worker_batches

    cfg = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, num_workers=1))
    warm = worker_batches(paths, cfg, tokenizer, 0, 1, 1, torch.device("cpu"))
    for _ in zip(range(2), warm):  # the decode tasks started; the timed epoch is the next one
        pass
    n, t0, busy0 = 0, time.perf_counter(), busy_core_seconds()
    for b in worker_batches(paths, cfg, tokenizer, 0, 1, 2, torch.device("cpu")):
        n += len(b["key"])
    wall, busy = time.perf_counter() - t0, busy_core_seconds() - busy0
    return n / wall, busy / n, busy / (wall * (os.cpu_count() or 1))


STAGES = (  # (stage, patterns in a profiled function's file or name), first match wins
    ("tar parsing", ("tarfile.py", "shards.py")),
    ("JPEG decode", ("ImagingDecoder", "JpegImagePlugin", "ImageFile.py", "method 'draft'", "convert")),
    ("crop, resize, brightness", ("method 'resize'", "method 'point'", "crop_box", "augment_image", "Image.py")),
    ("tokenising, captions", ("tokenizer.py", "subword.py", "vocabulary.py", "json", "parse_captions", "re.py",
                              "method 'findall'", "method 'lower'", "method 'split'")),
    ("numpy/Arrow conversion", ("numpy", "pyarrow", "ray/data", "rows_to_batch", "method 'stack'",
                                "method 'concatenate'", "asarray", "built-in method numpy")),
    ("shuffle, positions, filter", ("permute_windows", "epoch_plan.py", "epoch_source.py", "_random")),
)


def profile_read_tasks(paths: list[str], cfg, tokenizer) -> dict[str, float]:
    """What a training read task spends its time on: every read task of one worker's epoch (the whole
    share) run in this process under cProfile, the functions' own time added up by stage. The object-store put
    and the batcher happen outside the task and are not in it. -> {stage: seconds}, with 'total'."""
    import cProfile
    import pstats

    from pipeline.data import ingest
    from pipeline.data.epoch.plan import choose_layout, worker_share

    layout = choose_layout(paths, None, 1, cfg.data.readers_per_worker, cfg.train.seed)
    share = worker_share(paths, None, 1, 0, layout, cfg.train.seed, 1, None)
    source = ingest.train_epoch_source(share, paths, tokenizer, cfg.data, cfg.train.seed, 1)
    tasks = source.get_read_tasks(1)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for task in tasks:
        for _ in task():
            pass
    prof.disable()
    total = time.perf_counter() - t0
    out, others = dict.fromkeys([s for s, _ in STAGES] + ["other"], 0.0), []
    for (file, _, name), (_, _, own, _, _) in pstats.Stats(prof).stats.items():
        where = f"{file} {name}"
        stage = next((s for s, pats in STAGES if any(p in where for p in pats)), "other")
        out[stage] += own
        if stage == "other":
            others.append((own, f"{Path(file).name}:{name}"))
    top = ", ".join(f"{where} {100 * own / total:.0f}%" for own, where in sorted(others, reverse=True)[:5])
    return {**out, "total": total, "other_top": top}


def outside_the_task(paths: list[str], cfg, tokenizer) -> tuple[str, float, float]:
    """(s): one worker's epoch dataset iterated as training pulls it, then Ray Data's own account of it
    (`ds.stats()`: per operator, the tasks' wall and CPU time, the object-store bytes), and the batcher timed
    alone over the blocks already pulled. -> (the stats text, seconds to pull the epoch, batcher seconds)."""
    from pipeline.data import ingest
    from pipeline.data.epoch.batcher import EpochBatcher
    from pipeline.data.epoch.plan import choose_layout, worker_share
    from pipeline.training.worker_data import data_cpus

    cfg = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, num_workers=1))
    layout = choose_layout(paths, None, 1, cfg.data.readers_per_worker, cfg.train.seed)
    share = worker_share(paths, None, 1, 0, layout, cfg.train.seed, 1, None)
    ds = ingest.train_epoch_dataset(share, paths, tokenizer, cfg.data, cfg.train.seed, 1, None, data_cpus(cfg))
    t0 = time.perf_counter()
    blocks = list(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=4))
    pulled = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in EpochBatcher(iter(blocks), cfg.local_batch_size(), cfg.data.shuffle_buffer, np.random.default_rng(0)):
        pass
    return ds.stats(), pulled, time.perf_counter() - t1


def read_tasks_in_process(paths: list[str], cfg, tokenizer) -> tuple[float, list[dict]]:
    """One worker's read tasks of a whole epoch run here, one after another (no profiler) -> (seconds, their
    blocks as numpy batches)."""
    from ray.data.block import BlockAccessor

    from pipeline.data import ingest
    from pipeline.data.epoch.plan import choose_layout, worker_share

    layout = choose_layout(paths, None, 1, cfg.data.readers_per_worker, cfg.train.seed)
    share = worker_share(paths, None, 1, 0, layout, cfg.train.seed, 1, None)
    tasks = ingest.train_epoch_source(share, paths, tokenizer, cfg.data, cfg.train.seed, 1).get_read_tasks(1)
    t0, blocks = time.process_time(), []
    for task in tasks:
        blocks += list(task())
    spent = time.process_time() - t0
    return spent, [BlockAccessor.for_block(b).to_batch_format("numpy") for b in blocks]


def gpu_decode_split(paths: list[str], size: int) -> tuple[float, float, float]:
    """(g): -> (read-task core-ms a sample with data.decode=cpu, with data.decode=gpu, the worker device's ms a
    sample for the gpu blocks); the two modes run A B A B, the second round reported (the first warms up)."""
    from pipeline.data.epoch.device_decode import device_blocks

    cfg, tok = recipe_at(size, paths)
    gpu_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, decode="gpu", cache_decoded="false"))
    for _ in range(2):
        cpu_s, blocks = read_tasks_in_process(paths, cfg, tok)
        gpu_s, gpu_blocks = read_tasks_in_process(paths, gpu_cfg, tok)
    n = sum(int((np.asarray(b["tally"]) == "").sum()) for b in blocks)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    for _ in device_blocks(gpu_blocks, device, size, transforms.image_view(cfg.data)[0]):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * cpu_s / n, 1000 * gpu_s / n, 1000 * (time.perf_counter() - t0) / n


def held_back(size: int, a2: float, per_sample: float, busy: float) -> str:
    """Which side of (b) misses the target: the cores standing idle (too few reads in flight, or the consumer
    waiting on them), or each sample costing more CPU in the pipeline (`per_sample` core-seconds, the cores
    `busy` that share of the time) than in the transform loop (a2)."""
    loop = 1.0 / a2  # core-seconds per sample of the same transform in one process
    return (f"S={size}: the pipeline spends {1000 * per_sample:.2f} core-ms a sample against {1000 * loop:.2f} in "
            f"the transform loop ({per_sample / loop:.1f}x: reading, Arrow blocks, the object store, the batcher "
            f"and Ray's own processes), with the cores {100 * busy:.0f}% busy; held back by "
            + ("the CPU each sample costs beyond its transform" if busy >= 0.85 else
               f"idle cores ({100 * (1 - busy):.0f}%: reads not in flight while the consumer waits)"
               + (" and the CPU each sample costs beyond its transform" if per_sample / loop > 1.2 else "")))


def fed_vs_memory(paths: list[str], cfg, tokenizer, steps: int) -> tuple[float, float]:
    """(c): (steps/s fed by the pipeline, steps/s on in-memory tensors) on cfg.scaling.num_workers workers."""
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    out = Path(tempfile.mkdtemp())

    def loop(c):
        import json

        from pipeline.config import TrainJobConfig, build
        from pipeline.data.text.tokenizer import Tokenizer
        from pipeline.distributed import WorkerContext
        from pipeline.losses import build_loss
        from pipeline.models import build_model
        from pipeline.training.objective import ContrastiveObjective, backward_step
        from pipeline.training.worker_data import worker_batches
        from pipeline.training.optimisation import make_optimizer

        cfg, ctx = build(TrainJobConfig, c["config"]), WorkerContext.from_ray()
        tok = Tokenizer.from_dict(c["tokenizer"])
        model = build_model(cfg.model, len(tok), vocab=tok.vocab, image_size=cfg.data.image_size,
                            max_tokens=tok.max_tokens)
        objective = ctx.prepare_model(ContrastiveObjective(model, build_loss(cfg.loss)))
        opt = make_optimizer(objective, cfg.train)

        def step(batch):
            opt.zero_grad(set_to_none=True)
            backward_step(objective, batch["image"], batch["tokens"], ctx.rank, 0)
            opt.step()

        it = worker_batches(c["paths"], cfg, tok, ctx.rank, ctx.world_size, 1, ctx.device)
        # In-memory: one real batch held and reused, so captions have their real lengths (the GRU packs
        # sequences: random full-length tokens would make every in-memory step slower than a real one).
        first = next(it)
        mem = {"image": first["image"].clone(), "tokens": first["tokens"].clone()}
        def timed(batches) -> float:
            t0 = time.perf_counter()
            for _ in range(c["steps"]):
                step(next(batches))
            return time.perf_counter() - t0

        for _ in range(3):  # warm both paths up: the first steps and the first batches are slow
            step(mem)
            step(next(it))
        forever = iter(lambda: mem, None)
        # in-memory before and after the fed steps, so neither side gains from running second
        t_before = timed(forever)
        t_fed = timed(it)
        t_mem = (t_before + timed(forever)) / 2
        (Path(c["out"]) / f"rank{ctx.rank}.json").write_text(json.dumps([t_mem, t_fed]))
        ray.train.report({})

    TorchTrainer(loop, train_loop_config={"config": to_dict(cfg), "tokenizer": tokenizer.to_dict(),
                                          "steps": steps, "out": str(out), "paths": paths},
                 scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers,
                                                        resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
                 run_config=ray.train.RunConfig(storage_path=str(out / "ray"))).fit()
    import json

    t_mem, t_fed = np.array([json.loads((out / f"rank{r}.json").read_text())
                             for r in range(cfg.scaling.num_workers)]).max(axis=0)
    del torch
    return steps / t_fed, steps / t_mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=6000, help="JPEGs written for the benchmark (default 6000)")
    ap.add_argument("--side", type=int, default=256, help="side of the stored JPEGs (default 256)")
    ap.add_argument("--dataset", choices=("photos", "synthetic"), default="photos",
                    help="crops of real photographs (default) or the synthetic scenes")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="decoded sizes S for (a), (a2), (b)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per variant in (c)")
    ap.add_argument("--parts", default="abc", help="which measurements to run: any of a, b, c, and p (the read "
                    "tasks' time by stage, under cProfile), s (Ray Data's per-operator stats and the batcher alone), g "
                    "(data.decode=gpu's split of the work) (default abc)")
    args = ap.parse_args()

    from pipeline import cluster

    data = Path(tempfile.mkdtemp()) / "bench"
    if args.dataset == "photos":
        from bench.photo_crops import write_dataset as write_photos

        write_photos(data, args.n, 0, size=args.side, quality=95, shard_size=250)
        paths = sorted(str(p) for p in (data / "train").glob("*.tar"))
    else:
        paths = [str(p) for p in write_split(data, args.n, seed=0, split_id=0, shard_size=250, side=args.side)]
    cluster.connect()
    import ray

    cores = int(ray.cluster_resources().get("CPU", 0))
    physical = os.cpu_count() or 1
    print(f"{args.n} JPEGs of {args.side}x{args.side} in {len(paths)} shards; {physical} cores "
          f"({cores} logical CPUs given to Ray)")
    rows, cpu = [], {}
    for size in (args.sizes if "a" in args.parts or "b" in args.parts else []):
        cfg, tok = recipe_at(size, paths)
        a, a2 = plain_loop(paths, size), transform_loop(paths, size, tok)
        a3 = dataloader_loop(paths, size, tok)
        b, per_sample, busy = ray_data_pipeline(paths, cfg, tok)
        b_core = b / physical
        rows.append((size, a, a2, b, b_core))
        cpu[size] = (per_sample, busy)
        print(f"S={size}: (a) plain loop {a:.0f}/s  (a2) pipeline transform loop {a2:.0f}/s  "
              f"(a3) torch DataLoader, 2 workers {a3:.0f}/s  (b) Ray Data {b:.0f}/s = {b_core:.0f}/s per core  ->  "
              f"(b)/(a) per core {b_core / a:.2f}, (b)/(a2) per core {b_core / a2:.2f}, (b)/(a3) {b / a3:.2f}; "
              f"(b) spends {per_sample * a2:.2f}x the CPU a sample of (a2)")
    if "p" in args.parts:
        for size in args.sizes:
            cfg, tok = recipe_at(size, paths)
            stages = profile_read_tasks(paths, cfg, tok)
            total, top = stages.pop("total"), stages.pop("other_top")
            print(f"S={size}: read tasks in one process, {args.n / total:.0f} samples/s under cProfile "
                  f"({1000 * total / args.n:.2f} ms a sample); own time by stage: "
                  + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
                  + f"; the most of 'other': {top}")
    if "s" in args.parts:
        for size in args.sizes:
            cfg, tok = recipe_at(size, paths)
            stats, pulled, batcher = outside_the_task(paths, cfg, tok)
            print(f"S={size}: one worker's epoch pulled in {pulled:.1f} s ({args.n / pulled:.0f} samples/s); the "
                  f"batcher alone over the pulled blocks {batcher:.2f} s ({1000 * batcher / args.n:.3f} ms a "
                  f"sample). Ray Data's stats:\n{stats}")
    if "g" in args.parts:
        for size in args.sizes:
            cpu_ms, gpu_ms, dev_ms = gpu_decode_split(paths, size)
            where = "GPU" if torch.cuda.is_available() else "CPU standing in for the GPU"
            print(f"S={size}: (g) a read task spends {cpu_ms:.2f} core-ms a sample with data.decode=cpu, "
                  f"{gpu_ms:.2f} with data.decode=gpu ({gpu_ms / cpu_ms:.2f}x); the worker's device ({where}) then "
                  f"{dev_ms:.2f} ms a sample")
    fed = mem = float("nan")
    if "c" in args.parts:
        fed, mem = demo_fed_vs_memory(data, args.steps)
        print(f"(c) demo recipe (S=64, global batch 256, 2 workers): fed by Ray Data {fed:.2f} steps/s, "
              f"in-memory {mem:.2f} steps/s  ->  ratio {fed / mem:.2f}")
    print("\n| S | (a) plain loop /s | (a2) transform loop /s | (b) Ray Data /s | (b) per core | (b)/(a) per core |"
          " (b)/(a2) per core |\n|---|---|---|---|---|---|---|")
    for size, a, a2, b, bc in rows:
        print(f"| {size} | {a:.0f} | {a2:.0f} | {b:.0f} | {bc:.0f} | {bc / a:.2f} | {bc / a2:.2f} |")
    print(f"\n(c) fed / in-memory steps per second: {fed:.2f} / {mem:.2f} = {fed / mem:.2f}")
    for size, a, a2, b, bc in rows:
        if bc / a < 0.9:  # the target: (b) per core >= 0.9 x (a)
            print(held_back(size, a2, *cpu[size]))


def recipe_at(size: int, paths: list[str]):
    """The demo recipe at S = `size` over `paths`, and the tokenizer its vocabulary pass learns from them."""
    from pipeline.data import ingest

    cfg = narrow(load_config(RunJobConfig, ROOT / "configs" / "demo.yaml",
                             {"data.image_size": size, "data.train": paths[0], "data.val": paths[0]}), TrainJobConfig)
    return cfg, ingest.scan_training_data(paths, cfg.data).tokenizer


def demo_fed_vs_memory(data: Path, steps: int) -> tuple[float, float]:
    from pipeline.data import ingest

    # (c) on the demo's own setting: 64 px JPEGs, enough of them that the timed steps stay in one epoch
    demo = [str(p) for p in write_split(data.parent / "demo", 8000, seed=0, split_id=0, shard_size=1000, side=64)]
    cfg = narrow(load_config(RunJobConfig, ROOT / "configs" / "demo.yaml",
                             {"data.train": demo[0], "data.val": demo[0]}), TrainJobConfig)
    tok = ingest.scan_training_data(demo, cfg.data).tokenizer
    return fed_vs_memory(demo, cfg, tok, steps)

if __name__ == "__main__":
    main()
