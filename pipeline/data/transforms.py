"""Pure per-batch transforms run inside Ray Data `map_batches`: decode, resize, augment, pick and tokenise
captions. No Ray here; bad samples are dropped and counted by reason so the caller can report them.

Rows come from `data.formats.shards`: {key, image, txt, json, problem, seed}. Decoding, one crop-and-resize and a
brightness lookup table are per-sample PIL calls on each batch (JPEGs decode at reduced size through
`draft`); stacking and tokenisation run on the whole batch.

Augmentations never contradict a caption: no flips (captions say
left/right, above/below), no hue changes (captions name colours); only mild crops and brightness.
"""
from __future__ import annotations

import io
import json
import math
import warnings
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data.text.tokenizer import Tokenizer

SKIP_REASONS = ("missing_image", "empty_image", "corrupt_image", "oversized_image", "missing_caption",
                "empty_caption", "undecodable_caption", "duplicate_key", "empty_key", "not_downloaded",
                "truncated_shard", "unreadable_shard", "missing_shard")
# Images above this many pixels (by their header) are skipped as oversized_image before any decoding. PIL
# itself only warns up to twice its MAX_IMAGE_PIXELS (~179 MP) and decodes them, at 3 bytes a pixel.
MAX_PIXELS = 8192 * 8192
ORIENTATION = 0x0112  # the EXIF tag saying how a camera's stored pixels are turned for display
RATIO = (3 / 4, 4 / 3)  # aspect range of random crops, and the widest view an extreme image is cut to


def parse_captions(txt: Any, meta: Any) -> tuple[list[str], str]:
    """All non-empty captions of a sample (the json's "captions" list when present, else the .txt), and
    '' or the reason there are none: missing_caption, empty_caption or undecodable_caption."""
    caps: list[str] | None = None
    if isinstance(meta, (bytes, str)) and meta:
        try:
            d = json.loads(meta)
            if isinstance(d, dict) and isinstance(d.get("captions"), list):
                caps = [c for c in d["captions"] if isinstance(c, str)]
        except (ValueError, UnicodeDecodeError):
            caps = None
    if not caps:
        if txt is None:
            return [], "empty_caption" if caps is not None else "missing_caption"
        try:
            caps = [txt.decode("utf-8") if isinstance(txt, bytes) else str(txt)]
        except UnicodeDecodeError:
            return [], "undecodable_caption"  # guessing the encoding would train on mojibake
    caps = [" ".join(c.split()) for c in caps]
    caps = [c for c in caps if c]
    return caps, "" if caps else "empty_caption"


def parse_label(meta: Any) -> str:
    """The sample's class name from its json ("label", else "class"), or '' when it has none."""
    label = parse_field(meta, "label", "class")
    return " ".join(label.split())


def parse_field(meta: Any, *names: str) -> str:
    """The first of `names` the sample's json holds, as a string (a string or an integer), or ''."""
    if not isinstance(meta, (bytes, str)) or not meta:
        return ""
    try:
        d = json.loads(meta)
    except (ValueError, UnicodeDecodeError):
        return ""
    value = next((d[n] for n in names if d.get(n) is not None), None) if isinstance(d, dict) else None
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16/32-bit and float greyscale are scaled (not clipped) to 8 bits, alpha is
    composited onto white (transparent web images are drawn on white), palette and CMYK are converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if img.mode == "F" and arr.max() <= 1.0 else 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr * 255.0 / top, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() would copy an RGB image


def decode_image(data: bytes, min_side: int = 0) -> Image.Image:
    """bytes -> RGB PIL image, turned upright by its EXIF orientation; JPEGs decode at the smallest DCT scale
    keeping both sides >= min_side. Raises ValueError (unreadable) or OverflowError (over MAX_PIXELS, or a
    decompression bomb), the size read from the header before any pixel is decoded."""
    try:
        with warnings.catch_warnings():  # PIL warns of bombs (refused below) and of corrupt EXIF (ignored)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise OverflowError(f"{img.width}x{img.height} pixels, over the {MAX_PIXELS} a sample may have")
            if min_side and img.format == "JPEG":
                img.draft(img.mode if img.mode in ("RGB", "L") else None, (min_side, min_side))
            img.load()
            if img.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies even upright images: ask first
                img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as e:
        raise OverflowError(str(e)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"unreadable image: {e}") from None
    return _to_rgb(img)


def center_box(w: int, h: int, ratio: float = 1.0) -> tuple[int, int, int, int]:
    """The largest centred box of aspect `ratio` (w/h) inside a w x h image."""
    cw, ch = (w, max(1, round(w / ratio))) if w / h < ratio else (max(1, round(h * ratio)), h)
    cw, ch = min(cw, w), min(ch, h)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return x0, y0, x0 + cw, y0 + ch


FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def image_view(data_cfg) -> tuple[str, str, float]:
    """A checkpoint's data config (dict or DataConfig) -> (interpolation, resize mode, crop_pct) of its
    evaluation view. A config from before these keys, or one still saying auto, means the original bilinear
    centre square (crop_pct 1: the whole short side)."""
    get = data_cfg.get if isinstance(data_cfg, dict) else lambda k, d: getattr(data_cfg, k, d)
    interp, mode, crop = get("interpolation", "bilinear"), get("resize_mode", "shortest"), get("crop_pct", 1.0)
    return ("bilinear" if interp == "auto" else interp), ("shortest" if mode == "auto" else mode), float(crop or 1.0)


def resized_shape(w: int, h: int, size: int, crop_pct: float = 1.0) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(floor(size / crop_pct)) of a w x h image: the short side to
    that, the long side truncated to an integer (timm's and OpenCLIP's evaluation transforms)."""
    short = math.floor(size / crop_pct) if crop_pct < 1 else size
    return (short, int(short * h / w)) if w <= h else (int(short * w / h), short)


def resize_image(img: Image.Image, size: int, interpolation: str = "bilinear", resize_mode: str = "shortest",
                 crop_pct: float = 1.0) -> np.ndarray:
    """Evaluation view -> (3, size, size) uint8. shortest: torchvision's Resize(floor(size / crop_pct)) then
    CenterCrop(size), done with the same two Pillow calls (OpenCLIP's transform, and timm's with its crop_pct), so
    the pixels are theirs; squash: the whole image resized to a square (SigLIP's preprocessing)."""
    if resize_mode == "squash":
        out = img.resize((size, size), FILTERS[interpolation])
    else:
        new_w, new_h = resized_shape(*img.size, size, crop_pct)
        resized = img.resize((new_w, new_h), FILTERS[interpolation]) if (new_w, new_h) != img.size else img
        left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
        out = resized.crop((left, top, left + size, top + size))
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def pil_pixels(images: list, size: int, view: tuple = ("bilinear", "shortest")) -> np.ndarray:
    """PIL images -> (N, 3, size, size) uint8 in the evaluation `view` (`resize_image`'s interpolation, resize
    mode and crop_pct): what every encoder's `encode_image` embeds."""
    if not images:
        return np.zeros((0, 3, size, size), np.uint8)
    return np.stack([resize_image(im.convert("RGB"), size, *view) for im in images])


def crop_box(w: int, h: int, scale_min: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Random resized crop box (area >= scale_min, aspect in RATIO); an image too narrow or too wide for
    any such crop falls back to its centred view of the nearest allowed aspect."""
    for _ in range(10):
        area = rng.uniform(scale_min, 1.0) * w * h
        ratio = np.exp(rng.uniform(np.log(RATIO[0]), np.log(RATIO[1])))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return x0, y0, x0 + cw, y0 + ch
    return center_box(w, h, float(np.clip(w / h, *RATIO)))


def augment_image(img: Image.Image, size: int, scale_min: float, rng: np.random.Generator,
                  brightness: float = 0.1, interpolation: str = "bilinear") -> np.ndarray:
    """Training view: one crop-and-resize call, then brightness x U(1-b, 1+b) through a 256-entry lookup
    table on the small result -> (3, size, size) uint8. (Scaling the stacked batch in float32 instead cost
    40% of the whole transform at 224 px: bench/ingest.py.)"""
    box = crop_box(*img.size, scale_min, rng)
    out = img.resize((size, size), FILTERS[interpolation], box=box)
    if brightness:
        lut = np.clip(np.arange(256) * rng.uniform(1 - brightness, 1 + brightness), 0, 255).astype(np.uint8)
        out = out.point(lut.tolist() * 3)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def iter_samples(batch: dict[str, Any]):
    """(key, image bytes, txt, json, problem, seed) per row of a `data.formats.shards` batch."""
    n = len(batch["key"])
    for i in range(n):
        yield (str(batch["key"][i]), batch["image"][i], batch["txt"][i], batch["json"][i],
               str(batch["problem"][i]), int(batch["seed"][i]))


def check_sample(raw: Any, problem: str, caps_reason: str) -> str:
    """'' for a usable sample, else the first reason it is not."""
    if problem:
        return problem
    if raw is None:
        return "missing_image"
    if len(raw) == 0:
        return "empty_image"
    return caps_reason


def to_base(img, side: int, interpolation: str = "bilinear") -> np.ndarray:
    """PIL image -> (h, w, 3) uint8 with its short side `side` (aspect kept; a smaller image stays as it is)."""
    w, h = img.size
    if min(w, h) > side:
        scale = side / min(w, h)
        img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), FILTERS[interpolation])
    return np.asarray(img, dtype=np.uint8)


def decode_or_skip(key: str, raw: Any, problem: str, caps_reason: str, skips: dict[str, list[str]],
                   min_side: int = 0, base: int = 0, interpolation: str = "bilinear") -> Image.Image | None:
    """The sample's image, or None with its key added under the reason it has none. `raw`: the file's bytes,
    or (data.cache_decoded) an already decoded base array or the skip reason its decoding gave. `base`: decode
    to the short side data.cache_decoded keeps (`to_base`), so that a view cut from a fresh
    decode is the view cut from the cache."""
    reason = check_sample(raw, problem, caps_reason)
    if not reason and isinstance(raw, np.ndarray):
        return Image.fromarray(raw)
    if not reason and isinstance(raw, str):
        reason = raw
    if not reason:
        try:
            if not base:
                return decode_image(bytes(raw), min_side)
            return Image.fromarray(to_base(decode_image(bytes(raw), base), base, interpolation))
        except ValueError:
            reason = "corrupt_image"
        except OverflowError:
            reason = "oversized_image"
    skips.setdefault(reason, []).append(key)
    return None


def prepare_train_batch(
    batch: dict[str, Any], tokenizer: Tokenizer, size: int, augment: bool, scale_min: float,
    view: tuple[str, str] = ("bilinear", "shortest"), base: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Rows -> {'key', 'image': (n,3,S,S) uint8, 'tokens': (n,L) int64}: one caption per image, crop,
    brightness and caption drawn from the row's seed (so the same epoch gives the same views); plus the
    keys of skipped samples by reason. `base`: views are cut from the image decoded to this short side
    (data.cache_decoded; rows may then hold decoded arrays, see `decode_or_skip`)."""
    keys, images, captions, kept, skips = [], [], [], [], {}
    for i, (key, raw, txt, meta, problem, seed) in enumerate(iter_samples(batch)):
        caps, why = parse_captions(txt, meta)
        # an unaugmented view is the evaluation's, pixel for pixel: decoded at full scale as evaluation decodes
        img = decode_or_skip(key, raw, problem, why, skips, min_side=size if augment else 0, base=base,
                             interpolation=view[0])
        if img is None:
            continue
        rng = np.random.default_rng(seed)
        kept.append(i)
        keys.append(key)
        images.append(augment_image(img, size, scale_min, rng, interpolation=view[0]) if augment
                      else resize_image(img, size, *view))
        captions.append(caps[int(rng.integers(len(caps)))])
    out = {
        "key": np.array(keys, dtype=object),
        "image": np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8),
        "tokens": tokenizer.encode_batch(captions) if captions else np.zeros((0, tokenizer.max_tokens), np.int64),
    }
    if "pos" in batch:  # a worker's own epoch stream: the rows' positions travel with them (epoch_plan)
        out["pos"] = np.asarray(batch["pos"], dtype=np.int64)[kept]
    return out, skips


def prepare_eval_batch(batch: dict[str, Any], size: int, view: tuple[str, str] = ("bilinear", "shortest"),
                       captionless: bool = False) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Rows -> {'key', 'label', 'image' (n,3,S,S) uint8, 'captions' (JSON list per image), 'shard', 'path'} for
    evaluation, where every caption of an image is ground truth. `captionless`: an image without a caption is
    kept (with none), as a search gallery wants it; else it is skipped. 'path': the image's own file or URL,
    where the row's json names one."""
    keys, images, captions, labels, shards, paths, skips = [], [], [], [], [], [], {}
    for i, (key, raw, txt, meta, problem, _seed) in enumerate(iter_samples(batch)):
        caps, why = parse_captions(txt, meta)
        if captionless and why in ("missing_caption", "empty_caption"):
            why = ""
        # decoded at full scale (no `draft`): the view is then the pixels open_clip's and timm's transforms give,
        # and the pixels a worker decoding on its device (data.decode=gpu) trained on
        img = decode_or_skip(key, raw, problem, why, skips)
        if img is None:
            continue
        shards.append(str(batch["shard"][i]) if "shard" in batch else "")
        keys.append(key)
        images.append(resize_image(img, size, *view))
        captions.append(json.dumps(caps))
        labels.append(parse_label(meta))
        paths.append(parse_field(meta, "image_path", "url"))
    out = {
        "key": np.array(keys, dtype=object),
        "label": np.array(labels, dtype=object),
        "image": np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8),
        "captions": np.array(captions, dtype=object),
        "shard": np.array(shards, dtype=object),
        "path": np.array(paths, dtype=object),
    }
    return out, skips


def caption_rows(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Rows (read without image bytes) -> one row per caption {'key', 'caption'} of every sample that has an
    image member and a caption. The image pass decides which images decode; captions of an image it skipped
    are dropped when the two passes are joined, and counted there under the image's reason."""
    keys, captions = [], []
    for i, (key, _raw, txt, meta, problem, _seed) in enumerate(iter_samples(batch)):
        caps, why = parse_captions(txt, meta)
        if problem or why or not bool(batch["has_image"][i]):
            continue
        keys += [key] * len(caps)
        captions += caps
    return {"key": np.array(keys, dtype=object), "caption": np.array(captions, dtype=object)}


def scan_captions(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Rows (read without image bytes) -> one row per distinct word with its count in this batch, plus
    sample counts under reserved names: '' (captioned samples with an image), '\\x00samples' (all samples)."""
    from pipeline.data.formats.shards import NOT_SAMPLES
    from pipeline.data.text.tokenizer import count_words

    counts: Counter = Counter()
    usable = samples = 0
    for i, (_key, _raw, txt, meta, problem, _seed) in enumerate(iter_samples(batch)):
        if problem in NOT_SAMPLES:
            continue
        samples += 1  # a sample found bad when read (duplicate_key, empty_key) is still one of the shard's
        if problem:
            continue
        caps, _why = parse_captions(txt, meta)
        if caps and bool(batch["has_image"][i]):
            usable += 1
            counts.update(count_words(caps))
    counts[""], counts["\x00samples"] = usable, samples  # neither ever is a word
    return {"word": np.array(list(counts), dtype=object), "count": np.array(list(counts.values()), np.int64)}
