"""Sample counts from img2dataset stats files and Parquet footers, never a pass over the samples; the fallbacks
when a shard's count is unknown, and the warning when data.num_samples disagrees with the files."""
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.data.formats import counts
from pipeline.data.formats.writer import ShardWriter

JPG = b"\xff\xd8 not really a jpeg \xff\xd9"


def _write(out: Path, n: int, fmt: str = "webdataset", shard_size: int = 7) -> list[str]:
    with ShardWriter(out, fmt=fmt, shard_size=shard_size) as w:
        for i in range(n):
            w.write(JPG, "jpg", [f"caption {i}"])
    return [str(p) for p in w.paths]


def _samples_in_tar(path: str) -> int:
    """The slow reference: one member per sample carries the caption."""
    with tarfile.open(path) as tar:
        return sum(1 for m in tar.getmembers() if m.name.endswith(".txt"))


def test_stats_give_exact_totals(tmp_path):
    paths = _write(tmp_path, 25)
    c = counts.count_samples(paths)
    assert c.source == "stats" and c.warning == ""
    assert c.per_shard == {p: _samples_in_tar(p) for p in paths}
    assert c.total == 25 == sum(_samples_in_tar(p) for p in paths)
    assert list(c.per_shard.values()) == [7, 7, 7, 4]


def test_successes_not_count_is_what_the_tar_holds(tmp_path):
    [path] = _write(tmp_path, 5)
    stats = {"count": 8, "successes": 5, "failed_to_download": 2, "failed_to_resize": 1}
    (tmp_path / "00000_stats.json").write_text(json.dumps(stats))
    assert counts.count_samples([path]).total == 5 == _samples_in_tar(path)


def test_one_missing_stats_file_falls_back(tmp_path):
    paths = _write(tmp_path, 25)
    (tmp_path / "00002_stats.json").unlink()
    unknown = counts.count_samples(paths)
    assert (unknown.source, unknown.total, unknown.per_shard) == ("", 0, {})
    given = counts.count_samples(paths, num_samples=1000)
    assert (given.source, given.total, given.per_shard, given.warning) == ("num_samples", 1000, {}, "")


@pytest.mark.parametrize("content", ["{not json", json.dumps({"count": 7}), json.dumps({"successes": "7"}),
                                     json.dumps({"successes": True}), json.dumps([7])])
def test_unreadable_stats_file_falls_back(tmp_path, content):
    paths = _write(tmp_path, 14)
    (tmp_path / "00001_stats.json").write_text(content)
    assert counts.count_samples(paths, num_samples=50).source == "num_samples"


def test_num_samples_disagreeing_warns_and_the_stats_win(tmp_path):
    paths = _write(tmp_path, 25)
    c = counts.count_samples(paths, num_samples=1000)
    assert c.source == "stats" and c.total == 25
    assert "data.num_samples=1000" in c.warning and "25 samples" in c.warning and "\n" not in c.warning
    assert "97.5 % fewer" in c.warning
    assert "more" in counts.count_samples(paths, num_samples=20).warning


def test_num_samples_within_tolerance_is_silent(tmp_path):
    paths = _write(tmp_path, 100, shard_size=30)
    for n in (98, 100, 102):
        c = counts.count_samples(paths, num_samples=n)
        assert (c.source, c.total, c.warning) == ("stats", 100, "")


def test_example_warning_line():
    line = counts.disagreement(1000000, 912345, "stats")
    assert line == ("data.num_samples=1000000 but the shards' img2dataset stats say 912345 samples (8.8 % fewer); "
                    "using the stats — fix or drop data.num_samples")


def test_parquet_footers_equal_row_counts(tmp_path):
    paths = []
    for i, n in enumerate((3, 0, 11)):
        path = tmp_path / f"{i:05d}.parquet"
        pq.write_table(pa.table({"key": [str(k) for k in range(n)], "caption": ["c"] * n},
                                schema=pa.schema([("key", pa.string()), ("caption", pa.string())])), path)
        paths.append(str(path))
    c = counts.count_samples(paths)
    assert c.source == "parquet"
    assert c.per_shard == {p: pq.read_table(p).num_rows for p in paths} and c.total == 14


def _img2dataset_parquet(path: Path, statuses: list[str], row_group_size: int = 4) -> None:
    n = len(statuses)
    table = pa.table({"image": [{"bytes": JPG, "path": "x.jpg"}] * n,  # a struct first: leaf != field index
                      "key": [f"{k:09d}" for k in range(n)], "caption": ["c"] * n, "status": statuses})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_img2dataset_parquet_counts_only_successes(tmp_path):
    statuses = ["success", "failed_to_download", "success", "success", "failed_to_resize", "success", "success"]
    _img2dataset_parquet(tmp_path / "00000.parquet", statuses)
    _img2dataset_parquet(tmp_path / "00001.parquet", ["success"] * 9)  # known from row-group statistics
    paths = [str(tmp_path / "00000.parquet"), str(tmp_path / "00001.parquet")]
    c = counts.count_samples(paths)
    assert c.source == "parquet" and list(c.per_shard.values()) == [5, 9] and c.total == 14


def test_img2dataset_parquet_prefers_its_stats_file(tmp_path):
    _img2dataset_parquet(tmp_path / "00000.parquet", ["success", "failed_to_download"])
    (tmp_path / "00000_stats.json").write_text(json.dumps({"count": 2, "successes": 1}))
    assert counts.count_samples([str(tmp_path / "00000.parquet")]).total == 1
    # the writer's own Parquet shards carry a status column and a stats file
    paths = _write(tmp_path / "own", 10, fmt="parquet", shard_size=4)
    c = counts.count_samples(paths)
    assert (c.source, c.total, list(c.per_shard.values())) == ("parquet", 10, [4, 4, 2])


def test_unreadable_parquet_falls_back(tmp_path):
    paths = _write(tmp_path, 10, fmt="parquet", shard_size=5)
    Path(paths[1]).write_bytes(b"not parquet")
    (tmp_path / "00001_stats.json").unlink()
    assert counts.count_samples(paths).source == ""


def test_no_shards_or_unknown_format_is_unknown(tmp_path):
    assert counts.count_samples([]).source == ""
    (tmp_path / "a.zip").write_bytes(b"")
    assert counts.count_samples([str(tmp_path / "a.zip")], num_samples=5).source == "num_samples"


def test_counts_come_from_the_stats_files_alone(tmp_path):
    """10^3 shards' stats only (no tar is opened): a missing tar with its stats present still counts."""
    paths = []
    for i in range(1000):
        (tmp_path / f"{i:05d}_stats.json").write_text(json.dumps({"count": 10, "successes": 9}))
        paths.append(str(tmp_path / f"{i:05d}.tar"))
    c = counts.count_samples(paths)
    assert c.total == 9000 and c.source == "stats"

@pytest.fixture(scope="module")
def s3_bucket():
    """Bucket 'shards' on the moto server that tests/unit/test_s3_errors.py starts."""
    pytest.importorskip("moto")
    import boto3

    from tests.unit.test_s3_errors import _moto

    proc, url = _moto({})
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="shards")
    saved = storage.options()
    storage.configure(endpoint_url=url)
    yield url
    storage.configure(**saved)
    proc.terminate()
    proc.wait(10)


def test_counts_on_s3(tmp_path, s3_bucket):
    local = _write(tmp_path / "wds", 20)
    _img2dataset_parquet(tmp_path / "pq" / "00000.parquet", ["success", "failed_to_download", "success"]) \
        if (tmp_path / "pq").mkdir() is None else None
    storage.upload_tree(tmp_path / "wds", "s3://shards/wds")
    storage.upload_tree(tmp_path / "pq", "s3://shards/pq")
    remote = [f"s3://shards/wds/{Path(p).name}" for p in local]
    c = counts.count_samples(remote, num_samples=20)
    assert (c.source, c.total, c.warning) == ("stats", 20, "")
    assert c.per_shard == {r: _samples_in_tar(p) for r, p in zip(remote, local)}
    assert counts.count_samples(["s3://shards/pq/00000.parquet"]).total == 2
    storage.filesystem("s3://shards")[0].rm("shards/wds/00001_stats.json")
    assert counts.count_samples(remote).source == ""


def test_small_shards_no_file_counts_are_counted_by_reading(tmp_path):
    paths = _write(tmp_path, 25)
    for p in tmp_path.glob("*_stats.json"):
        p.unlink()
    assert counts.count_samples(paths).total == 0  # no file says
    assert counts.count_or_read(paths) == 25 == sum(_samples_in_tar(p) for p in paths)
    size = sum(Path(p).stat().st_size for p in paths)
    assert counts.count_or_read(paths, max_bytes=size) == 25
    assert counts.count_or_read(paths, max_bytes=size - 1) == 0  # too large to read here: still unknown
    assert counts.count_or_read(paths + [str(tmp_path / "00009.tar")]) == 0  # a missing shard: unknown


def test_files_that_count_are_not_read(tmp_path, monkeypatch):
    paths = _write(tmp_path, 25)
    monkeypatch.setattr("pipeline.data.formats.shards.iter_shard", lambda *a, **k: pytest.fail("read a counted shard"))
    assert counts.count_or_read(paths, max_bytes=0) == 25


def test_a_read_count_is_kept_until_the_files_change(tmp_path, monkeypatch):
    out = tmp_path / "d"
    paths = _write(out, 10)
    for p in out.glob("*_stats.json"):
        p.unlink()
    assert counts.count_or_read(paths) == 10
    with monkeypatch.context() as m:  # the same files again: no second read
        m.setattr("pipeline.data.formats.shards.iter_shard", lambda *a, **k: pytest.fail("read the same files twice"))
        assert counts.count_or_read(paths) == 10
    import shutil

    shutil.rmtree(out)
    paths = _write(out, 12)  # rewritten: read again
    for p in out.glob("*_stats.json"):
        p.unlink()
    assert counts.count_or_read(paths) == 12
