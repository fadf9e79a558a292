"""What the character-level text tower is for: retrieval from misspelt captions, beside the word-level GRU.

    .venv/bin/python bench/typos.py                      # configs/demo.yaml, 30% of caption words misspelt
    .venv/bin/python bench/typos.py --rate 0.5 --set train.epochs=3

Trains the demo recipe twice with `pipeline run` (a run of the same name that finished is reused): the default word
GRU, and `model.text.arch=char_cnn_rnn` with `data.tokenizer=char`. Writes a copy of the validation shards with a
share `--rate` of their caption words misspelt (`pipeline.data.formats.typos`: one swap, drop, doubling or replacement per
word, first and last letters kept), and evaluates both checkpoints on it with `pipeline evaluate`. Prints rsum and
R@1 both ways for each tower on the clean gallery (the run's own report) and on the misspelt one.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.formats.typos import misspell  # noqa: E402

TOWERS = {"gru": [], "char_cnn_rnn": ["model.text.arch=char_cnn_rnn", "data.tokenizer=char", "data.max_tokens=128"]}


def misspell_shards(src: Path, out: Path, rate: float, seed: int) -> None:
    """Copy the shards of `src` to `out` with their captions (.txt and the .json's caption list) misspelt."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for shard in sorted(src.glob("*.tar")):
        with tarfile.open(shard) as tin, tarfile.open(out / shard.name, "w", format=tarfile.USTAR_FORMAT) as tout:
            captions = {}
            for m in tin.getmembers():
                data = tin.extractfile(m).read()
                key, ext = m.name.rsplit(".", 1)
                if ext == "json":
                    meta = json.loads(data)
                    meta["captions"] = [misspell(c, rate, rng) for c in meta.get("captions", [])]
                    captions[key] = meta["captions"][0] if meta["captions"] else ""
                    meta["caption"] = captions[key]
                    data = json.dumps(meta).encode()
                elif ext == "txt":
                    data = misspell(data.decode(), rate, rng).encode()
                info = tarfile.TarInfo(m.name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tout.addfile(info, io.BytesIO(data))
    for stats in src.glob("*_stats.json"):
        shutil.copy(stats, out / stats.name)


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--rate", type=float, default=0.3, help="share of caption words (4+ letters) misspelt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--storage", default="runs")
    args = ap.parse_args()
    rows = []
    typo_dir = Path(args.storage) / f"typos-val-{args.rate}"
    for tower, extra in TOWERS.items():
        name = f"typos-{tower}"
        sets = [f"run.name={name}", f"run.storage_path={args.storage}", "cca.enabled=false", *extra, *args.overrides]
        run([sys.executable, "-m", "pipeline", "run", "--config", args.config, *[a for s in sets for a in ("--set", s)]])
        run_dir = Path(args.storage) / name
        clean = json.loads((run_dir / "report" / "report.json").read_text())
        if not typo_dir.exists():
            cfg = json.loads((run_dir / "config.json").read_text())
            misspell_shards(Path(cfg["data"]["val"]), typo_dir, args.rate, args.seed)
        out = run_dir / f"typos-{args.rate}"
        run([sys.executable, "-m", "pipeline", "evaluate", "--checkpoint", str(run_dir), "--data", str(typo_dir),
             "--out", str(out), "--set", "eval.examples=0"])
        typos = json.loads((out / "report.json").read_text())
        rows.append((tower, clean, typos))
        print(f"{tower}: rsum {clean['rsum']:.1f} clean, {typos['rsum']:.1f} misspelt", flush=True)
    print("\n| text tower | clean rsum | misspelt rsum | clean t2i R@1 | misspelt t2i R@1 | misspelt i2t R@1 |")
    print("|---|---|---|---|---|---|")
    for tower, c, t in rows:
        print(f"| {tower} | {c['rsum']:.1f} | {t['rsum']:.1f} | {c['t2i']['R@1']:.1f} | {t['t2i']['R@1']:.1f} | "
              f"{t['i2t']['R@1']:.1f} |")


if __name__ == "__main__":
    main()
