"""Karpathy split files (Flickr8k, Flickr30k, COCO `dataset_*.json`) plus their image folder converted into
img2dataset-style shards with `ShardWriter`: one sample per image carrying all of its captions."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.data.formats.writer import ShardWriter

SPLITS = ("train", "restval", "val", "test")
MAX_MISSING_EXAMPLES = 10


def load_images(json_path: str | Path) -> list[dict[str, Any]]:
    """The `images` list of a Karpathy split file, with errors that say what to fix."""
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Karpathy split file {path} does not exist; pass the dataset_flickr8k.json / "
            f"dataset_flickr30k.json / dataset_coco.json from Karpathy's caption_datasets")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); pass a Karpathy split file") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path} has no 'images' list; pass a Karpathy split file "
                         f"(a JSON object with images[].filename, .split and .sentences[].raw)")
    return data["images"]


def check_splits(splits: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate requested split names; a bare string means one split."""
    wanted = (splits,) if isinstance(splits, str) else tuple(splits)
    if not wanted:
        raise ValueError(f"no splits requested; pass one or more of {', '.join(SPLITS)}")
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(map(repr, unknown))}; use names from {', '.join(SPLITS)}")
    return tuple(dict.fromkeys(wanted))  # drop repeats, keep order


def clean_captions(image: dict[str, Any]) -> list[str]:
    """`sentences[].raw`, whitespace-normalised, empty ones dropped."""
    caps = []
    for sentence in image.get("sentences") or []:
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        text = " ".join(str(raw).split()) if raw is not None else ""
        if text:
            caps.append(text)
    return caps


def locate_image(images_dir: Path, image: dict[str, Any]) -> tuple[Path, bool]:
    """Where the image file is: images_dir/filepath/filename (COCO) when that exists, else
    images_dir/filename (Flickr, or COCO images flattened into one folder). Returns (path, exists); for a
    missing file the path is the most specific candidate, which is the one worth reporting."""
    filename = str(image.get("filename", ""))
    candidates = []
    if image.get("filepath"):
        candidates.append(images_dir / str(image["filepath"]) / filename)
    candidates.append(images_dir / filename)
    for path in candidates:
        if filename and path.is_file():
            return path, True
    return candidates[0], False


def refuse_file(path: Path, images_dir: Path, seen: set[Path]) -> str:
    """'' for an image file to copy, else why it is skipped: outside_images (a filename such as ../x.jpg
    leading out of --images), duplicate_file (listed before: a gallery would hold two identical images, either
    one the ground truth) or not_an_image (no image format Pillow reads, by its header)."""
    real = path.resolve()
    if not real.is_relative_to(images_dir.resolve()):
        return "outside_images"
    if real in seen:
        return "duplicate_file"
    seen.add(real)
    try:
        from PIL import Image, UnidentifiedImageError

        with Image.open(real) as img:
            img.size  # noqa: B018 - the header is read; the pixels are decoded by training, which counts bad ones
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "not_an_image"
    return ""


def image_meta(image: dict[str, Any], split: str) -> dict[str, Any]:
    """Provenance stored in each sample's json, so a shard sample can be traced back to the split file."""
    meta: dict[str, Any] = {"filename": image.get("filename"), "split": split}
    for field in ("filepath", "imgid", "cocoid"):
        if field in image:
            meta[field] = image[field]
    meta["source"] = "karpathy"
    return meta


def convert_karpathy(
    json_path: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    splits: tuple[str, ...] | list[str] | str = ("test",),
    fmt: str = "webdataset",
    shard_size: int = 10000,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the images of `splits` (in the JSON's order) into shards under out_dir; returns a summary.

    Images whose file is missing, and images without any caption, are skipped and counted, never fatal.
    """
    wanted = check_splits(splits)
    images = load_images(json_path)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist; pass the folder holding the "
                                f"images (for COCO, the one containing train2014/ and val2014/)")
    selected = [img for img in images if isinstance(img, dict) and img.get("split") in wanted]
    if not selected:
        have = Counter(str(img.get("split")) for img in images if isinstance(img, dict))
        listing = ", ".join(f"{s}: {n}" for s, n in sorted(have.items())) or "none"
        raise ValueError(f"{json_path} has no images in split(s) {', '.join(wanted)}; "
                         f"the file has {listing}")

    missing, missing_examples, no_captions = 0, [], 0
    refused: Counter = Counter()
    refused_examples: dict[str, list[str]] = {}
    seen: set[Path] = set()
    with ShardWriter(out_dir, fmt=fmt, shard_size=shard_size) as writer:
        for image in tqdm(selected, desc="karpathy", unit="img", disable=not progress):
            captions = clean_captions(image)
            if not captions:
                no_captions += 1
                continue
            path, found = locate_image(images_dir, image)
            why = refuse_file(path, images_dir, seen) if found else ""
            if why:
                refused[why] += 1
                refused_examples.setdefault(why, [])
                if len(refused_examples[why]) < MAX_MISSING_EXAMPLES:
                    refused_examples[why].append(str(image.get("filename")))
                continue
            data = None
            if found:
                try:
                    data = path.read_bytes()  # copied as is: re-encoding would change the pixels
                except OSError:
                    data = None
            if data is None:
                missing += 1
                if len(missing_examples) < MAX_MISSING_EXAMPLES:
                    missing_examples.append(str(path))
                continue
            writer.write(data, path.suffix or "jpg", captions, image_meta(image, str(image["split"])))
    return {
        "written": writer.count,
        "splits": list(wanted),
        "shards": [str(p) for p in writer.paths],
        "missing_images": missing,
        "missing_examples": missing_examples,
        "no_captions": no_captions,
        "refused": dict(refused),
        "refused_examples": refused_examples,
        "format": fmt,
        "out": str(out_dir),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: what was written where, and what was skipped and why."""
    shards = summary.get("shards", [])
    lines = [
        f"wrote {summary.get('written', 0)} samples (splits: {', '.join(summary.get('splits', []))}) "
        f"into {len(shards)} {summary.get('format', '')} shard(s) under {summary.get('out', '')}"
    ]
    missing = summary.get("missing_images", 0)
    if missing:
        examples = summary.get("missing_examples", [])[:3]
        more = ", ..." if missing > len(examples) else ""
        lines.append(f"missing images: {missing} skipped (e.g. {', '.join(examples)}{more}); "
                     f"check that the image folder matches the split file")
    else:
        lines.append("missing images: 0")
    if summary.get("no_captions", 0):
        lines.append(f"images without captions: {summary['no_captions']} skipped")
    for why, n in sorted(summary.get("refused", {}).items()):
        examples = summary.get("refused_examples", {}).get(why, [])[:3]
        lines.append(f"{why}: {n} skipped (e.g. {', '.join(examples)}{', ...' if n > len(examples) else ''}); "
                     + REFUSED_HINTS[why])
    return "\n".join(lines)


REFUSED_HINTS = {"outside_images": "a filename in the split file leads out of the image folder",
                 "duplicate_file": "the split file lists the same image file more than once; the first is kept",
                 "not_an_image": "the file is no image Pillow can read"}
