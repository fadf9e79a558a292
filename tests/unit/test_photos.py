"""The scikit-image photo set: written by ShardWriter, read back by the project's own shard readers (no Ray)
with every photo, its captions and its original pixels."""
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import ingest, transforms

from pipeline.data.formats import shards
from pipeline.data.formats.photos import PHOTOS, SPLIT, load_photo, write_photo_shards

pytest.importorskip("skimage")

PSNR_MIN_DB = 38.0  # JPEG q95 4:4:4 gives >= 40 dB on every photo; a wrong or shifted image gives < 20


def _read_back(split_dir: str) -> list[dict]:
    """Rows as the data.val reader sees them: resolve and check the spec, then the datasource's row parsers."""
    paths = ingest.resolve_shards(split_dir, "data.val").paths
    ingest.check_shards(paths, "data.val")
    names = shards.shard_names(paths)
    rows = []
    for path in paths:
        with open(path, "rb") as f:
            read = shards.iter_parquet_samples if shards.shard_format(path) == "parquet" else shards.iter_tar_samples
            rows += list(read(f, names[path]))
    return rows


def _batch(rows: list[dict]) -> dict:
    return {**{k: [r[k] for r in rows] for k in ("key", "image", "txt", "json", "problem")},
            "seed": [0] * len(rows)}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def jpeg_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos")
    return write_photo_shards(str(out)), out


def test_table_names_real_offline_photos_with_captions():
    names = [n for n, _ in PHOTOS]
    assert len(names) == len(set(names)) >= 15
    for name, captions in PHOTOS:
        assert 2 <= len(captions) <= 3 and all(c == " ".join(c.split()) and len(c.split()) >= 4 for c in captions)
    every = [c for _, caps in PHOTOS for c in caps]
    assert len(every) == len(set(every))  # a caption shared by two photos would make retrieval ambiguous
    assert load_photo("chelsea").shape == (300, 451, 3) and load_photo("camera").shape == (512, 512, 3)


def test_every_photo_reads_back_with_captions_sizes_and_pixels(jpeg_set):
    summary, out = jpeg_set
    assert summary["out"] == str(out / SPLIT) and summary["skipped"] == []
    assert summary["written"] == len(PHOTOS) and summary["photos"] == [n for n, _ in PHOTOS]
    assert [Path(p).name for p in summary["shards"]] == ["00000.tar"]
    rows = _read_back(summary["out"])
    assert [r["problem"] for r in rows] == [""] * len(PHOTOS)
    captions = dict(PHOTOS)
    sizes = set()
    for row in rows:
        meta = json.loads(row["json"])
        name = meta["name"]
        caps, why = transforms.parse_captions(row["txt"], row["json"])
        assert why == "" and caps == list(captions[name]) and row["txt"].decode() == captions[name][0]
        decoded = np.asarray(transforms.decode_image(row["image"]))  # RGB, full size
        original = load_photo(name)
        assert decoded.shape == original.shape == (meta["height"], meta["width"], 3)
        assert _psnr(decoded, original) > PSNR_MIN_DB, name
        sizes.add(decoded.shape[:2])
    assert len(sizes) >= 10  # mixed sizes are the point of the set
    assert {json.loads(r["json"])["name"] for r in rows} == set(captions)


def test_eval_batches_take_every_photo(jpeg_set):
    summary, _ = jpeg_set
    out, skips = transforms.prepare_eval_batch(_batch(_read_back(summary["out"])), 32)
    assert skips == {} and out["image"].shape == (len(PHOTOS), 3, 32, 32)
    assert [json.loads(c) for c in out["captions"]] == [list(c) for _, c in PHOTOS]


def test_same_photos_give_the_same_bytes(jpeg_set, tmp_path):
    again = write_photo_shards(str(tmp_path))
    assert Path(again["shards"][0]).read_bytes() == Path(jpeg_set[0]["shards"][0]).read_bytes()


def test_png_parquet_is_lossless(tmp_path):
    first = write_photo_shards(str(tmp_path), image_format="png", fmt="parquet")
    assert [Path(p).name for p in first["shards"]] == ["00000.parquet"]
    rows = _read_back(first["out"])
    assert len(rows) == len(PHOTOS)
    for row, (name, captions) in zip(rows, PHOTOS):  # keys run in table order; Parquet's json is the captions
        assert int(row["key"].rsplit("/", 1)[1]) == PHOTOS.index((name, captions))
        assert transforms.parse_captions(row["txt"], row["json"])[0] == list(captions)
        np.testing.assert_array_equal(np.asarray(transforms.decode_image(row["image"])), load_photo(name))


def test_unknown_image_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="image_format='webp'; use one of jpeg, png"):
        write_photo_shards(str(tmp_path), image_format="webp")
