"""A gallery built as shards in parallel Ray tasks against the same gallery built in one process, both from the
Parquet embeddings the index job reads, in one run.

    .venv/bin/python bench/sharded_index.py                          # 10^6 x 256, ivfpq, 1 vs 2 and 4 shards
    .venv/bin/python bench/sharded_index.py --n 200000 --shards 2 --type hnsw

Prints, per layout: build seconds (sample + quantizer training + adds + writes), recall@10 against exact search
on 1,000 held-out queries (merged over shards), QPS (shard-parallel: the slowest shard bounds it), and the
build-time ratio against the single-process build. Starts an embedded local Ray.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index import clustered  # noqa: E402  (bench/index.py: the same synthetic vectors)

from pipeline.index import embedding_passes as embed  # noqa: E402
from pipeline.index.sharded import build_gallery_indexes  # noqa: E402
from pipeline.index.faiss_indexes import IndexSpec  # noqa: E402


def write_parquet(directory: Path, x: np.ndarray, files: int) -> None:
    """x as `files` Parquet files with dense ids, the layout the embedding passes leave."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True)
    for n, (lo, hi) in enumerate(zip(*(lambda b: (b[:-1], b[1:]))(np.linspace(0, len(x), files + 1).astype(int)))):
        pq.write_table(pa.table({"id": np.arange(lo, hi), "key": [str(i) for i in range(lo, hi)],
                                 "vector": embed.vector_column(x[lo:hi])}), directory / f"part-{n:03d}.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--type", default="ivfpq", choices=["flat", "hnsw", "ivfpq"])
    ap.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    args = ap.parse_args()

    import os

    import ray

    from pipeline.cluster import local_cpus

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=local_cpus(), log_to_driver=False)
    spec = IndexSpec(type=args.type)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        write_parquet(out / embed.IMAGES, clustered(args.n, args.dim, seed=0), files=16)
        write_parquet(out / embed.CAPTIONS, clustered(1000, args.dim, seed=1), files=1)
        print(f"{args.n} x {args.dim} vectors written as Parquet in {time.perf_counter() - t0:.0f} s; "
              f"{os.cpu_count()} cores; index {args.type}")
        print(f"{'layout':>12} {'build s':>8} {'x single':>8} {'recall@10':>9} {'QPS':>8}")
        base = None
        for shards in [1, *args.shards]:
            rows = -(-args.n // shards)
            index, info = build_gallery_indexes(str(out), spec, shard_rows=rows, names=("images",))["images"]
            base = base or info["build_s"]
            print(f"{shards:>5} shard{'s' if shards > 1 else ' '} {info['build_s']:8.1f} "
                  f"{base / info['build_s']:8.2f} {info['recall@10_vs_exact']:9.3f} {info['qps']:8.0f}", flush=True)
            del index
            for f in out.glob("images.shard-*.faiss"):
                f.unlink()
    ray.shutdown()


if __name__ == "__main__":
    main()
