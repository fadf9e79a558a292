"""Synthetic compositional scenes written as img2dataset-style WebDataset shards (`pipeline data synth`).

Each image holds two objects, each with a colour, shape and size, one left of / above the other; each image
has several paraphrased captions. Word order matters: "a red circle left of a blue square" and "a blue square
left of a red circle" share every word, so a bag-of-words text tower cannot tell them apart. Deterministic by
seed: the same seed writes the same bytes.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
    "purple": (140, 50, 180), "orange": (245, 140, 30), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 0.12, "large": 0.22}  # half-extent as a fraction of the image side
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box"), "triangle": ("triangle",),
               "cross": ("cross", "plus sign")}
RELATIONS = ("left", "above")

# {a} is the object on the left (or on top), {b} the other one.
TEMPLATES = {
    "left": ("a {a} to the left of a {b}", "a {b} to the right of a {a}", "a {a} on the left and a {b} on the right",
             "there is a {a} left of a {b}", "a {b} with a {a} on its left", "on the left a {a}, on the right a {b}"),
    "above": ("a {a} above a {b}", "a {b} below a {a}", "a {a} on top and a {b} at the bottom",
              "there is a {a} over a {b}", "a {b} with a {a} above it", "at the top a {a}, at the bottom a {b}"),
}


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    size: str


def sample_scene(rng: np.random.Generator) -> tuple[Thing, Thing, str]:
    def thing() -> Thing:
        return Thing(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), str(rng.choice(list(SIZES))))

    a = thing()
    b = thing()
    while b == a:  # two identical objects make "left of" symmetric and the caption ambiguous
        b = thing()
    return a, b, str(rng.choice(RELATIONS))


def _draw(draw: ImageDraw.ImageDraw, t: Thing, cx: float, cy: float, side: int) -> None:
    r = SIZES[t.size] * side
    fill = COLOURS[t.colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    if t.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif t.shape == "square":
        draw.rectangle(box, fill=fill)
    elif t.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = r / 2.5
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)


def render(a: Thing, b: Thing, relation: str, rng: np.random.Generator, side: int = 64) -> Image.Image:
    """Object a left of (or above) object b, on a dim noisy background, positions jittered."""
    bg = rng.integers(20, 90, size=3)
    noise = rng.integers(-12, 13, size=(side, side, 3))
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    j = lambda: rng.uniform(-0.05, 0.05) * side  # noqa: E731 - small positional jitter
    along = (0.27 * side + j(), 0.73 * side + j())
    across = 0.5 * side + rng.uniform(-0.18, 0.18) * side
    if relation == "left":
        _draw(draw, a, along[0], across, side)
        _draw(draw, b, along[1], across, side)
    else:
        _draw(draw, a, across, along[0], side)
        _draw(draw, b, across, along[1], side)
    return img


def describe(t: Thing, rng: np.random.Generator) -> str:
    return f"{rng.choice(SIZE_WORDS[t.size])} {t.colour} {rng.choice(SHAPE_WORDS[t.shape])}"


def captions_for(a: Thing, b: Thing, relation: str, rng: np.random.Generator, n: int = 5) -> list[str]:
    templates = rng.permutation(TEMPLATES[relation])[:n]
    return [str(t).format(a=describe(a, rng), b=describe(b, rng)) for t in templates]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: same seed, same bytes
    tar.addfile(info, io.BytesIO(data))


def write_split(out: Path, n: int, seed: int, split_id: int, shard_size: int = 1000, side: int = 64) -> list[Path]:
    """Write n samples as out/00000.tar, 00001.tar, ... in img2dataset's layout; returns the shard paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range((n + shard_size - 1) // shard_size):
        path = out / f"{shard:05d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(shard * shard_size, min(n, (shard + 1) * shard_size)):
                rng = np.random.default_rng([seed, split_id, i])
                a, b, rel = sample_scene(rng)
                caps = captions_for(a, b, rel, rng)
                buf = io.BytesIO()
                render(a, b, rel, rng, side).save(buf, format="JPEG", quality=90)
                key = f"{shard:05d}{i % shard_size:04d}"
                meta = {"key": key, "caption": caps[0], "captions": caps, "status": "success",
                        "width": side, "height": side,
                        "scene": {"a": a.__dict__, "b": b.__dict__, "relation": rel}}
                _add(tar, f"{key}.jpg", buf.getvalue())
                _add(tar, f"{key}.txt", caps[0].encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        tmp.replace(path)  # a half-written shard never carries the final name
        n_shard = min(n, (shard + 1) * shard_size) - shard * shard_size
        stats = {"count": n_shard, "successes": n_shard, "failed_to_download": 0, "failed_to_resize": 0}
        (out / f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=4) + "\n")  # as img2dataset's
        paths.append(path)
    return paths


def write_dataset(out: str | Path, n_train: int, n_val: int, seed: int = 0) -> dict[str, list[Path]]:
    """out/train/*.tar and out/val/*.tar."""
    out = Path(out)
    return {"train": write_split(out / "train", n_train, seed, 0), "val": write_split(out / "val", n_val, seed, 1)}


def ensure_data(data_cfg) -> None:
    """Write the synthetic dataset when the data section asks for it, data.train / data.val are the synthetic
    default (`<data.synth.out>/train`, `/val`) and it is not there yet. A path of the user's own that matches
    nothing is their mistake: it fails (the caller's path check says so) and nothing is written."""
    import os

    from pipeline.errors import ConfigError
    from pipeline.data.ingest import expand_paths

    s = data_cfg.synth
    if not s.enabled:
        return
    missing = []
    for split, spec in (("train", data_cfg.train_spec), ("val", data_cfg.val)):
        try:
            expand_paths(spec, f"data.{split}")
        except ConfigError:
            if os.path.normpath(spec) != os.path.normpath(os.path.join(s.out, split)):
                return  # not the synthetic default: leave it to the path check to explain
            missing.append(split)
    if missing:
        print(f"[data] writing synthetic data to {s.out} ({s.train} train, {s.val} val, seed {s.seed})")
        write_dataset(s.out, s.train, s.val, s.seed)
