"""A tiny evaluation set of real photographs: the pictures scikit-image ships with its wheel (no download),
each with captions written by hand for what the picture really shows, written as img2dataset-style shards by
the project's `ShardWriter` (`<out>/val/00000.tar`, or `.parquet`).

Unlike the synthetic scenes these are real photos of mixed sizes (102x102 to 1411x1411), gray and colour, so
a search over them exercises resizing and real image statistics. Nineteen images cannot train anything: the
set is for retrieval demos and smoke tests of a trained or pretrained model (`data.val=<out>/val`).

    from pipeline.data.formats.photos import write_photo_shards
    write_photo_shards("runs/photos")          # -> {"written": 19, "out": "runs/photos/val", ...}
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.data.formats.writer import ShardWriter

SPLIT = "val"  # one split: the set is searched, never trained on
JPEG_QUALITY = 95
IMAGE_FORMATS = {"jpeg": "jpg", "png": "png"}  # PIL format name -> member suffix

# (skimage.data function, captions). Only real photographs (and two microscope images) that scikit-image
# bundles: synthetic ones (checkerboard, colorwheel, binary_blobs, horse silhouette, logo, phantom) are left
# out, `cat` is `chelsea` again, and the ones that need pooch to download (brain, eagle, lily, skin, ...) are
# not in the wheel. Captions say what is in the frame, in the words a caption dataset would use.
PHOTOS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("astronaut", ("a smiling astronaut in an orange spacesuit posing beside an american flag",
                   "a woman astronaut with her helmet and a model of the space shuttle behind her",
                   "an official portrait of an astronaut in an orange flight suit")),
    ("brick", ("a grey brick wall seen at an angle",
               "rows of long narrow bricks with light mortar between them")),
    ("camera", ("a man in a dark coat looking through a camera on a tripod",
                "a black and white photo of a cameraman filming on a grassy field with buildings far behind")),
    ("cell", ("a single round cell floating in liquid under a microscope",
              "a bright round blob on a grey noisy background")),
    ("chelsea", ("a close up of a tabby cat's face with green eyes",
                 "an orange and brown striped cat looking at the camera")),
    ("clock", ("a motion blurred clock in front of a plain grey wall",
               "a blurry round object on a grey background")),
    ("coffee", ("a cup of espresso on a red saucer with a spoon",
                "a red coffee cup and saucer on a wooden table",
                "a small cup of black coffee with crema seen from above")),
    ("coins", ("rows of ancient silver coins on a dark background",
               "a black and white photo of old greek coins showing heads and figures")),
    ("grass", ("a close up of short grass and small weeds seen from above",
               "a dense patch of lawn in black and white")),
    ("gravel", ("a close up of small sharp grey stones",
                "a layer of crushed gravel seen from above")),
    ("hubble_deep_field", ("a deep space photo full of distant galaxies on a black sky",
                           "many small colourful galaxies and stars in the darkness of space")),
    ("immunohistochemistry", ("a microscope image of tissue stained brown and blue",
                              "stained cells of human tissue under a microscope")),
    ("moon", ("the grey surface of the moon with small craters",
              "a black and white close up of the lunar surface")),
    ("page", ("a photo of a printed book page about region based segmentation",
              "black text on a grey page ending in a line of python code")),
    ("retina", ("a photo of the back of a human eye with red blood vessels",
                "an orange red retina with the bright optic disc on the left")),
    ("rocket", ("a white rocket on its launch pad at dusk between tall towers",
                "a rocket standing ready for launch under a dark blue sky with bright lights")),
    ("text", ("handwritten mathematical formulas on a sheet of paper seen at an angle",
              "a black and white photo of handwritten equations")),
    ("microaneurysms", ("a small grey close up of the retina crossed by dark blood vessels",
                        "a blurry grey patch of eye tissue with thin dark lines")),
    ("stereo_motorcycle", ("a red motorcycle parked in a garage",
                           "a red and black motorbike in front of shelves full of boxes")),
)


def load_photo(name: str) -> np.ndarray:
    """-> the picture as (H, W, 3) uint8 RGB at its original size. Gray pictures are repeated over three
    channels so every sample decodes the same way; `stereo_motorcycle` returns (left, right, disparity), and
    the left view is the photo."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):
        image = image[0]
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name}() is {image.dtype}, not an 8-bit photo")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])  # drop an alpha channel, should one appear


def encode(image: np.ndarray, image_format: str = "jpeg") -> bytes:
    """(H, W, 3) uint8 -> JPEG (quality 95) or PNG (lossless) bytes. Fixed settings: same pixels, same bytes."""
    buf = io.BytesIO()
    if image_format == "jpeg":
        # 4:4:4, no chroma subsampling: the Hubble field's one-pixel galaxies and the rocket's lights keep their
        # colour (PSNR >= 40 dB on every photo, against 35 with 4:2:0) for about a fifth more bytes.
        Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_photo_shards(out_dir: str, *, image_format: str = "jpeg", fmt: str = "webdataset") -> dict[str, Any]:
    """Write every available photo of PHOTOS, in table order, to `<out_dir>/val/` as one shard (WebDataset
    tar, or Parquet with fmt="parquet"); each sample's json carries its captions, the skimage name and size.
    -> {"written", "out", "shards", "photos", "skipped", "format", "image_format"}."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r}; use one of {', '.join(IMAGE_FORMATS)}")
    try:
        import skimage.data  # noqa: F401 - fail here with the fix, not halfway through
    except ImportError:
        raise ImportError("the photo set needs scikit-image: pip install scikit-image") from None
    names, skipped = [], []
    out = Path(out_dir) / SPLIT
    with ShardWriter(out, fmt=fmt, shard_size=len(PHOTOS)) as writer:
        for name, captions in PHOTOS:
            try:
                image = load_photo(name)
            # An older or trimmed scikit-image may lack the file or want pooch to fetch it: skip, never fatal.
            except (ImportError, OSError, ValueError, AttributeError):
                skipped.append(name)
                continue
            meta = {"name": name, "source": f"skimage.data.{name}", "width": int(image.shape[1]),
                    "height": int(image.shape[0]), "split": SPLIT}
            writer.write(encode(image, image_format), IMAGE_FORMATS[image_format], list(captions), meta)
            names.append(name)
    return {"written": writer.count, "out": str(out), "shards": [str(p) for p in writer.paths], "photos": names,
            "skipped": skipped, "format": fmt, "image_format": image_format}
