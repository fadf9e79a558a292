"""Time from `pipeline train` starting to its first training step, and the driver's peak memory, against the
number of training samples: 10^4, 10^5 and 10^6 tiny samples (one 8x8 JPEG reused, short captions) in 100
WebDataset shards with img2dataset's *_stats.json beside each.

    .venv/bin/python bench/startup.py                 # sizes 1e4 1e5 1e6, 2 rounds
    .venv/bin/python bench/startup.py --sizes 10000 100000 --rounds 3

Two starts per size, alternating (A B A B) so the machine's noise shows:
  capped  the vocabulary is learnt from data.vocab_scan_samples=10000 captions; counts come from the stats files
  full    data.vocab_scan_samples=0: every caption is read before training, as every start did before
The target: with counts from stats files, the 10^6 capped start is at most 1.2x the 10^4 capped start.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "a the red green blue small large square circle left right above below of next to bright dark".split()
FIRST_STEP = "[train] epoch 1/1 step 1/"


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, format="JPEG")
    return buf.getvalue()


def _write_shard(job: tuple[str, int, int, int]) -> None:
    out, shard, start, n = job
    import random

    rng, image = random.Random(shard), _jpeg()
    path = Path(out) / f"{shard:05d}.tar"
    with tarfile.open(path.with_suffix(".tmp"), "w") as tar:
        for i in range(start, start + n):
            key = f"{i:09d}"
            caption = " ".join(rng.choice(WORDS) for _ in range(6)).encode()
            for ext, data in (("jpg", image), ("txt", caption), ("json", json.dumps({"key": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.with_suffix(".tmp").replace(path)
    stats = {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0}
    (Path(out) / f"{shard:05d}_stats.json").write_text(json.dumps(stats))


def generate(out: Path, samples: int, shards: int) -> float:
    """Write the dataset unless it is there already. -> seconds taken (0 when reused)."""
    done = out / ".done"
    if done.exists() and done.read_text() == f"{samples} {shards}":
        return 0.0
    out.mkdir(parents=True, exist_ok=True)
    t0, per = time.time(), samples // shards
    with Pool(2) as pool:
        pool.map(_write_shard, [(str(out), s, s * per, per) for s in range(shards)])
    done.write_text(f"{samples} {shards}")
    return time.time() - t0


MILESTONES = {"planned": ("training samples (", "resampled epochs of"), "untrained val": ("untrained model",)}


def start_once(train: Path, val: Path, cap: int) -> tuple[float, float]:
    """-> (seconds to the first training step, the driver's peak resident memory in MB); prints when the
    driver had planned the data and when rank 0 had validated the untrained model (the phases before)."""
    with tempfile.TemporaryDirectory() as runs:
        cmd = [sys.executable, "-m", "pipeline", "train", "--config", str(ROOT / "configs" / "smoke.yaml"),
               "--set", f"data.train={train}", "--set", f"data.val={val}", "--set", f"run.storage_path={runs}",
               "--set", "data.synth.enabled=false", "--set", "train.epochs=1", "--set", "data.image_size=16",
               "--set", f"data.vocab_scan_samples={cap}", "--set", "train.log_every=1000"]
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        peak, seen, at = 0.0, [], {}
        try:
            for line in proc.stdout:
                seen.append(line)
                for name, marks in MILESTONES.items():
                    if name not in at and any(m in line for m in marks):
                        at[name] = time.time() - t0
                if FIRST_STEP in line:
                    took = time.time() - t0
                    print("  " + ", ".join(f"{k} at {v:.1f} s" for k, v in at.items()) + f", first step at {took:.1f} s",
                          flush=True)
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                    peak = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1]) / 1024
                    return took, peak
            raise RuntimeError("no training step:\n" + "".join(seen[-30:]))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=["capped", "full"], choices=["capped", "full"])
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "startup_bench")
    args = ap.parse_args()
    val = args.data / "val"
    generate(val, 256, 2)
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for n in args.sizes:
        took = generate(args.data / f"{n}", n, args.shards)
        if took:
            print(f"generated {n} samples in {args.shards} shards in {took:.0f} s", flush=True)
    for r in range(args.rounds):
        for n in args.sizes:
            for kind, cap in [(k, c) for k, c in (("capped", 10_000), ("full", 0)) if k in args.kinds]:  # A B A B
                t, mem = start_once(args.data / f"{n}", val, cap)
                results.setdefault((n, kind), []).append((t, mem))
                print(f"round {r + 1}: {n:>9} samples {kind:<6} first step after {t:6.1f} s, driver peak "
                      f"{mem:6.0f} MB", flush=True)
    print(f"\n{'samples':>9}  {'start':<6}  {'min s':>6}  {'median s':>8}  {'driver MB':>9}  vs 10^4")
    base = {k: min(t for t, _ in results[(args.sizes[0], k)]) for k in args.kinds}
    for (n, kind), runs in sorted(results.items()):
        ts = [t for t, _ in runs]
        print(f"{n:>9}  {kind:<6}  {min(ts):6.1f}  {statistics.median(ts):8.1f}  "
              f"{max(m for _, m in runs):9.0f}  {min(ts) / base[kind]:.2f}x")


if __name__ == "__main__":
    main()
