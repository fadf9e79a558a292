"""FAISS index types against exact search on clustered unit vectors, and the cost of the full metric
computation, each measured in one run.

    .venv/bin/python bench/index.py                       # 10^5 and 10^6 vectors of dimension 256
    .venv/bin/python bench/index.py --sizes 100000 --hnsw-max 100000
    .venv/bin/python bench/index.py --sizes 100000 --polysemous-ab 2   # ivfpq training, A/B (below)

Per size: build time (training included), queries per second on 1,000 held-out queries (k = 10, all cores),
recall@10 against exact search, and QPS as a multiple of exact search's. HNSW is built only up to --hnsw-max
vectors (its build at 10^6 x 256 takes far longer than the others on 2 cores). Then the contract metrics
(`metrics.retrieval_metrics`, chunked) for 5,000 images x 25,000 captions: time and peak memory, measured in a
fresh process so its resident-set high-water mark is the computation's.

--polysemous-ab R: the ivfpq build as the project makes it (A) against the same index with index_factory's
polysemous training left on (B: FAISS's default for 8-bit codes), alternating A B for R rounds on the same
vectors; prints each build's seconds, recall@10 and QPS, the medians, and B / A.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.index import faiss_indexes as indexes  # noqa: E402

METRIC_CODE = """
import sys, time, torch
sys.path.insert(0, {root!r})
from pipeline.metrics import retrieval_metrics

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

g = torch.Generator().manual_seed(0)
img = torch.nn.functional.normalize(torch.randn(5000, 256, generator=g), dim=1)
owner = torch.arange(5000).repeat_interleave(5)
txt = torch.nn.functional.normalize(img[owner] + torch.randn(25000, 256, generator=g), dim=1)
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current resident set
base = hwm_mb()
t0 = time.perf_counter()
m = retrieval_metrics(img, txt, owner, chunk={chunk})
dt = time.perf_counter() - t0
print(f"{{dt:.2f}} {{hwm_mb() - base:.0f}} {{hwm_mb():.0f}} {{m['rsum']:.1f}}")
"""


def clustered(n: int, d: int, seed: int, centres: int = 1000, chunk: int = 200_000) -> np.ndarray:
    """Unit vectors around `centres` random directions (the shape real embeddings have), in chunks."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(12345).standard_normal((centres, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        x = c[rng.integers(0, centres, hi - lo)] + 0.7 * rng.standard_normal((hi - lo, d)).astype(np.float32)
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def bench_size(n: int, d: int, hnsw_max: int) -> list[dict]:
    x, q = clustered(n, d, seed=0), clustered(1000, d, seed=1)
    rows = []
    exact_qps = None
    for kind in ("flat", "ivfpq", "hnsw"):
        if kind == "hnsw" and n > hnsw_max:
            rows.append({"n": n, "type": kind, "skipped": True})
            continue
        spec = indexes.IndexSpec(type=kind)
        index, build_s = indexes.build_index(x, spec)
        m = indexes.measure(index, x, q, k=10)
        exact_qps = m["qps"] if kind == "flat" else exact_qps
        rows.append({"n": n, "type": kind, "build_s": build_s, "qps": m["qps"],
                     "recall": m["recall@10_vs_exact"], "x_exact": m["qps"] / exact_qps})
        print(f"n={n:>8} {kind:>6}: build {build_s:7.1f} s  {m['qps']:8.0f} q/s  recall@10 "
              f"{m['recall@10_vs_exact']:.3f}  {m['qps'] / exact_qps:5.1f}x exact", flush=True)
        del index
    return rows


def bench_polysemous(n: int, d: int, rounds: int) -> None:
    import faiss

    x, q = clustered(n, d, seed=0), clustered(1000, d, seed=1)
    spec = indexes.IndexSpec(type="ivfpq")
    build: dict[str, list[float]] = {"A": [], "B": []}
    for r in range(rounds):
        for arm in "AB":
            index = indexes.make_index(d, n, spec)
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = arm == "B"
            t0 = time.perf_counter()
            index.train(indexes.train_sample(x, spec.train_sample))
            index.add(x)
            build[arm].append(time.perf_counter() - t0)
            m = indexes.measure(index, x, q, k=10)
            print(f"round {r + 1} {arm} ({'polysemous training' if arm == 'B' else 'as built'}): build "
                  f"{build[arm][-1]:6.1f} s  recall@10 {m['recall@10_vs_exact']:.3f}  {m['qps']:6.0f} q/s", flush=True)
            del index
    med = {arm: float(np.median(v)) for arm, v in build.items()}
    print(f"\nivfpq build, n={n:,} d={d}: median {med['A']:.1f} s as built, {med['B']:.1f} s with polysemous "
          f"training (min {min(build['A']):.1f} / {min(build['B']):.1f}); B / A = {med['B'] / med['A']:.1f}x")


def bench_metrics(chunk: int) -> tuple[float, float, float]:
    code = METRIC_CODE.format(root=str(Path(__file__).resolve().parents[1]), chunk=chunk)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--hnsw-max", type=int, default=100_000, help="largest gallery HNSW is built for")
    ap.add_argument("--metrics-only", action="store_true", help="only the metric computation")
    ap.add_argument("--polysemous-ab", type=int, default=0, metavar="R",
                    help="only the ivfpq build against the same with polysemous training, R rounds A B")
    args = ap.parse_args()
    if args.polysemous_ab:
        for n in args.sizes:
            bench_polysemous(n, args.dim, args.polysemous_ab)
        return
    rows = []
    for n in ([] if args.metrics_only else args.sizes):
        t0 = time.perf_counter()
        rows += bench_size(n, args.dim, args.hnsw_max)
        print(f"  ({time.perf_counter() - t0:.0f} s for n={n})", flush=True)
    print("\n| vectors | index | build s | queries/s | recall@10 vs exact | QPS × exact |\n|---|---|---|---|---|---|")
    for r in rows:
        if r.get("skipped"):
            print(f"| {r['n']:,} | {r['type']} | not built (--hnsw-max) | | | |")
        else:
            print(f"| {r['n']:,} | {r['type']} | {r['build_s']:.1f} | {r['qps']:.0f} | {r['recall']:.3f} | "
                  f"{r['x_exact']:.1f} |")
    for chunk in (1024, 4096):
        dt, delta, peak = bench_metrics(chunk)
        print(f"\nmetrics, 5,000 images x 25,000 captions, chunk {chunk}: {dt:.2f} s, working memory {delta:.0f} MB "
              f"(high-water mark above the resident set with inputs loaded; {peak:.0f} MB resident at peak; "
              f"the full 5,000 x 25,000 score matrix would be {5000 * 25000 * 4 / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
