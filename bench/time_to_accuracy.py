"""Time to accuracy: the pipeline against plain single-process PyTorch loops at the same wall clock, on the same
data: validation rsum reached by 120, 300 and 600 s, and samples/s.

    .venv/bin/python bench/time_to_accuracy.py                          # real-photo crops, all three, 1 round
    .venv/bin/python bench/time_to_accuracy.py --reference small-loop --budgets 120,300 --rounds 2
    .venv/bin/python bench/time_to_accuracy.py --dataset synthetic --reference same-recipe --budgets 300
    .venv/bin/python bench/time_to_accuracy.py --set scaling.num_workers=1 --set scaling.cpus_per_worker=2

The data (--dataset photos, the default) is `bench/photo_crops.py`'s: 4,000 training and 500 validation crops of
64 px cut from the photographs scikit-image, scikit-learn and matplotlib ship, five captions each, which the
recipe was never tuned on (the synthetic scenes saturate every recipe: --dataset synthetic).

A  `pipeline train` of the recipe (its own embedded Ray, 2 workers; Ray Data decodes each shard once into the
   object store, data.cache_decoded=auto, and cuts crops from there every epoch), stopped at the budget; timed
   from the command's start, so Ray's start and the pre-training passes count, as they do for a user.
B  same-recipe: the plain loop of the recipe itself: one process on every core, the recipe's towers, loss,
   optimiser, LR schedule, global batch and augmentation (`transforms.augment_image`, one caption drawn per
   image per epoch), its images decoded into memory once (inside the budget, as A's reading is).
C  small-loop: what a user would write instead (`bench/small_loop.py`): a smaller, simpler model (four conv +
   max-pool stages of 16-64 channels, a 128-unit BiGRU, symmetric InfoNCE with a learned temperature, AdamW at
   a constant rate), images decoded once, no augmentation, torch on two threads.
Each validates on data.val after every epoch; "rsum at T s" is the last validation finished within T seconds of
the run's start. With one --epochs value each run lasts the largest budget (A and B stop sooner where the
recipe's train.epochs end: their rsum then stays the final one) and the smaller budgets are read off the same
run, so A's and B's LR schedule is not fitted to them (still high at a short budget); with one value per budget
A and B run once per budget with that many epochs. Runs alternate A B C A B C so the machine's noise shows.

Reported per run: whole-run samples/s (samples trained within the budget / the budget, or the run's time
where it finished sooner), samples/s between epoch starts (an epoch's samples / the time from its first step
to the next epoch's), rsum at each budget; then medians over the rounds and the ratios against A. For A, the
first step's line and the last epoch's phase breakdown say where its time went.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEP = re.compile(r"\[train\] epoch (\d+)/\d+ step (\d+)/(\d+)")
VAL = re.compile(r"\[train\] epoch (\d+): loss [\d.]+ val rsum ([\d.]+)")
TOOK = re.compile(r"\[train\] epoch (\d+) took (.*)")
FIRST = re.compile(r"\[train\] (first step after .*)")


EXTRA: list[str] = []  # --set overrides, for both runs (the plain loop takes what applies to it)


def overrides(data: Path, epochs: int, runs: Path) -> list[str]:
    return [f"data.train={data}/train", f"data.val={data}/val", f"train.epochs={epochs}", "data.synth.enabled=false",
            f"run.storage_path={runs}", "run.name=tta", "train.log_every=1", *EXTRA]


def run_pipeline(recipe: Path, data: Path, epochs: int, budget: float) -> dict:
    """A: `pipeline train`, stopped at the budget; every progress line timestamped as it arrives."""
    with tempfile.TemporaryDirectory() as runs:
        cmd = [sys.executable, "-m", "pipeline", "train", "--config", str(recipe),
               *[x for o in overrides(data, epochs, Path(runs)) for x in ("--set", o)]]
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        steps, vals, took, firsts, per_epoch, start = 0, [], "", {}, 0, ""
        lines: list[tuple[float, str]] = []  # (seconds since the start, line), filled as they arrive
        reader = threading.Thread(target=lambda: lines.extend((time.time() - t0, x) for x in proc.stdout),
                                  daemon=True)
        reader.start()
        try:
            while time.time() - t0 < budget and proc.poll() is None:
                time.sleep(0.2)
        finally:
            end = min(budget, time.time() - t0)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for now, line in lines:
            if now > budget:
                break
            if m := STEP.search(line):
                e, n, per_epoch = int(m[1]), int(m[2]), int(m[3])
                steps = max(steps, (e - 1) * per_epoch + n)
                firsts.setdefault(e, now)
            elif m := VAL.search(line):
                vals.append((now, int(m[1]), float(m[2])))
            elif m := TOOK.search(line):
                took = f"epoch {m[1]}: {m[2]}"
            elif m := FIRST.search(line):
                start = m[1]
    return {"steps": steps, "vals": vals, "firsts": firsts, "per_epoch": per_epoch, "took": took, "end": end,
            "start": start}


class InMemoryVal:
    """The validation set decoded once, served in the numpy batches `train.validate` takes."""

    def __init__(self, batch: dict):
        self.batch = batch

    def iter_batches(self, batch_size: int, **_):
        n = len(self.batch["key"])
        for i in range(0, n, batch_size):
            yield {k: v[i:i + batch_size] for k, v in self.batch.items()}


def read_split(folder: Path) -> list[dict]:
    from pipeline.data.formats.shards import iter_tar_samples

    rows = []
    for path in sorted(folder.glob("*.tar")):
        with open(path, "rb") as f:
            rows += [r for r in iter_tar_samples(f, path.name) if not r["problem"]]
    return rows


def run_plain(recipe: Path, data: Path, epochs: int, budget: float) -> dict:
    """B: the plain loop, in this process, on every core."""
    import numpy as np
    import torch

    from pipeline.config import RunJobConfig, load_config
    from pipeline.data import transforms
    from pipeline.data.text import vocabulary
    from pipeline.data.text.tokenizer import count_words
    from pipeline.losses import build_loss
    from pipeline.models import build_model
    from pipeline.training.objective import ContrastiveObjective
    from pipeline.training.optimisation import make_optimizer, make_scheduler, train_step
    from pipeline.training.validation import validate

    t0 = time.time()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(RunJobConfig, recipe, overrides(data, epochs, Path(tempfile.gettempdir())))
    size, d = cfg.data.image_size, cfg.data
    train = []
    for r in read_split(data / "train"):  # decoded once: PIL images and their captions
        caps, why = transforms.parse_captions(r["txt"], r["json"])
        if not why:
            train.append((transforms.decode_image(bytes(r["image"]), size), caps))
    counts = Counter()
    for _, caps in train:
        counts.update(count_words(caps))  # as the pipeline's vocabulary pass counts
    tokenizer = vocabulary.make_tokenizer(d, cfg.model, counts)
    val_rows = read_split(data / "val")
    cols = {k: np.array([r[k] for r in val_rows], dtype=object) for k in ("key", "image", "txt", "json", "problem")}
    cols["seed"] = np.zeros(len(val_rows), dtype=np.int64)
    val_batch, _ = transforms.prepare_eval_batch(cols, size, transforms.image_view(d))
    val = InMemoryVal(val_batch)

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, len(tokenizer), vocab=getattr(tokenizer, "vocab", None), image_size=size,
                        max_tokens=tokenizer.max_tokens)
    loss = build_loss(cfg.loss)
    objective = ContrastiveObjective(model, loss)
    opt = make_optimizer(objective, cfg.train, cfg.model)
    per_epoch = len(train) // cfg.train.batch_size
    sched = make_scheduler(opt, cfg.train.warmup_steps, per_epoch * cfg.train.epochs)
    rng = np.random.default_rng(cfg.train.seed)
    steps, vals, firsts = 0, [], {}
    for epoch in range(1, cfg.train.epochs + 1):
        order = rng.permutation(len(train))
        for b in range(per_epoch):
            if time.time() - t0 >= budget:
                return {"steps": steps, "vals": vals, "firsts": firsts, "per_epoch": per_epoch, "took": "",
                        "end": time.time() - t0}
            firsts.setdefault(epoch, time.time() - t0)
            pick = order[b * cfg.train.batch_size:(b + 1) * cfg.train.batch_size]
            images, captions = [], []
            for i in pick:
                img, caps = train[i]
                images.append(transforms.augment_image(img, size, d.crop_scale_min, rng,
                                                       interpolation=transforms.image_view(d)[0])
                              if d.augment else transforms.resize_image(img, size, *transforms.image_view(d)))
                captions.append(caps[int(rng.integers(len(caps)))])
            batch = {"image": torch.from_numpy(np.stack(images)), "tokens": torch.from_numpy(tokenizer.encode_batch(captions))}
            train_step(objective, opt, sched, batch, 0, cfg.train)
            steps += 1
        metrics = validate(model, tokenizer, val, torch.device("cpu"), loss=loss)
        if time.time() - t0 <= budget:
            vals.append((time.time() - t0, epoch, metrics["rsum"]))
    return {"steps": steps, "vals": vals, "firsts": firsts, "per_epoch": per_epoch, "took": "", "end": time.time() - t0}


def run_small(recipe: Path, data: Path, epochs: int, budget: float) -> dict:
    """C: the small plain loop, in a process of its own (torch's threads and memory start afresh)."""
    import json as _json

    code = (f"import sys, json; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'bench')!r}]\n"
            "from pathlib import Path; import small_loop\n"
            f"r = small_loop.run(Path({str(data)!r}), {image_size(recipe)}, {budget})\n"
            "r['firsts'] = {str(k): v for k, v in r['firsts'].items()}; print('RESULT', json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    r = _json.loads(out.split("RESULT ", 1)[1])
    r["firsts"] = {int(k): v for k, v in r["firsts"].items()}
    return r


def image_size(recipe: Path) -> int:
    from pipeline.config import RunJobConfig, load_config

    return load_config(RunJobConfig, recipe, []).data.image_size


def rsum_at(vals: list, t: float) -> float:
    """The last validation finished within t seconds of the start (0 before the first)."""
    done = [v for (now, _, v) in vals if now <= t]
    return done[-1] if done else 0.0


def summarise(r: dict, batch: int, budgets: list[float]) -> dict:
    f = sorted(r["firsts"].items())
    batch = r.get("batch", batch)
    between = [r["per_epoch"] * batch / (t2 - t1) for (_, t1), (_, t2) in zip(f, f[1:])]
    return {"whole": r["steps"] * batch / min(max(budgets), r["end"]),
            "between": statistics.median(between) if between else float("nan"),
            **{f"rsum@{t:g}": rsum_at(r["vals"], t) for t in budgets},
            "epochs": r["vals"][-1][1] if r["vals"] else 0,
            "first_step": f[0][1] if f else float("nan"), "took": r["took"], "start": r.get("start", "")}


RUNNERS = {"pipeline": run_pipeline, "same-recipe": run_plain, "small-loop": run_small}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--reference", choices=("both", "same-recipe", "small-loop", "none"), default="both",
                    help="which plain loop(s) run beside the pipeline (none: the pipeline alone, to try recipes)")
    ap.add_argument("--budgets", default="120,300,600",
                    help="wall-clock seconds at which rsum is read; each run lasts the largest")
    ap.add_argument("--epochs", default="14",
                    help="train.epochs of A and B (their LR schedule's length): one value, read at every budget "
                         "off one run; or one per budget (e.g. 10,33,70): then A and B run once per budget, each "
                         "with its own schedule, as a user fitting the recipe to the budget would")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--dataset", choices=("photos", "synthetic"), default="photos")
    ap.add_argument("--train", type=int, default=4000, help="training images, written once")
    ap.add_argument("--data", type=Path, default=None, help="where the data is written (default: a temp folder)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for A and B, as `pipeline train --set` takes it")
    args = ap.parse_args()
    EXTRA.extend(args.set)
    budgets = sorted(float(b) for b in args.budgets.split(","))
    data = args.data or Path(tempfile.gettempdir()) / f"tta_{args.dataset}_{args.train}"
    if not (data / "train").exists():
        if args.dataset == "photos":
            from bench.photo_crops import write_dataset as write_photos

            write_photos(data, args.train, 500, size=image_size(args.recipe))
        else:  # a seed the demo does not use: scenes the recipe was not tuned on
            from pipeline.data.formats.synthetic import write_dataset

            write_dataset(data, args.train, 500, seed=11)
    from pipeline.config import RunJobConfig, load_config

    epochs = [int(e) for e in args.epochs.split(",")]
    if len(epochs) not in (1, len(budgets)):
        ap.error(f"--epochs: give one value or one per budget ({len(budgets)})")
    batch = load_config(RunJobConfig, args.recipe, overrides(data, epochs[-1], data)).train.batch_size
    names = ["pipeline"] + {"both": ["same-recipe", "small-loop"], "none": []}.get(args.reference, [args.reference])
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:  # A B C A B C
            s = measure(name, args.recipe, data, epochs, budgets, batch)
            results[name].append(s)
            at = ", ".join(f"{s[f'rsum@{t:g}']:.1f} at {t:g} s" for t in budgets)
            print(f"round {r + 1} {name:<11}: rsum {at}; {s['whole']:6.1f} samples/s whole run, "
                  f"{s['between']:6.1f} between epoch starts, first step at {s['first_step']:.1f} s, "
                  f"{s['epochs']} epochs validated" + (f"\n  {s['start']}" if s["start"] else "")
                  + (f"\n  last epoch's time, {s['took']}" if s["took"] else ""), flush=True)
    print(report(results, budgets))
    if "same-recipe" in results:
        print(held_back(results, max(budgets)))


def measure(name: str, recipe: Path, data: Path, epochs: list[int], budgets: list[float], batch: int) -> dict:
    """One runner's figures: one run at the largest budget, read at each; or, with an epoch count per budget
    (A and B, whose schedule has a length), a run per budget, each read at its own, the rates from the last."""
    if len(epochs) == 1 or name == "small-loop":
        return summarise(RUNNERS[name](recipe, data, epochs[-1], max(budgets)), batch, budgets)
    runs = [summarise(RUNNERS[name](recipe, data, e, b), batch, budgets) for e, b in zip(epochs, budgets)]
    return {**runs[-1], **{f"rsum@{b:g}": r[f"rsum@{b:g}"] for r, b in zip(runs, budgets)},
            "epochs": "/".join(str(r["epochs"]) for r in runs)}


def report(results: dict, budgets: list[float]) -> str:
    """Medians over the rounds, one row a runner, and the pipeline's ratios against each loop."""
    keys = [f"rsum@{t:g}" for t in budgets] + ["whole", "between"]
    med = {n: {k: statistics.median(x[k] for x in rs) for k in keys} for n, rs in results.items()}
    lines = [f"\nmedians over {len(results['pipeline'])} round(s)", f"{'':<12}" + "".join(f"{k:>11}" for k in keys)]
    lines += [f"{n:<12}" + "".join(f"{m[k]:11.1f}" for k in keys) for n, m in med.items()]
    a = med["pipeline"]
    for n, b in med.items():
        if n != "pipeline":
            at = ", ".join(f"{a[f'rsum@{t:g}'] - b[f'rsum@{t:g}']:+.1f} at {t:g} s" for t in budgets)
            lines.append(f"pipeline against {n}: rsum {at} (target: none below 0); whole-run samples/s "
                         f"{a['whole'] / b['whole']:.2f}x" + (" (target 0.9)" if n == "same-recipe" else ""))
    return "\n".join(lines)


def held_back(results: dict, budget: float) -> str:
    """Which phase holds the whole-run ratio back: the start (time to the first step) against the steady rate
    (between epoch starts), each as the whole-run ratio the pipeline would reach were the other the loop's."""
    med = lambda name, k: statistics.median(x[k] for x in results[name])  # noqa: E731
    first_a, first_b = med("pipeline", "first_step"), med("same-recipe", "first_step")
    rate_a, rate_b, whole_b = med("pipeline", "between"), med("same-recipe", "between"), med("same-recipe", "whole")
    steady_only = rate_a * (budget - first_b) / budget / whole_b  # the pipeline starting as fast as the loop
    start_only = rate_b * (budget - first_a) / budget / whole_b  # the pipeline stepping as fast as the loop
    took = [x["took"] for x in results["pipeline"] if x["took"]]
    return (f"held back by: the start (first step at {first_a:.1f} s against {first_b:.1f} s; with the loop's steady "
            f"rate it alone would give {start_only:.2f}x) and the steady rate ({rate_a / rate_b:.2f}x the loop's "
            f"between epoch starts; alone {steady_only:.2f}x)" + (f"; pipeline's last epoch: {took[-1]}" if took else ""))


if __name__ == "__main__":
    main()
