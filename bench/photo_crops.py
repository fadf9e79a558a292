"""A real-image caption dataset for the benchmarks: square crops cut from the photographs the environment ships
(scikit-image's, scikit-learn's and matplotlib's), each with five captions derived from its crop (what the photo
shows, how close the crop is, which part of the photo it is), written as img2dataset-style WebDataset shards.

The synthetic scenes are what the recipe was tuned on and every recipe saturates on them; these are real
pictures (textures, faces, text, microscope images, photo noise and JPEG artefacts) that the project has never
trained on. Telling the crops apart needs the photo's content and the crop's place and scale in it, so the
model must learn real image statistics; a caption names a photo, a zoom and a region, so some crops share a
caption's meaning and R@1 has a ceiling below 100, the same for every model it compares.

    .venv/bin/python bench/photo_crops.py /tmp/photo_crops --train 4000 --val 500 --size 64
    .venv/bin/python bench/photo_crops.py /tmp/photo_crops_256 --size 256     # img2dataset-shaped, q95

Deterministic: the same arguments write the same bytes. Train and val are different crops (the val seed differs).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.formats.photos import PHOTOS, load_photo  # noqa: E402
from pipeline.data.formats.writer import ShardWriter  # noqa: E402

# Photographs outside scikit-image: (loader, captions). Loaders return (H, W, 3) uint8 or raise.
EXTRA: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sklearn:china.jpg", ("an old chinese temple with a curved tiled roof behind a tree",
                           "a traditional chinese building under a blue sky with leaves in front")),
    ("sklearn:flower.jpg", ("a close up of a pink flower with a yellow centre",
                            "a pink dahlia in bloom in front of green leaves")),
    ("matplotlib:grace_hopper.jpg", ("a portrait of a woman in a navy uniform in front of a flag",
                                     "an old photo of an officer with short grey hair smiling slightly")),
)

# (name, crop side as a fraction of the photo's short side (range), regions: (name, synonyms, (cx, cy)))
ZOOMS = (
    ("whole", (0.85, 1.0), ("a photo of", "a picture of", "an image of")),
    ("half", (0.45, 0.6), ("a crop of", "part of", "a section of")),
    ("quarter", (0.25, 0.34), ("a close up of", "a small detail of", "a zoomed in view of")),
)
REGIONS = {
    "half": (("top left", "upper left"), ("top right", "upper right"), ("bottom left", "lower left"),
             ("bottom right", "lower right"), ("centre", "middle")),
    "quarter": tuple((f"{v} {h}", f"{v2} {h}") if (v, h) != ("middle", "centre") else ("centre", "middle")
                     for v, v2 in (("top", "upper"), ("middle", "middle"), ("bottom", "lower"))
                     for h in ("left", "centre", "right")),
}


def _grid(zoom: str) -> list[tuple[float, float]]:
    """Each region's centre, as fractions of the room the crop can move in (0 = left or top edge)."""
    if zoom == "half":
        return [(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)]
    return [(x, y) for y in (0, 0.5, 1) for x in (0, 0.5, 1)]


def load_source(name: str) -> np.ndarray:
    """A photograph by its name in PHOTOS (scikit-image) or EXTRA (`package:file`) -> (H, W, 3) uint8."""
    if ":" not in name:
        return load_photo(name)
    package, file = name.split(":", 1)
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return np.ascontiguousarray(load_sample_image(file)[:, :, :3])
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data(file) as f:
        return np.asarray(Image.open(f).convert("RGB"))


def sources() -> list[tuple[str, np.ndarray, tuple[str, ...]]]:
    """Every photograph this environment has: (name, pixels, captions); the missing ones are passed over."""
    out = []
    for name, captions in (*PHOTOS, *EXTRA):
        try:
            out.append((name, load_source(name), captions))
        except (ImportError, OSError, ValueError, AttributeError):
            continue
    return out


def crop_sample(photo: np.ndarray, captions: tuple[str, ...], rng: np.random.Generator, size: int):
    """One random crop of `photo` at `size` x `size` and its five captions, and what it shows."""
    zoom, scale, phrases = ZOOMS[int(rng.integers(len(ZOOMS)))]
    h, w = photo.shape[:2]
    side = max(8, int(min(h, w) * rng.uniform(*scale)))
    if zoom == "whole":
        region, names, (fx, fy) = "", ("",), (rng.uniform(), rng.uniform())
    else:
        i = int(rng.integers(len(REGIONS[zoom])))
        names, (gx, gy) = REGIONS[zoom][i], _grid(zoom)[i]
        region = names[0]
        jitter = 0.08 if zoom == "half" else 0.1  # keep a region's crops near its centre, apart from the next
        fx, fy = (float(np.clip(g + rng.uniform(-jitter, jitter), 0, 1)) for g in (gx, gy))
    x0, y0 = int(fx * (w - side)), int(fy * (h - side))
    pixels = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.BICUBIC)
    texts = set()
    while len(texts) < 5:
        what = captions[int(rng.integers(len(captions)))]
        how = phrases[int(rng.integers(len(phrases)))]
        where = names[int(rng.integers(len(names)))]
        texts.add(f"{how} {what}" if not where else f"{how} the {where} of {what}")
    return pixels, sorted(texts), {"zoom": zoom, "region": region, "box": [x0, y0, side, side]}


def write_split(out: Path, photos, n: int, seed: int, size: int, quality: int, shard_size: int) -> int:
    """n crops, photos drawn in turn with the split's seed, as `out/00000.tar`, ... -> samples written."""
    rng = np.random.default_rng(seed)
    with ShardWriter(out, fmt="webdataset", shard_size=shard_size) as writer:
        for i in range(n):
            name, photo, captions = photos[int(rng.integers(len(photos)))]
            pixels, texts, what = crop_sample(photo, captions, rng, size)
            buf = io.BytesIO()
            pixels.save(buf, format="JPEG", quality=quality)
            writer.write(buf.getvalue(), "jpg", texts, {"source": name, "width": size, "height": size, **what})
        return writer.count


def write_dataset(out: str | Path, n_train: int = 4000, n_val: int = 500, size: int = 64, quality: int = 95,
                  seed: int = 0, shard_size: int = 1000) -> dict:
    """`out/train/*.tar` and `out/val/*.tar`. -> {"train", "val", "photos"}."""
    photos = sources()
    if len(photos) < 2:
        raise RuntimeError("fewer than two photographs found: install scikit-image (and scikit-learn, matplotlib)")
    out = Path(out)
    return {"train": write_split(out / "train", photos, n_train, seed, size, quality, shard_size),
            "val": write_split(out / "val", photos, n_val, seed + 1, size, quality, shard_size),
            "photos": [p[0] for p in photos]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--size", type=int, default=64, help="side of the square crops written (px)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    done = write_dataset(args.out, args.train, args.val, args.size, args.quality, args.seed)
    print(f"{done['train']} train and {done['val']} val crops of {args.size} px from {len(done['photos'])} "
          f"photographs under {args.out}")


if __name__ == "__main__":
    main()
