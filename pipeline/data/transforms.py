"""Pure per-batch transforms run inside Ray Data `map_batches`: decode, resize, augment, pick and tokenise
captions. No Ray here; bad samples are dropped and counted by reason so the caller can report them.

Augmentations never contradict a caption: no horizontal or vertical flips (captions say left/right,
above/below), no hue changes (captions name colours); only mild crops and brightness.
"""
from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.data.tokenizer import Tokenizer

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
SKIP_REASONS = ("missing_image", "corrupt_image", "empty_caption")


def rename_member(fname: str) -> str:
    """img2dataset writes KEY.jpg / .jpeg / .png / .webp: give every image one column name, 'image'."""
    base, _, ext = fname.rpartition(".")
    return f"{base}.image" if ext.lower() in IMAGE_SUFFIXES else fname


def parse_captions(txt: Any, meta: Any) -> list[str]:
    """All non-empty captions of a sample: the json's "captions" list when present, else the .txt."""
    caps: list[str] = []
    if isinstance(meta, (bytes, str)) and meta:
        try:
            d = json.loads(meta)
            if isinstance(d, dict) and isinstance(d.get("captions"), list):
                caps = [str(c) for c in d["captions"]]
        except (ValueError, UnicodeDecodeError):
            caps = []
    if not caps and isinstance(txt, (bytes, str)):
        text = txt.decode("utf-8", errors="replace") if isinstance(txt, bytes) else txt
        caps = [text]
    return [" ".join(c.split()) for c in caps if c and c.strip()]


def decode_image(data: bytes) -> Image.Image:
    """bytes -> RGB PIL image; raises ValueError when the bytes are not a readable image."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"unreadable image: {e}") from None
    return img.convert("RGB")


def resize_image(img: Image.Image, size: int) -> np.ndarray:
    """Evaluation view: resize the whole image to size x size -> (3, size, size) uint8."""
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8).transpose(2, 0, 1)


def augment_image(img: Image.Image, size: int, scale_min: float, rng: np.random.Generator) -> np.ndarray:
    """Training view: random resized crop (area >= scale_min, aspect 3/4..4/3) + brightness +-10%."""
    w, h = img.size
    for _ in range(10):
        area = rng.uniform(scale_min, 1.0) * w * h
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = img.crop((x0, y0, x0 + cw, y0 + ch))
            break
    arr = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)
    arr = np.clip(arr * rng.uniform(0.9, 1.1), 0, 255)
    return arr.astype(np.uint8).transpose(2, 0, 1)


def iter_samples(batch: dict[str, Any]):
    n = len(batch["__key__"])
    for col in ("image", "txt", "json"):
        batch.setdefault(col, [None] * n)
    urls = batch.get("__url__", [""] * n)
    for i in range(n):
        # The shard name keeps keys unique across shards written by different tools.
        key = f"{Path(str(urls[i])).name}/{batch['__key__'][i]}" if urls[i] else str(batch["__key__"][i])
        yield key, batch["image"][i], batch["txt"][i], batch["json"][i]


def decode_or_skip(key: str, raw: Any, caps: list[str], skips: dict[str, list[str]]) -> Image.Image | None:
    reason = None
    if not isinstance(raw, (bytes, bytearray)) or len(raw) == 0:
        reason = "missing_image"
    elif not caps:
        reason = "empty_caption"
    else:
        try:
            return decode_image(bytes(raw))
        except ValueError:
            reason = "corrupt_image"
    skips.setdefault(reason, []).append(key)
    return None


def prepare_train_batch(
    batch: dict[str, Any], tokenizer: Tokenizer, size: int, augment: bool, scale_min: float,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Raw webdataset rows -> {'image': (n,3,S,S) uint8, 'tokens': (n,L) int64}, one caption per image
    sampled afresh each epoch; plus the keys of skipped samples by reason."""
    images, captions, skips = [], [], {}
    for key, raw, txt, meta in iter_samples(batch):
        caps = parse_captions(txt, meta)
        img = decode_or_skip(key, raw, caps, skips)
        if img is None:
            continue
        images.append(augment_image(img, size, scale_min, rng) if augment else resize_image(img, size))
        captions.append(caps[int(rng.integers(len(caps)))])
    out = {
        "image": np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8),
        "tokens": tokenizer.encode_batch(captions) if captions else np.zeros((0, tokenizer.max_tokens), np.int64),
    }
    return out, skips


def prepare_eval_batch(batch: dict[str, Any], size: int) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Raw rows -> {'key', 'image' (n,3,S,S) uint8, 'captions' (JSON list per image)} for evaluation,
    where every caption of an image is ground truth."""
    keys, images, captions, skips = [], [], [], {}
    for key, raw, txt, meta in iter_samples(batch):
        caps = parse_captions(txt, meta)
        img = decode_or_skip(key, raw, caps, skips)
        if img is None:
            continue
        keys.append(key)
        images.append(resize_image(img, size))
        captions.append(json.dumps(caps))
    out = {
        "key": np.array(keys, dtype=object),
        "image": np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8),
        "captions": np.array(captions, dtype=object),
    }
    return out, skips


def caption_word_counts(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Rows -> one row per distinct word with its count in this batch, plus the sample count under ''."""
    from pipeline.data.tokenizer import count_words

    counts: Counter = Counter()
    n = 0
    for _key, _raw, txt, meta in iter_samples(batch):
        caps = parse_captions(txt, meta)
        if caps:
            n += 1
            counts.update(count_words(caps))
    counts[""] = n  # '' never is a word: it carries the number of captioned samples
    return {"word": np.array(list(counts), dtype=object), "count": np.array(list(counts.values()), np.int64)}
