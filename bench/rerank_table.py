"""The README's re-ranker rows: one `pipeline rerank` per fusion on a trained demo checkpoint, each evaluated on
the demo's validation set with `pipeline evaluate --rerank`: R@1 both ways before -> after, and the cost.

    .venv/bin/python bench/rerank_table.py --checkpoint runs/demo                 # every fusion, rerank.* defaults
    .venv/bin/python bench/rerank_table.py --checkpoint runs/demo --fusions low_rank concat --set rerank.k=50

Each fusion's head and report go to <checkpoint run>/rerank-<fusion>/ (trained again on every call).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.registry import RERANK_FUSIONS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a trained two-tower run or checkpoint")
    ap.add_argument("--train", default="data/demo/train")
    ap.add_argument("--val", default="data/demo/val")
    ap.add_argument("--fusions", nargs="+", default=list(RERANK_FUSIONS), choices=list(RERANK_FUSIONS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    sets = [a for o in args.overrides for a in ("--set", o)]
    rows = []
    for fusion in args.fusions:
        out = Path(args.checkpoint) / f"rerank-{fusion}"
        t0 = time.time()
        for cmd in (["rerank", "--checkpoint", args.checkpoint, "--data", args.train, "--out", str(out / "head"),
                     "--set", f"rerank.fusion={fusion}", *sets],
                    ["evaluate", "--checkpoint", args.checkpoint, "--data", args.val, "--out", str(out / "report"),
                     "--rerank", str(out / "head"), "--set", "eval.examples=0", *sets]):
            proc = subprocess.run([sys.executable, "-m", "pipeline", *cmd], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"pipeline {cmd[0]} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
        seconds = time.time() - t0
        rr = json.loads((out / "report" / "report.json").read_text())["rerank"]
        rows.append((fusion, rr, seconds))
        print(f"{fusion}: t2i R@1 {rr['t2i']['before']['R@1']:.1f} -> {rr['t2i']['after']['R@1']:.1f}, "
              f"i2t R@1 {rr['i2t']['before']['R@1']:.1f} -> {rr['i2t']['after']['R@1']:.1f} ({seconds:.0f} s)",
              flush=True)
    print("\n| fusion | i2t R@1 before → after | t2i R@1 before → after | t2i R@5 before → after | "
          "ms per query | train + evaluate |\n|---|---|---|---|---|---|")
    for fusion, rr, seconds in rows:
        f = lambda d, k: f"{rr[d]['before'][k]:.1f} → {rr[d]['after'][k]:.1f}"  # noqa: E731
        print(f"| {fusion} | {f('i2t', 'R@1')} | {f('t2i', 'R@1')} | {f('t2i', 'R@5')} | {rr['ms_per_query']:.3f} | "
              f"{seconds:.0f} s |")


if __name__ == "__main__":
    main()
