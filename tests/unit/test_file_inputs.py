"""CSV/TSV listings and image folders read into the rows every format gives (`data.formats.files`): real photos
(scikit-image's) in portrait and landscape crops, relative and absolute paths, local and on a real S3 endpoint
(moto's server), each bad row skipped and counted by reason; `data convert-csv` written as shards that read back
as the same samples; a folder gallery keeping its caption-less images for a search index."""
import csv
import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError
from pipeline.data.formats import files
from pipeline.data.formats.counts import count_samples
from pipeline.data.formats.shards import iter_shard, shard_names
from pipeline.data.ingest import check_shards, resolve_shards

skimage = pytest.importorskip("skimage.data")

PHOTOS = {"chelsea": "an orange and brown striped cat", "coffee": "a red coffee cup on a saucer",
          "astronaut": "an astronaut in an orange suit", "rocket": "a rocket on its launch pad"}


def _crop(name: str, portrait: bool) -> bytes:
    img = getattr(skimage, name)()
    h, w = img.shape[:2]
    img = img[:, : h * 2 // 3] if portrait else img[: w // 2]  # taller than wide, or wider than tall
    buf = BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_csv(path: Path, rows: list[list[str]], sep: str, header=("filepath", "title")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=sep)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def photo_csv(tmp_path):
    """data/train.tsv (relative paths, one absolute) beside data/img/<name>.jpg, with four bad rows."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = []
    for i, (name, caption) in enumerate(PHOTOS.items()):
        (root / "img" / f"{name}.jpg").write_bytes(_crop(name, portrait=i % 2 == 0))
        rows.append([f"img/{name}.jpg" if i else str(root / "img" / f"{name}.jpg"), caption])
    (root / "img" / "broken.jpg").write_bytes(b"not a jpeg at all")
    rows += [["img/gone.jpg", "a photo that was deleted"], ["", "a row naming no image"],
             ["img/broken.jpg", "bytes that are no image"], ["img/coffee.jpg"]]
    return root, rows


@pytest.mark.parametrize("sep,suffix", [("\t", "tsv"), (",", "csv"), ("\t", "csv")])
def test_csv_rows_with_relative_and_absolute_paths_and_bad_rows_counted(photo_csv, sep, suffix):
    root, rows = photo_csv
    path = _write_csv(root / f"train.{suffix}", rows, sep)
    shards = resolve_shards(str(root))  # the folder holds a listing: the listing is the dataset, not its images
    assert shards.paths == [str(path)]
    check_shards(shards.paths, "data.train")
    got = list(iter_shard(str(path), shard_names(shards.paths)[str(path)]))
    assert [r["key"] for r in got] == [f"train.{suffix}/{i:09d}" for i in range(len(rows))]
    for (name, caption), row in zip(PHOTOS.items(), got):
        assert row["problem"] == "" and row["txt"] == caption
        assert row["image"] == (root / "img" / f"{name}.jpg").read_bytes()
        assert json.loads(row["json"])["image_path"] == str(root / "img" / f"{name}.jpg")
    assert [r["problem"] for r in got[4:]] == ["missing_image", "missing_image", "", "malformed_row"]
    assert count_samples(shards.paths).total == len(rows)  # the rows are the count: each a sample or a skip

    from pipeline.data.formats.shards import rows_to_batch
    from pipeline.data.transforms import prepare_eval_batch

    out, skips = prepare_eval_batch(rows_to_batch(got), 32)
    assert len(out["key"]) == 4 and {r: len(k) for r, k in skips.items()} == {
        "missing_image": 2, "corrupt_image": 1, "malformed_row": 1}
    assert {out["image"][i].shape[1:] for i in range(4)} == {(32, 32)}  # portrait and landscape, one view


def test_a_header_without_the_configured_columns_is_refused_naming_the_key(tmp_path):
    path = _write_csv(tmp_path / "x.csv", [["a.jpg", "cap"]], ",", header=("path", "caption"))
    with pytest.raises(ConfigError, match=r"data.train: .*has no column 'filepath' \(data.csv_image_key\); its "
                                          r"columns are \['path', 'caption'\]"):
        check_shards([str(path)], "data.train")
    files.use(files.CsvLayout("path", "caption"))
    try:
        check_shards([str(path)], "data.train")
        assert next(iter_shard(str(path), "x.csv"))["txt"] == "cap"
    finally:
        files.use(files.CsvLayout())


def test_a_csv_on_s3_reads_its_images_beside_it(tmp_path, photo_csv):
    pytest.importorskip("moto")
    import boto3

    from pipeline import storage
    from tests.unit.test_s3_errors import _moto

    root, rows = photo_csv
    _write_csv(root / "train.csv", [r for r in rows[1:4]], ",")  # relative paths only
    proc, url = _moto({})
    saved = storage.options()
    try:
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="pairs")
        storage.configure(endpoint_url=url)
        storage.upload_tree(root, "s3://pairs/set")
        shards = resolve_shards("s3://pairs/set")
        assert shards.paths == ["s3://pairs/set/train.csv"]
        got = list(iter_shard(shards.paths[0], "train.csv"))
        assert [json.loads(r["json"])["image_path"] for r in got] == [f"s3://pairs/set/{r[0]}" for r in rows[1:4]]
        assert [r["image"] for r in got] == [(root / r[0]).read_bytes() for r in rows[1:4]]
    finally:
        storage.configure(**saved)
        proc.terminate()
        proc.wait(10)


def _photo_folder(root: Path) -> Path:
    """root/cats/{chelsea.jpg,chelsea.txt,wide.png}, root/cups/coffee.jpg (no caption), root/cups/a.jpg + a.png."""
    for sub in ("cats", "cups"):
        (root / sub).mkdir(parents=True)
    (root / "cats" / "chelsea.jpg").write_bytes(_crop("chelsea", True))
    (root / "cats" / "chelsea.txt").write_text("a tabby cat\n")
    Image.open(BytesIO(_crop("astronaut", False))).save(root / "cats" / "wide.png")
    (root / "cups" / "coffee.jpg").write_bytes(_crop("coffee", False))
    (root / "cups" / "a.jpg").write_bytes(_crop("rocket", True))
    (root / "cups" / "a.png").write_bytes(_crop("rocket", False))
    (root / "cups" / "notes.md").write_text("not an image")
    return root


def test_an_image_folder_is_one_shard_per_directory_with_sidecar_captions(tmp_path):
    root = _photo_folder(tmp_path / "photos")
    shards = resolve_shards(str(root))
    assert shards.paths == [f"{root}/cats/", f"{root}/cups/"]
    names = shard_names(shards.paths)
    rows = [r for p in shards.paths for r in iter_shard(p, names[p])]
    assert [(r["key"], r["problem"]) for r in rows] == [
        ("cats/chelsea", ""), ("cats/wide", ""), ("cups/a", ""), ("cups/a", "duplicate_key"), ("cups/coffee", "")]
    assert rows[0]["txt"] == b"a tabby cat\n" and rows[1]["txt"] is None
    assert count_samples(shards.paths).per_shard == {f"{root}/cats/": 2, f"{root}/cups/": 3}

    from pipeline.data.formats.shards import rows_to_batch
    from pipeline.data.transforms import prepare_eval_batch

    batch = rows_to_batch(rows)
    evaluation, skips = prepare_eval_batch(batch, 32)
    assert list(evaluation["key"]) == ["cats/chelsea"] and set(skips) == {"missing_caption", "duplicate_key"}
    gallery, skips = prepare_eval_batch(batch, 32, captionless=True)  # a search gallery keeps them
    assert list(gallery["key"]) == ["cats/chelsea", "cats/wide", "cups/a", "cups/coffee"]
    assert list(gallery["path"]) == [f"{root}/cats/chelsea.jpg", f"{root}/cats/wide.png", f"{root}/cups/a.jpg",
                                     f"{root}/cups/coffee.jpg"]
    assert json.loads(gallery["captions"][1]) == [] and set(skips) == {"duplicate_key"}


def test_convert_csv_writes_shards_that_read_back_as_the_csv(photo_csv, tmp_path, capsys):
    from pipeline.cli import main

    root, rows = photo_csv
    path = _write_csv(root / "pairs.csv", rows, ",", header=("image", "text", "extra"))
    out = tmp_path / "shards"
    assert main(["data", "convert-csv", "--csv", str(path), "--out", str(out), "--csv-img-key", "image",
                 "--csv-caption-key", "text", "--shard-size", "3"]) == 0
    said = capsys.readouterr().out
    assert "wrote 4 samples into 2 webdataset shard(s)" in said and "missing_image: 2 skipped" in said
    assert "corrupt_image: 1 skipped" in said and "malformed_row: 1 skipped" in said, said
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00000_stats.json", "00001.tar", "00001_stats.json"]
    shards = resolve_shards(str(out)).paths
    back = [r for p in shards for r in iter_shard(p, Path(p).name)]
    assert [r["txt"].decode() for r in back] == list(PHOTOS.values())
    assert [r["image"] for r in back] == [(root / "img" / f"{n}.jpg").read_bytes() for n in PHOTOS]
    assert count_samples(shards).total == 4 and count_samples(shards).source == "stats"  # img2dataset's stats files
    assert main(["data", "convert-csv", "--csv", str(path), "--out", str(out)]) == 2
    assert "has no column 'filepath' (data.csv_image_key)" in capsys.readouterr().err


def test_unknown_separator_and_same_columns_are_refused():
    from pipeline.config import EvalJobConfig, load_config

    with pytest.raises(ConfigError, match="data.csv_separator=':'"):
        load_config(EvalJobConfig, None, ["data.csv_separator=:"])
    with pytest.raises(ConfigError, match="two different columns"):
        load_config(EvalJobConfig, None, ["data.csv_caption_key=filepath"])
    assert load_config(EvalJobConfig, None, ["data.csv_separator=tab"]).data.csv_separator == "\t"
    assert np.all([files.is_image_file(n) for n in ("a.JPG", "b.webp", "c.png")])
    assert not any(files.is_image_file(n) for n in (".jpg", "._a.jpg", "a.txt", "jpg"))


@pytest.mark.parametrize("kind", ["csv", "folder"])
def test_an_epoch_over_a_csv_or_folder_resumes_exactly_and_splits_between_workers(tmp_path, kind):
    """The training reader (`epoch.source.read_entry`) over a CSV (and a folder): seeded window shuffle, a
    resumed reader yields exactly the rows after its cursor, and two workers' row shares are disjoint and whole."""
    pytest.importorskip("ray")
    import pyarrow.fs as pafs

    from pipeline.data.epoch.plan import ROW_BITS, RowFilter
    from pipeline.data.epoch.source import read_entry

    (tmp_path / "img").mkdir()
    for j in range(30):
        (tmp_path / "img" / f"{j:02d}.jpg").write_bytes(_crop("coffee", j % 2 == 0) if j < 2 else b"x" * (j + 1))
        (tmp_path / "img" / f"{j:02d}.txt").write_text(f"caption {j}")
    path = str(_write_csv(tmp_path / "e.csv", [[f"img/{j:02d}.jpg", f"caption {j}"] for j in range(30)], ",")) \
        if kind == "csv" else f"{tmp_path / 'img'}/"

    def read(keep=RowFilter()):
        tables = read_entry(pafs.LocalFileSystem(), path, "e", 2, 0, shuffle_seed=3, shuffle_block=8, epoch=1,
                            row_filter=keep, with_images=True)
        rows = [r for t in tables for r in t.to_pylist()]
        return [r["key"] for r in rows], [r["image"] for r in rows], [r["pos"] for r in rows]

    keys, images, pos = read()
    assert sorted(keys) == sorted(f"e/{j:09d}" if kind == "csv" else f"e/{j:02d}" for j in range(30))
    assert keys != sorted(keys) and read() == (keys, images, pos)  # shuffled, and seeded
    assert pos == [(2 << ROW_BITS) | i for i in range(30)]
    assert read(RowFilter(next=(2 << ROW_BITS) | 11)) == (keys[11:], images[11:], pos[11:])
    halves = [read(RowFilter(stride=2, offset=r))[0] for r in (0, 1)]
    assert not set(halves[0]) & set(halves[1]) and sorted(halves[0] + halves[1]) == sorted(keys)
