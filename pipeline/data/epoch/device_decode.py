"""data.decode=gpu: JPEG bytes travel through Ray Data and the training worker decodes them, batched, on its own
device (nvjpeg on CUDA; libjpeg-turbo through torchvision on CPU, which the tests run), and cuts the views there.

- In the read task (`plan_train_batch`) everything but the pixels is decided, from the JPEG header alone: the
  caption, the crop box and the brightness, drawn from the row's seed in the order `transforms.augment_image`
  draws them. A row the device path does not take as it is (not an RGB or greyscale JPEG, turned by EXIF, cut
  short) is decoded and cut here on the CPU exactly as data.decode=cpu does, and travels as its finished view.
- On the worker (`device_blocks`), each block's JPEGs are decoded in one call; each crop box is resampled to
  size x size with Pillow's own filter weights as two matrix products (batched over images of one shape), so a
  view is the CPU view of the fully decoded image within a grey level or so; then the brightness is applied.
  A JPEG that no decoder takes is dropped there and counted as corrupt_image in the tally row of its prepared
  batch, before the batcher cuts equal batches.
"""
from __future__ import annotations

import io
import json
import warnings
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from pipeline.data import transforms as T

BRIGHTNESS = 0.1  # transforms.augment_image's default jitter, which the CPU path uses
_EOI_TAIL = 64  # bytes at a JPEG's end searched for its end-of-image marker (some writers pad after it)
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}  # Pillow's filter supports


# ------------------------------------------------------------------------------------------ the read task

def jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG the device path decodes as it is, from its header; None for anything else
    (another format, CMYK, an EXIF turn, no end marker, over transforms.MAX_PIXELS), which the read task
    decodes itself."""
    if raw[:2] != b"\xff\xd8" or b"\xff\xd9" not in raw[-_EOI_TAIL:]:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(raw))
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            if img.width * img.height > T.MAX_PIXELS or img.getexif().get(T.ORIENTATION, 1) != 1:
                return None
            return img.width, img.height
    except Exception:  # noqa: BLE001 - any header Pillow cannot read: the CPU path names the reason
        return None


def plan_train_batch(batch: dict[str, Any], tokenizer, size: int, augment: bool, scale_min: float,
                     view: tuple[str, str] = ("bilinear", "shortest")) -> tuple[dict[str, np.ndarray], dict]:
    """Rows -> {'key', 'jpeg' (bytes: a JPEG, or a finished (3,S,S) uint8 view where 'encoded' is False),
    'encoded' (bool), 'box' (n,4) float64 source box, 'gain' (n,) brightness, 'tokens', 'pos'} and the keys
    skipped by reason, as `transforms.prepare_train_batch` would skip them."""
    keys, jpegs, encoded, boxes, gains, captions, kept, skips = [], [], [], [], [], [], [], {}
    for i, (key, raw, txt, meta, problem, seed) in enumerate(T.iter_samples(batch)):
        caps, why = T.parse_captions(txt, meta)
        reason = T.check_sample(raw, problem, why)
        wh = None if reason or isinstance(raw, (str, np.ndarray)) else jpeg_size(bytes(raw))
        rng = np.random.default_rng(seed)
        if wh is not None:
            box, gain = plan_view(wh, size, augment, scale_min, view[1], rng, view[2] if len(view) > 2 else 1.0)
            jpegs.append(bytes(raw))
        else:  # the CPU path: same skips, same view as data.decode=cpu
            img = T.decode_or_skip(key, raw, problem, why, skips, min_side=size, interpolation=view[0])
            if img is None:
                continue
            pixels = (T.augment_image(img, size, scale_min, rng, interpolation=view[0]) if augment
                      else T.resize_image(img, size, *view))
            box, gain = (0.0, 0.0, 0.0, 0.0), 1.0
            jpegs.append(pixels.tobytes())
        kept.append(i)
        keys.append(key)
        encoded.append(wh is not None)
        boxes.append(box)
        gains.append(gain)
        captions.append(caps[int(rng.integers(len(caps)))])
    out = {"key": np.array(keys, dtype=object), "jpeg": np.array(jpegs, dtype=object),
           "encoded": np.array(encoded, dtype=bool), "box": np.array(boxes, np.float64).reshape(-1, 4),
           "gain": np.array(gains, np.float64),
           "tokens": tokenizer.encode_batch(captions) if captions else np.zeros((0, tokenizer.max_tokens), np.int64)}
    if "pos" in batch:
        out["pos"] = np.asarray(batch["pos"], dtype=np.int64)[kept]
    return out, skips


def plan_view(wh: tuple[int, int], size: int, augment: bool, scale_min: float, mode: str,
               rng: np.random.Generator, crop_pct: float = 1.0) -> tuple[tuple, float]:
    """(box, brightness gain) of a row's view, drawn as `transforms.augment_image` draws them. The box is the
    source box to resample, except for the unaugmented shortest-side view, where it is (left, top, resized
    width, resized height) of `transforms.resize_image`'s resize-then-crop (see `two_step`)."""
    w, h = wh
    if not augment:
        if mode == "squash":
            return (0.0, 0.0, float(w), float(h)), 1.0
        new_w, new_h = T.resized_shape(w, h, size, crop_pct)
        return (float(round((new_w - size) / 2.0)), float(round((new_h - size) / 2.0)), float(new_w),
                float(new_h)), 1.0
    box = T.crop_box(w, h, scale_min, rng)
    return tuple(map(float, box)), float(rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS))


# ------------------------------------------------------------------------------------------ the worker

def filter_weights(in_size: int, out_size: int, lo: float, hi: float, interpolation: str) -> np.ndarray:
    """(out_size, in_size) weights with which Pillow resamples the source span [lo, hi) of an axis to out_size
    samples (its precompute_coeffs, in float64): each output's filter is widened by the downscale factor and may
    reach past the span into the image, never past the image's edge."""
    scale = (hi - lo) / out_size
    widen = max(scale, 1.0)
    support = _SUPPORT[interpolation] * widen
    centre = lo + (np.arange(out_size) + 0.5) * scale
    first = np.maximum((centre - support + 0.5).astype(np.int64), 0)  # C's (int) truncation, then clipped
    last = np.minimum((centre + support + 0.5).astype(np.int64), in_size)
    x = np.arange(in_size)
    inside = (x[None, :] >= first[:, None]) & (x[None, :] < last[:, None])
    k = _kernel((x[None, :] - centre[:, None] + 0.5) / widen, interpolation) * inside
    total = k.sum(axis=1, keepdims=True)
    return np.divide(k, total, out=np.zeros_like(k), where=total != 0)


def _kernel(x: np.ndarray, interpolation: str) -> np.ndarray:
    x = np.abs(x)
    if interpolation == "bilinear":
        return np.clip(1.0 - x, 0.0, None)
    a = -0.5  # Pillow's bicubic
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _axis_weights(in_size: int, size: int, lo: float, hi: float, interpolation: str, two_step: bool) -> np.ndarray:
    """(size, in_size) weights of one axis: the box [lo, hi) resampled to `size`, or (`two_step`: lo = the crop's
    offset, hi = the resized length) the whole axis resized to `hi` and the `size` samples from `lo` kept."""
    if not two_step:
        return filter_weights(in_size, size, lo, hi, interpolation)
    return filter_weights(in_size, int(hi), 0.0, float(in_size), interpolation)[int(lo):int(lo) + size]


def resample(images: list, boxes: np.ndarray, size: int, interpolation: str = "bilinear", two_step: bool = False):
    """(3,H,W) uint8 tensors (any sizes, one device) and their boxes -> (n,3,size,size) uint8: each source box
    resampled as Pillow's `resize((size, size), box=box)` does, or (`two_step`, boxes from `plan_view`'s
    unaugmented view) Pillow's resize then crop, as two matrix products batched over the images of one shape."""
    import torch

    device = images[0].device if images else torch.device("cpu")
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    by_shape: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(tuple(img.shape[1:]), []).append(i)
    for (h, w), rows in by_shape.items():
        step = max(1, (64 << 20) // (3 * h * w))  # about 256 MB of float32 at a time
        for at in range(0, len(rows), step):
            part = rows[at:at + step]
            wy = np.stack([_axis_weights(h, size, boxes[i, 1], boxes[i, 3], interpolation, two_step) for i in part])
            wx = np.stack([_axis_weights(w, size, boxes[i, 0], boxes[i, 2], interpolation, two_step) for i in part])
            pix = torch.stack([images[i] for i in part]).float()  # (g,3,H,W)
            wy_t = torch.from_numpy(wy).float().to(device)[:, None]  # (g,1,S,H)
            wx_t = torch.from_numpy(wx).float().to(device)[:, None].transpose(2, 3)  # (g,1,W,S)
            # Pillow resamples rows first and keeps that pass in 8 bits: a bicubic overshoot is clipped there
            rows_done = (pix @ wx_t).round_().clamp_(0, 255)  # (g,3,H,S)
            out[torch.as_tensor(part, device=device)] = (wy_t @ rows_done).round_().clamp_(0, 255).to(torch.uint8)
    return out


def decode_jpegs(datas: list[bytes], device) -> list:
    """JPEG bytes -> (3,H,W) uint8 RGB tensors on `device`, None for one that does not decode: all in one call
    (nvjpeg's batched decode), each on its own where the batch fails, then Pillow's decoder as the last try."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    def one_call(items, dev):
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            warnings.simplefilter("ignore")
            return decode_jpeg(items, mode=ImageReadMode.RGB, device=dev)

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    if not tensors:
        return []
    try:
        return list(one_call(tensors, device))
    except RuntimeError:
        pass
    out = []
    for t, d in zip(tensors, datas):
        try:
            out.append(one_call([t], device)[0])
        except RuntimeError:
            try:
                img = T.decode_image(d)
                out.append(torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()).to(device))
            except (ValueError, OverflowError):
                out.append(None)
    return out


def device_views(block: dict, device, size: int, interpolation: str = "bilinear", two_step: bool = False):
    """A planned block's sample rows -> ((m,3,S,S) uint8 views on `device`, indices of the rows whose JPEG no
    decoder took, which are left out of the views)."""
    import torch

    rows = np.flatnonzero(np.asarray(block["tally"], dtype=object) == "")
    enc = np.asarray(block["encoded"], dtype=bool)
    jpeg_rows = [i for i in rows if enc[i]]
    decoded = dict(zip(jpeg_rows, decode_jpegs([block["jpeg"][i] for i in jpeg_rows], device)))
    ok = [i for i in jpeg_rows if decoded[i] is not None]
    boxes = np.asarray(block["box"], dtype=np.float64).reshape(-1, 4)
    views = torch.empty((len(rows), 3, size, size), dtype=torch.uint8, device=device)
    where = {i: j for j, i in enumerate(rows)}
    if ok:
        cut = resample([decoded[i] for i in ok], boxes[ok], size, interpolation, two_step)
        gain = torch.as_tensor(np.asarray(block["gain"], dtype=np.float64)[ok], dtype=torch.float32, device=device)
        # the CPU path's lookup table: floor(v * gain), clipped
        views[[where[i] for i in ok]] = (cut.float() * gain[:, None, None, None]).floor_().clamp_(0, 255).to(
            torch.uint8)
    for i in rows:
        if not enc[i]:
            pix = np.frombuffer(block["jpeg"][i], dtype=np.uint8).reshape(3, size, size)
            views[where[i]] = torch.from_numpy(pix.copy()).to(device)
    failed = [i for i in jpeg_rows if decoded[i] is None]
    dropped = set(failed)
    keep = [where[i] for i in rows if i not in dropped]
    return views[keep], failed


def device_blocks(blocks: Iterable[dict], device, size: int, interpolation: str = "bilinear",
                  two_step: bool = False) -> Iterator[dict]:
    """Planned blocks (`plan_train_batch` rows, then each prepared batch's tally row) -> the blocks the batcher
    takes: 'image' (views on `device`, a zero image on tally rows) in place of the bytes, and a JPEG no decoder
    took counted under corrupt_image in its batch's tally row and dropped. `two_step`: the unaugmented
    shortest-side view (data.augment=false), whose boxes `plan_view` gives as resize-then-crop."""
    import torch

    from pipeline.data.skips import SkipTally

    for block in blocks:
        views, failed = device_views(block, device, size, interpolation, two_step)
        tally = np.asarray(block["tally"], dtype=object).copy()
        pos = np.asarray(block["pos"], dtype=np.int64)
        for i in failed:  # the tally row closing the prepared batch that covers this row's position
            mark = next(j for j in np.flatnonzero(tally != "")
                        if json.loads(tally[j])["first"] <= pos[i] <= json.loads(tally[j])["last"])
            t = json.loads(tally[mark])
            merged = SkipTally.from_dict(t).merge(SkipTally.from_keys({"corrupt_image": [str(block["key"][i])]}))
            tally[mark] = json.dumps({"first": t["first"], "last": t["last"], **merged.to_dict()})
        keep = np.ones(len(tally), dtype=bool)
        keep[failed] = False
        marks = tally[keep] != ""
        image = torch.zeros((int(keep.sum()), 3, size, size), dtype=torch.uint8, device=device)
        image[torch.from_numpy(~marks).to(device)] = views
        yield {"key": np.asarray(block["key"], dtype=object)[keep], "image": image,
               "tokens": np.asarray(block["tokens"])[keep], "pos": pos[keep], "tally": tally[keep]}
