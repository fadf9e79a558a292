"""The shard reader: img2dataset Parquet rows, failed downloads, unreadable files; shard path forms."""
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.data import ingest, shards
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
