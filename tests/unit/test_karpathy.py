import hashlib
import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.data.formats.karpathy import convert_karpathy, format_summary
from pipeline.data.formats.writer import ShardWriter

SPLITS = ["train", "train", "restval", "val", "test"]


def _jpeg(path, i):
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (40 * i, 255 - 40 * i, 7 * i)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())


def _dataset(tmp_path, coco=False, n=5, splits=SPLITS):
    """A tiny Karpathy split file and its images; image i has i+1 captions (one of them blank)."""
    imgs, entries = tmp_path / "images", []
    for i in range(n):
        name = f"COCO_{i:03d}.jpg" if coco else f"{1000 + i}_abc.JPEG"
        sub = "val2014" if i % 2 else "train2014"
        _jpeg(imgs / sub / name if coco else imgs / name, i)
        sents = [{"raw": f"  image {i}\n caption {j} "} for j in range(i + 1)] + [{"raw": "   "}]
        entry = {"filename": name, "split": splits[i % len(splits)], "imgid": i, "sentences": sents}
        if coco:
            entry.update(filepath=sub, cocoid=500 + i, sentids=list(range(i + 1)))
        entries.append(entry)
    json_path = tmp_path / "dataset.json"
    json_path.write_text(json.dumps({"images": entries, "dataset": "coco" if coco else "flickr8k"}))
    return json_path, imgs, entries


def _src(imgs, entry):
    return (imgs / entry.get("filepath", "") / entry["filename"]).read_bytes()


def _read_tar(path):
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        return [(m.name, tar.extractfile(m).read(), m) for m in members]


def _convert(tmp_path, json_path, imgs, name="out", **kw):
    return convert_karpathy(json_path, imgs, tmp_path / name, progress=False, **kw)


def test_webdataset_flickr_all_captions_and_bytes(tmp_path):
    json_path, imgs, entries = _dataset(tmp_path)
    s = _convert(tmp_path, json_path, imgs, splits=("train", "restval"))
    assert s["written"] == 3 and s["splits"] == ["train", "restval"] and len(s["shards"]) == 1
    members = _read_tar(s["shards"][0])
    names = [m[0] for m in members]
    assert names == [f"00000{i:04d}.{e}" for i in range(3) for e in ("jpg", "txt", "json")]
    for i, entry in enumerate(entries[:3]):  # train, train, restval in JSON order
        (_, img, info), (_, txt, _), (_, meta, _) = members[3 * i: 3 * i + 3]
        assert img == _src(imgs, entry)
        assert info.mtime == 0 and info.uid == 0 and info.gid == 0 and info.mode == 0o644
        meta = json.loads(meta.decode("utf-8"))
        assert meta["captions"] == [f"image {i} caption {j}" for j in range(i + 1)]
        assert txt.decode("utf-8") == meta["captions"][0]
        assert meta["key"] == f"00000{i:04d}" and meta["split"] == entry["split"]
        assert meta["filename"] == entry["filename"] and meta["imgid"] == i and meta["source"] == "karpathy"
        assert "cocoid" not in meta


def test_parquet_coco_filepath(tmp_path):
    json_path, imgs, entries = _dataset(tmp_path, coco=True)
    s = _convert(tmp_path, json_path, imgs, splits=("train", "restval", "val", "test"), fmt="parquet")
    assert s["written"] == 5 and s["missing_images"] == 0 and s["shards"][0].endswith("00000.parquet")
    table = pq.read_table(s["shards"][0])
    assert table.column_names[:5] == ["key", "jpg", "caption", "captions", "status"]
    rows = table.to_pylist()
    for i, (row, entry) in enumerate(zip(rows, entries)):
        assert row["jpg"] == _src(imgs, entry) and row["status"] == "success"
        assert row["captions"] == [f"image {i} caption {j}" for j in range(i + 1)]
        assert row["caption"] == row["captions"][0]
        meta = json.loads(row["json"])
        assert meta["cocoid"] == 500 + i and meta["filepath"] == entry["filepath"] and meta["key"] == row["key"]


def test_coco_falls_back_to_flat_folder(tmp_path):
    json_path, imgs, entries = _dataset(tmp_path, coco=True, n=2)
    flat = tmp_path / "flat"
    for e in entries:
        flat.mkdir(exist_ok=True)
        (flat / e["filename"]).write_bytes(_src(imgs, e))
    s = _convert(tmp_path, json_path, flat, splits=("train", "restval"))
    assert s["written"] == 2 and s["missing_images"] == 0


def test_shard_size_splits_and_writes_stats(tmp_path):
    json_path, imgs, _ = _dataset(tmp_path, splits=["test"])
    s = _convert(tmp_path, json_path, imgs, shard_size=2)
    assert [p.rsplit("/", 1)[1] for p in s["shards"]] == ["00000.tar", "00001.tar", "00002.tar"]
    counts = [json.loads((tmp_path / "out" / f"{k:05d}_stats.json").read_text()) for k in range(3)]
    assert [c["count"] for c in counts] == [2, 2, 1]
    assert counts[2] == {"count": 1, "successes": 1, "failed_to_download": 0, "failed_to_resize": 0}
    assert [m[0] for m in _read_tar(s["shards"][2])] == ["000020000.jpg", "000020000.txt", "000020000.json"]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_missing_images_and_captionless_are_skipped(tmp_path):
    json_path, imgs, entries = _dataset(tmp_path, splits=["test"])
    (imgs / entries[1]["filename"]).unlink()
    (imgs / entries[3]["filename"]).unlink()
    data = json.loads(json_path.read_text())
    data["images"][4]["sentences"] = [{"raw": " "}]
    json_path.write_text(json.dumps(data))
    s = _convert(tmp_path, json_path, imgs, fmt="parquet")
    assert s["written"] == 2 and s["missing_images"] == 2 and s["no_captions"] == 1
    assert s["missing_examples"] == [str(imgs / entries[i]["filename"]) for i in (1, 3)]
    assert pq.read_table(s["shards"][0]).column("key").to_pylist() == ["000000000", "000000001"]
    text = format_summary(s)
    assert "wrote 2 samples" in text and "missing images: 2" in text and "without captions: 1" in text


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_second_run_is_byte_identical(tmp_path, fmt):
    json_path, imgs, _ = _dataset(tmp_path, coco=True)
    runs = [_convert(tmp_path, json_path, imgs, name=n, splits=SPLITS[1:], fmt=fmt, shard_size=3)
            for n in ("a", "b")]
    digest = [[hashlib.sha256(open(p, "rb").read()).hexdigest() for p in r["shards"]] for r in runs]
    assert len(digest[0]) == 2 and digest[0] == digest[1]


def test_errors_say_what_to_change(tmp_path):
    json_path, imgs, _ = _dataset(tmp_path, splits=["train", "val"])
    with pytest.raises(ValueError, match="use names from train, restval, val, test"):
        _convert(tmp_path, json_path, imgs, splits=("dev",))
    with pytest.raises(ValueError, match=r"has train: 3, val: 2"):
        _convert(tmp_path, json_path, imgs, splits=("test",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _convert(tmp_path, tmp_path / "nope.json", imgs)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="no 'images' list"):
        _convert(tmp_path, bad, imgs)
    with pytest.raises(ValueError, match="use one of webdataset, parquet"):
        ShardWriter(tmp_path / "w", fmt="tfrecord")
    with pytest.raises(ValueError, match="positive integer"):
        ShardWriter(tmp_path / "w", shard_size=0)


def test_writer_keys_widen_with_shard_size(tmp_path):
    with ShardWriter(tmp_path / "w", fmt="webdataset", shard_size=100000) as w:
        key = w.write(b"\x89PNG", ".PNG", ["a cat"], {"key": "ignored", "extra": 1})
    assert key == "00000" + "00000" and w.count == 1
    names = [m[0] for m in _read_tar(w.paths[0])]
    assert names == [f"{key}.png", f"{key}.txt", f"{key}.json"]
    meta = json.loads(_read_tar(w.paths[0])[2][1])
    assert meta["key"] == key and meta["extra"] == 1 and meta["captions"] == ["a cat"]


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_files_outside_the_folder_listed_twice_or_no_images_are_skipped_by_reason(tmp_path, fmt):
    json_path, imgs, entries = _dataset(tmp_path, splits=["test"], n=4)
    (imgs / entries[1]["filename"]).write_bytes(b"<html>404 not found</html>")  # named .JPEG, holds no image
    _jpeg(tmp_path / "outside.jpg", 9)
    data = json.loads(json_path.read_text())
    data["images"][2]["filename"] = "../outside.jpg"
    data["images"].append(dict(data["images"][0], imgid=99))  # image 0's file listed a second time
    json_path.write_text(json.dumps(data))
    s = _convert(tmp_path, json_path, imgs, fmt=fmt)
    assert s["written"] == 2  # images 0 and 3
    assert s["refused"] == {"not_an_image": 1, "outside_images": 1, "duplicate_file": 1}
    assert s["refused_examples"]["outside_images"] == ["../outside.jpg"]
    text = format_summary(s)
    assert "outside_images: 1 skipped (e.g. ../outside.jpg); a filename in the split file leads out" in text
    assert "duplicate_file: 1 skipped" in text and "not_an_image: 1 skipped" in text
