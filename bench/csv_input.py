"""Reading a CSV of image files against reading the same samples as WebDataset shards, and against what an
OpenCLIP user runs on the CSV instead: core-milliseconds a training sample, on the same cores, alternating.

    .venv/bin/python bench/csv_input.py                 # 2000 real-photo crops, 256 px JPEG q95, S=224
    .venv/bin/python bench/csv_input.py --n 1000 --size 64 --rounds 3

The data are `bench/photo_crops.py`'s crops (img2dataset-shaped: 256 px, quality 95), written once as files plus
`train.csv` (OpenCLIP's layout: `filepath`, `title`), and once as tar shards by `pipeline data convert-csv`.

(A) the pipeline over the CSV: one training worker's read tasks (`ingest.train_epoch_source`: read, window
    shuffle, JPEG decode, random resized crop, brightness, tokenising) run in this process;
(B) the same read tasks over the shards `data convert-csv` wrote from it;
(C) OpenCLIP's `CsvDataset` as its training script builds it (pandas `read_csv`, `Image.open(path)`, torchvision's
    RandomResizedCrop(S, scale (0.8, 1), bicubic)), the same tokenizer, iterated by a torch DataLoader in this
    process (num_workers=0: per core, as A and B are measured).
Each is timed by this process's CPU time (its threads included), A B C A B C ..., and the median of the rounds
reported. No Ray cluster is started: the read tasks run as plain calls.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import RunJobConfig, TrainJobConfig, load_config, narrow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_data(out: Path, n: int, side: int) -> tuple[Path, list[str]]:
    """n crops as out/files/NNNNNN.jpg + out/files/train.csv, and as out/shards/*.tar (via data convert-csv)."""
    from bench.photo_crops import sources, write_split
    from pipeline.data.formats.csv_shards import convert_csv

    write_split(out / "tars", sources(), n, seed=0, size=side, quality=95, shard_size=1000)
    files = out / "files"
    files.mkdir(parents=True)
    rows = []
    for tar_path in sorted((out / "tars").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    (files / m.name).write_bytes(tar.extractfile(m).read())
                elif m.name.endswith(".txt"):
                    rows.append([m.name[:-4] + ".jpg", tar.extractfile(m).read().decode()])
    with (files / "train.csv").open("w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([["filepath", "title"], *rows])
    convert_csv(str(files / "train.csv"), str(out / "shards"), shard_size=250)
    return files / "train.csv", sorted(str(p) for p in (out / "shards").glob("*.tar"))


def pipeline_reads(paths: list[str], cfg, tokenizer) -> float:
    """CPU seconds of one worker's read tasks over `paths` for a whole epoch, run here."""
    from pipeline.data import ingest
    from pipeline.data.epoch.plan import choose_layout, worker_share

    layout = choose_layout(paths, None, 1, cfg.data.readers_per_worker, cfg.train.seed)
    share = worker_share(paths, None, 1, 0, layout, cfg.train.seed, 1, None)
    tasks = ingest.train_epoch_source(share, paths, tokenizer, cfg.data, cfg.train.seed, 1).get_read_tasks(1)
    t0 = time.process_time()
    for task in tasks:
        for _ in task():
            pass
    return time.process_time() - t0


class OpenClipCsv(torch.utils.data.Dataset):
    """OpenCLIP's `CsvDataset` (open_clip_train/data.py), with the recipe's tokenizer."""

    def __init__(self, path: Path, size: int, tokenizer):
        import pandas as pd
        from torchvision import transforms as T

        df = pd.read_csv(path, sep="\t")
        self.images = [str(path.parent / p) for p in df["filepath"].tolist()]
        self.captions = df["title"].tolist()
        self.tokenizer = tokenizer
        self.transform = T.Compose([T.RandomResizedCrop(size, scale=(0.8, 1.0),
                                                        interpolation=T.InterpolationMode.BICUBIC),
                                    T.PILToTensor()])

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        from PIL import Image

        image = self.transform(Image.open(self.images[i]).convert("RGB"))
        return image, torch.from_numpy(self.tokenizer.encode_batch([str(self.captions[i])])[0])


def open_clip_reads(path: Path, size: int, tokenizer) -> float:
    t0 = time.process_time()
    for _ in torch.utils.data.DataLoader(OpenClipCsv(path, size, tokenizer), batch_size=128, shuffle=True):
        pass
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="crops written (default 2000)")
    ap.add_argument("--side", type=int, default=256, help="side of the stored JPEGs (default 256)")
    ap.add_argument("--size", type=int, default=224, help="training view S (default 224)")
    ap.add_argument("--rounds", type=int, default=3, help="A B C rounds (default 3)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from pipeline.data import ingest

    out = Path(tempfile.mkdtemp()) / "csv-bench"
    table, shards = write_data(out, args.n, args.side)
    cfg = narrow(load_config(RunJobConfig, ROOT / "configs" / "demo.yaml",
                             {"data.image_size": args.size, "data.train": str(table), "data.val": str(table)}),
                 TrainJobConfig)
    tok = ingest.scan_training_data([str(table)], cfg.data).tokenizer
    times: dict[str, list[float]] = {"A": [], "B": [], "C": []}
    for r in range(args.rounds):
        times["A"].append(pipeline_reads([str(table)], cfg, tok))
        times["B"].append(pipeline_reads(shards, cfg, tok))
        times["C"].append(open_clip_reads(table, args.size, tok))
        print(f"round {r + 1}: " + ", ".join(f"{k} {1000 * v[-1] / args.n:.2f} core-ms a sample" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    ms = {k: 1000 * v / args.n for k, v in med.items()}
    print(f"\n{args.n} crops of {args.side} px (JPEG q95) -> S={args.size}, median of {args.rounds} rounds:\n"
          f"| (A) pipeline, CSV | (B) pipeline, shards from convert-csv | (C) OpenCLIP CsvDataset | A/B | A/C |\n"
          f"|---|---|---|---|---|\n| {ms['A']:.2f} ms | {ms['B']:.2f} ms | {ms['C']:.2f} ms | "
          f"{med['A'] / med['B']:.2f} | {med['A'] / med['C']:.2f} |\n(core-milliseconds a sample; below 1: A costs less)")


if __name__ == "__main__":
    main()
