"""Train the demo config once per loss and print the rsum each reached (the README's loss table).

    .venv/bin/python bench/loss_table.py                   # all losses, configs/demo.yaml
    .venv/bin/python bench/loss_table.py --losses infonce vse --set train.epochs=3

Each loss runs as `pipeline run --set loss.name=NAME --set run.name=loss-NAME`; a run that already finished
is reused (same run name), so an interrupted table resumes. The untrained rsum of each run is printed beside
its trained one as the baseline measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.losses import LOSSES  # noqa: E402

# What a loss needs beyond the demo recipe: DCCA's covariances need a global batch above model.embed_dim (128).
NEEDS = {"dcca": ["train.batch_size=256"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--storage", default="runs")
    args = ap.parse_args()
    rows = []
    for name in args.losses:
        run = f"loss-{name}"
        cmd = [sys.executable, "-m", "pipeline", "run", "--config", args.config, "--set", f"loss.name={name}",
               "--set", f"run.name={run}", "--set", f"run.storage_path={args.storage}"]
        for o in [*NEEDS.get(name, []), *args.overrides]:
            cmd += ["--set", o]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.time() - t0
        report = Path(args.storage) / run / "report" / "report.json"
        if proc.returncode != 0 or not report.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            rows.append((name, None, None, None, None, seconds, tail[0]))
            print(f"{name}: failed: {tail[0]}", flush=True)
            continue
        r = json.loads(report.read_text())
        rows.append((name, r["rsum"], r["i2t"]["R@1"], r["t2i"]["R@1"], r.get("untrained_rsum"), seconds, ""))
        print(f"{name}: rsum {r['rsum']:.1f} ({seconds:.0f} s)", flush=True)
    print("\n| loss | rsum | i2t R@1 | t2i R@1 | untrained rsum | wall s |")
    print("|---|---|---|---|---|---|")
    for name, rsum, i2t, t2i, untrained, seconds, err in rows:
        if rsum is None:
            print(f"| {name} | failed: {err} | | | | {seconds:.0f} |")
        else:
            print(f"| {name} | {rsum:.1f} | {i2t:.1f} | {t2i:.1f} | {untrained or 0:.1f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
