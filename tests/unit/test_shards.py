"""The shard reader: img2dataset Parquet rows, failed downloads, unreadable files; shard path forms."""
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.data import ingest
from pipeline.data.formats import shards
from tests import faults


def _parquet(table: pa.Table) -> io.BytesIO:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    buf.seek(0)
    return buf


def test_img2dataset_parquet_rows():
    jpg = faults.encode(faults.good_image())
    table = pa.table({"key": ["000", "001", "002"], "jpg": [jpg, None, jpg],
                      "caption": ["a cat", "lost", "a dog"], "status": ["success", "failed_to_download", "success"],
                      "captions": [["a cat", "a small cat"], None, None]})
    rows = list(shards.iter_parquet_samples(_parquet(table), "00000.parquet"))
    assert [r["key"] for r in rows] == ["00000.parquet/000", "00000.parquet/001", "00000.parquet/002"]
    assert [r["problem"] for r in rows] == ["", "not_downloaded", ""]
    assert json.loads(rows[0]["json"])["captions"] == ["a cat", "a small cat"] and rows[2]["txt"] == "a dog"
    assert rows[0]["image"] == jpg


def test_hugging_face_image_struct_and_caption_only_reads():
    jpg = faults.encode(faults.good_image())
    table = pa.table({"image": [{"bytes": jpg, "path": "x.jpg"}], "txt": ["a bird"]})
    [row] = shards.iter_parquet_samples(_parquet(table), "s.parquet")
    assert row["image"] == jpg and row["key"] == "s.parquet/000000000"
    [row] = shards.iter_parquet_samples(_parquet(table), "s.parquet", with_images=False)
    assert row["image"] is None and row["has_image"]


def test_unreadable_parquet_is_one_counted_row():
    rows = list(shards.iter_parquet_samples(io.BytesIO(b"PAR1 not really"), "bad.parquet"))
    assert [r["problem"] for r in rows] == ["unreadable_shard"]


def test_parquet_without_image_column_is_rejected_before_ray(tmp_path):
    pq.write_table(pa.table({"url": ["u"], "caption": ["c"]}), tmp_path / "a.parquet")
    with pytest.raises(ConfigError, match="image-bytes column"):
        ingest.check_shards([str(tmp_path / "a.parquet")], "data.train")


def test_brace_gaps_are_missing_shards_but_a_missing_path_is_an_error(tmp_path):
    for i in (0, 2):
        faults.write_tar(tmp_path / f"{i:05d}.tar", [("a.txt", b"x")])
    found = ingest.resolve_shards(str(tmp_path / "{00000..00002}.tar"), "data.train")
    assert [p[-9:] for p in found.paths] == ["00000.tar", "00002.tar"] and found.missing[0].endswith("00001.tar")
    with pytest.raises(ConfigError, match="does not exist"):
        ingest.resolve_shards(str(tmp_path / "00001.tar"), "data.train")
    pq.write_table(pa.table({"jpg": [b""], "caption": ["c"]}), tmp_path / "x.parquet")
    with pytest.raises(ConfigError, match="mixes WebDataset and Parquet"):
        ingest.resolve_shards(str(tmp_path), "data.train")


def _img2dataset_webdataset_folder(tmp_path):
    """img2dataset's WebDataset output: NNNNN.tar, NNNNN.parquet (download metadata, no image column) and
    NNNNN_stats.json side by side."""
    jpg = faults.encode(faults.good_image())
    faults.write_tar(tmp_path / "00000.tar", [("000000000.jpg", jpg), ("000000000.txt", b"a cat")])
    pq.write_table(pa.table({"caption": ["a cat", "a lost dog"], "url": ["http://h/0.jpg", "http://h/1.jpg"],
                             "key": ["000000000", "000000001"], "status": ["success", "failed_to_download"],
                             "error_message": [None, "HTTP Error 404: File not found"]}),
                   tmp_path / "00000.parquet")
    stats = {"count": 2, "successes": 1, "failed_to_download": 1}
    (tmp_path / "00000_stats.json").write_text(json.dumps(stats))
    return tmp_path


def test_img2dataset_webdataset_folder_is_its_tars(tmp_path):
    folder = _img2dataset_webdataset_folder(tmp_path)
    assert ingest.resolve_shards(str(folder), "data.train").paths == [str(folder / "00000.tar")]
    # A Parquet that does hold images beside a tar is a second format, not metadata: still refused.
    pq.write_table(pa.table({"jpg": [b""], "caption": ["c"]}), folder / "00001.parquet")
    faults.write_tar(folder / "00001.tar", [("a.txt", b"x")])
    with pytest.raises(ConfigError, match="mixes WebDataset and Parquet"):
        ingest.resolve_shards(str(folder), "data.train")


def test_img2dataset_metadata_failures_are_not_downloaded_rows(tmp_path):
    folder = _img2dataset_webdataset_folder(tmp_path)
    with open(folder / "00000.parquet", "rb") as f:
        [row] = shards.iter_failed_downloads(f, "00000.tar")
    assert row["key"] == "00000.tar/000000001" and row["problem"] == "not_downloaded"
    assert json.loads(row["json"]) == {"url": "http://h/1.jpg",
                                       "error_message": "HTTP Error 404: File not found"}
    assert list(shards.iter_failed_downloads(io.BytesIO(b"not parquet"), "00000.tar")) == []


def test_parquet_failed_rows_carry_url_and_error():
    table = pa.table({"key": ["0", "1"], "jpg": [b"x", None], "caption": ["a", "b"], "url": ["u0", "u1"],
                      "status": ["success", "failed_to_download"], "error_message": [None, "timeout"]})
    rows = list(shards.iter_parquet_samples(_parquet(table), "p.parquet"))
    assert rows[0]["json"] is None
    assert json.loads(rows[1]["json"]) == {"url": "u1", "error_message": "timeout"}


@pytest.mark.parametrize("bad", [b"", b"PAR1 garbage, no footer"])
def test_preflight_looks_past_unreadable_parquet(tmp_path, bad):
    (tmp_path / "00000.parquet").write_bytes(bad)
    pq.write_table(pa.table({"jpg": [b"x"], "caption": ["c"]}), tmp_path / "00001.parquet")
    paths = ingest.expand_paths(str(tmp_path))
    ingest.check_shards(paths, "data.train")  # the readable second one is enough; the first is counted later
    with pytest.raises(ConfigError, match="none of the 1 Parquet shard"):
        ingest.check_shards(paths[:1], "data.train")


def test_shard_names_are_paths_below_the_common_root():
    assert shards.shard_names(["/d/a/00000.tar", "/d/b/00000.tar"]) == {
        "/d/a/00000.tar": "a/00000.tar", "/d/b/00000.tar": "b/00000.tar"}
    assert shards.shard_names(["/d/x/00000.tar"]) == {"/d/x/00000.tar": "00000.tar"}
    assert list(shards.shard_names(["s3://bkt/p/a/1.tar", "s3://bkt/p/2.tar"]).values()) == ["a/1.tar",
                                                                                             "2.tar"]
    assert list(shards.shard_names(["s3://b1/1.tar", "s3://b2/1.tar"]).values()) == ["b1/1.tar", "b2/1.tar"]
