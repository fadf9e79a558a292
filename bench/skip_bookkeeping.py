"""What counting skipped samples costs per 10^6 training samples with 30% of them bad, in the 128-row batches the
training pipeline prepares.

    .venv/bin/python bench/skip_bookkeeping.py [--samples 1000000] [--bad 0.3] [--rounds 3]

A  the old way: every batch's skipped keys sent to one SkipCounter actor (`SkipLog.record`),
   which keeps every key in a set; the driver then reads them all back
B  the training pipeline's way: a `SkipTally` per batch (counts + the first few example keys), serialised into
   the batch's tally row (JSON), parsed and merged by the batcher; no actor
Alternating A B A B; prints seconds per 10^6 samples, the bookkeeping's memory and the ratio.
"""
from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.skips import SkipTally  # noqa: E402

REASONS = ("not_downloaded", "corrupt_image", "missing_caption")


def batches(samples: int, bad: float, size: int = 128):
    """{reason: keys} per prepared batch, `bad` of the rows skipped."""
    n_bad = round(size * bad)
    for b in range(samples // size):
        keys = [f"{b // 100:05d}.tar/{b * size + i:09d}" for i in range(n_bad)]
        yield {r: keys[i::len(REASONS)] for i, r in enumerate(REASONS)}


def old_way(samples: int, bad: float) -> tuple[float, int]:
    import ray

    from pipeline.data.skips import SkipLog

    log = SkipLog.start()  # what evaluation passes still use
    t0 = time.perf_counter()
    for skips in batches(samples, bad):
        log.record("train", skips)
    kept = log.read()
    took = time.perf_counter() - t0
    size = len(pickle.dumps(kept))
    ray.kill(log.actor)
    return took, size


def new_way(samples: int, bad: float) -> tuple[float, int]:
    t0 = time.perf_counter()
    total = SkipTally()
    for skips in batches(samples, bad):
        row = json.dumps({"first": 0, "last": 0, **SkipTally.from_keys(skips).to_dict()})  # in the read task
        total.merge(SkipTally.from_dict(json.loads(row)))  # in the batcher
    took = time.perf_counter() - t0
    return took, len(pickle.dumps(total.to_dict()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--bad", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=4, logging_level="ERROR", log_to_driver=False)
    per = 1_000_000 / args.samples
    a, b = [], []
    for r in range(args.rounds):
        ta, sa = old_way(args.samples, args.bad)
        tb, sb = new_way(args.samples, args.bad)
        a.append(ta * per)
        b.append(tb * per)
        print(f"round {r + 1}: actor {ta * per:7.2f} s ({sa / 2**20:6.1f} MB kept)   tally {tb * per:6.3f} s "
              f"({sb / 1024:5.1f} KB kept)   ratio {ta / tb:6.1f}x", flush=True)
    print(f"\nper 10^6 samples, {100 * args.bad:.0f}% bad: actor min {min(a):.2f} s median {statistics.median(a):.2f} s; "
          f"tally min {min(b):.3f} s median {statistics.median(b):.3f} s; actor/tally (medians) "
          f"{statistics.median(a) / statistics.median(b):.0f}x")


if __name__ == "__main__":
    main()
