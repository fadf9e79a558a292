"""Training-step cost of every image and text tower, as a multiple of the demo's towers, measured in one run.

    .venv/bin/python bench/towers.py             # demo sizes: 128 images of 64 px, 128 captions of 24 tokens
    .venv/bin/python bench/towers.py --threads 2 --batch 64

One step is forward, a scalar loss and backward of the tower alone (no projection, no optimiser), on the
per-worker batch of the demo (global 256 over 2 workers) with one thread, as each of the demo's two CPU
workers has. The best of --repeats steps after one warm-up step is reported, because these machines are
shared and noisy; the ratio column divides by the baseline tower (small_cnn, gru) timed in the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import TextTowerConfig  # noqa: E402
from pipeline.models.image import IMAGE_ARCHS, build_image_tower  # noqa: E402
from pipeline.models.text import TEXT_ARCHS, build_text_tower  # noqa: E402

VOCAB = 64  # the demo's 41 words plus room; the text towers' cost hardly depends on it


def time_step(tower: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """Best wall time in seconds of forward + backward over `repeats` steps, after one warm-up step."""
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        tower(batch).float().pow(2).mean().backward()
        times.append(time.perf_counter() - t0)
        tower.zero_grad(set_to_none=True)
    return min(times[1:])


def image_rows(batch: int, size: int, repeats: int) -> list[tuple[str, float, float]]:
    x = torch.randn(batch, 3, size, size)  # (B,3,S,S)
    rows = []
    for arch in IMAGE_ARCHS:
        tower = build_image_tower(arch, image_size=size)
        rows.append((arch, sum(p.numel() for p in tower.parameters()) / 1e6, time_step(tower, x, repeats)))
        print(f"  image {arch}: {rows[-1][2]:.2f} s", file=sys.stderr, flush=True)
    return rows


def text_rows(batch: int, tokens: int, repeats: int) -> list[tuple[str, float, float]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (batch, tokens), generator=g)  # (B,L)
    lengths = torch.randint(tokens // 3, tokens + 1, (batch,), generator=g)
    ids[torch.arange(tokens)[None, :] >= lengths[:, None]] = 0  # padding, as real captions have
    rows = []
    for arch in TEXT_ARCHS:
        tower = build_text_tower(TextTowerConfig(arch=arch), VOCAB, max_tokens=tokens)
        rows.append((arch, sum(p.numel() for p in tower.parameters()) / 1e6, time_step(tower, ids, repeats)))
        print(f"  text {arch}: {rows[-1][2]:.3f} s", file=sys.stderr, flush=True)
    return rows


def format_table(kind: str, rows: list[tuple[str, float, float]], baseline: str) -> str:
    base = dict((name, t) for name, _, t in rows)[baseline]
    lines = [f"| {kind} tower | weights (M) | step (s) | × {baseline} |", "|---|---|---|---|"]
    lines += [f"| {name} | {params:.2f} | {t:.3f} | {t / base:.2f} |" for name, params, t in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128, help="images and captions per step (default 128)")
    ap.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    ap.add_argument("--tokens", type=int, default=24, help="caption length in tokens (default 24)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a demo worker)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per tower, best kept (default 3)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"batch {args.batch}, {args.threads} thread(s), best of {args.repeats} steps\n")
    print(format_table("image", image_rows(args.batch, args.image_size, args.repeats), "small_cnn") + "\n")
    print(format_table("text", text_rows(args.batch, args.tokens, args.repeats), "gru"))


if __name__ == "__main__":
    main()
