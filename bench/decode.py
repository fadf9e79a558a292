"""JPEG decode for training: PIL with `draft` (today's path, `transforms.decode_image`), simplejpeg
(libjpeg-turbo, DCT-domain downscaling to the smallest scale keeping both sides >= S) and torchvision's
`decode_jpeg` (full size, then the same PIL resize), at S = 64, 224 and 384 px. Each method ends where the
training transform starts: an RGB PIL image with both sides >= S.

    .venv/bin/pip install -e '.[bench]'               # simplejpeg
    .venv/bin/python bench/decode.py                  # 3 rounds, A B C A B C
    .venv/bin/python bench/decode.py --rounds 5 --sizes 224

Images: scikit-image's real photographs (no download), each scaled so its long side is --side px (640, about
COCO's) and saved as JPEG quality 90, 4:2:0: the shape of a crawled or COCO shard. Rates are images/s on one
core (one process, one thread), best of the rounds and median; ratios against PIL.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def corpus(side: int) -> list[bytes]:
    from pipeline.data.formats.photos import PHOTOS, load_photo

    out = []
    for name, _ in PHOTOS:
        img = Image.fromarray(load_photo(name)).convert("RGB")
        scale = side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pil(data: bytes, s: int) -> Image.Image:
    from pipeline.data.transforms import decode_image

    return decode_image(data, s)


def simplejpeg_decode(data: bytes, s: int) -> Image.Image:
    import simplejpeg

    return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=s, min_width=s))


def simplejpeg_fast(data: bytes, s: int) -> Image.Image:
    """With libjpeg-turbo's fast integer DCT and plain upsampling, which Pillow's `draft` also turns on."""
    import simplejpeg

    return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=s, min_width=s, fastdct=True,
                                                  fastupsample=True))


def torchvision_decode(data: bytes, s: int) -> Image.Image:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    t = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)  # (3, H, W)
    return Image.fromarray(t.permute(1, 2, 0).numpy())


METHODS = {"pil": pil, "simplejpeg": simplejpeg_decode, "simplejpeg_fast": simplejpeg_fast,
           "torchvision": torchvision_decode}


def rate(fn, images: list[bytes], s: int, seconds: float = 1.5) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for data in images:
            img = fn(data, s)
            assert min(img.size) >= min(s, min(Image.open(io.BytesIO(data)).size)), (img.size, s)
        n += len(images)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224, 384])
    ap.add_argument("--side", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import torch

    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        sys.exit("bench/decode.py needs simplejpeg: .venv/bin/pip install -e '.[bench]'")
    torch.set_num_threads(1)
    images = corpus(args.side)
    sizes = [Image.open(io.BytesIO(d)).size for d in images]
    print(f"{len(images)} photos, {np.mean([len(d) for d in images]) / 1024:.0f} KB mean, long side {args.side}, "
          f"short sides {min(min(z) for z in sizes)}-{max(min(z) for z in sizes)} px")
    for s in args.sizes:
        got: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in range(args.rounds):
            for m, fn in METHODS.items():  # A B C A B C
                got[m].append(rate(fn, images, s))
        base = statistics.median(got["pil"])
        for m, rs in got.items():
            print(f"S={s:>3} {m:<15} best {max(rs):7.0f}/s  median {statistics.median(rs):7.0f}/s  "
                  f"x pil {statistics.median(rs) / base:.2f}", flush=True)


if __name__ == "__main__":
    main()
