"""Training sample counts from what the data already says, in time that does not grow with the corpus:
img2dataset's `NNNNN_stats.json` beside each shard ("successes": the samples it wrote), or a Parquet
shard's footer, or `data.num_samples`. Only when none of these covers every shard must a pass count them.

The small files are read in parallel threads: on S3 each read is a round trip, and 10^4 shards must take
seconds, not minutes. No Ray here.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.formats.shards import shard_format


@dataclass
class SampleCounts:
    per_shard: dict[str, int] = field(default_factory=dict)  # shard path -> its samples, where every one is known
    total: int = 0
    source: str = ""  # stats | parquet | listing (CSV rows, folder images) | num_samples | "" (a pass must count)
    warning: str = ""  # data.num_samples disagreeing with the files: one line with both numbers


def stats_path(path: str) -> str:
    return path.rsplit(".", 1)[0] + "_stats.json"


def _inner(path: str) -> str:
    return path[len("s3://"):] if path.startswith("s3://") else str(Path(path).absolute())


def _from_stats(fs, path: str) -> int | None:
    try:
        with fs.open(_inner(stats_path(path)), "rb") as f:
            n = json.loads(f.read()).get("successes")
    except (OSError, ValueError, AttributeError):
        return None  # missing or unreadable: this shard's count is unknown
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def _from_footer(fs, path: str) -> int | None:
    """A Parquet shard's rows; img2dataset's Parquet output keeps failed downloads as rows with status !=
    success, which are no samples: its stats file then says, else the status column is read (only it)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        with fs.open(_inner(path), "rb") as f:
            pf = pq.ParquetFile(f)
            if "status" not in pf.schema_arrow.names:
                return pf.metadata.num_rows
            n = _from_stats(fs, path)
            if n is not None:
                return n
            status = pf.read(columns=["status"]).column("status")
            return int(pc.sum(pc.equal(status, "success")).as_py() or 0)
    except (OSError, pa.ArrowInvalid):
        return None


def count_samples(paths: list[str], num_samples: int = 0, tolerance: float = 0.03) -> SampleCounts:
    """Counts per shard and in all, and where they came from (see the module doc)."""
    try:
        kind = shard_format(paths[0]) if paths else ""
    except ValueError:  # not a shard name: nothing can be read from it
        paths = []
    if not paths:
        return SampleCounts(total=num_samples, source="num_samples") if num_samples else SampleCounts()
    if kind in ("csv", "folder"):
        return _listed(paths, num_samples, tolerance)
    from pipeline import storage

    fs, _ = storage.filesystem(paths[0])  # one client for every read: a new S3 client per file costs seconds
    parquet = kind == "parquet"
    read = _from_footer if parquet else _from_stats
    with ThreadPoolExecutor(16) as pool:
        found = list(pool.map(lambda p: read(fs, p), paths))
    if any(n is None for n in found):
        return SampleCounts(total=num_samples, source="num_samples") if num_samples else SampleCounts()
    per_shard = dict(zip(paths, found))
    total, source = sum(found), "parquet" if parquet else "stats"
    warning = ""
    if num_samples and abs(num_samples - total) > tolerance * num_samples:
        warning = disagreement(num_samples, total, source)
    return SampleCounts(per_shard, total, source, warning)


def _listed(paths: list[str], num_samples: int, tolerance: float) -> SampleCounts:
    """A CSV's data rows, a folder's images: the listing is the count (each row a sample or a counted skip)."""
    from pipeline import storage
    from pipeline.data.formats import files
    from pipeline.data.formats.shards import arrow_paths

    fs = storage.arrow_filesystem(paths[0])[0]
    count = files.count_folder if shard_format(paths[0]) == "folder" else files.count_csv
    with ThreadPoolExecutor(16) as pool:
        found = list(pool.map(lambda b: count(fs, b), arrow_paths(paths)))
    total = sum(found)
    warning = disagreement(num_samples, total, "listing") if num_samples and abs(
        num_samples - total) > tolerance * num_samples else ""
    return SampleCounts(dict(zip(paths, found)), total, "listing", warning)


SMALL_SHARDS_BYTES = 64 * 2**20  # shards this small in all may be counted by reading them, when no file says
_READ_COUNTS: dict[tuple, int] = {}  # (path, size, mtime) of each shard -> the count read from them


def count_or_read(paths: list[str], max_bytes: int | None = None) -> int:
    """Samples in `paths` by `count_samples`; where no file says and the shards hold at most `max_bytes` in all,
    by reading their rows here (a small evaluation set on S3 often comes without img2dataset's stats files).
    0 where neither can say."""
    total = count_samples(paths).total
    if total or not paths:
        return total
    import pyarrow.fs as pafs

    from pipeline import storage
    from pipeline.data.formats.shards import arrow_paths, iter_shard, shard_names

    fs, _ = storage.arrow_filesystem(paths[0])
    infos = fs.get_file_info(arrow_paths(paths))
    limit = SMALL_SHARDS_BYTES if max_bytes is None else max_bytes
    if any(i.type != pafs.FileType.File for i in infos) or sum(i.size for i in infos) > limit:
        return 0
    # A run asks about its gallery several times (validation, embedding, thumbnails): the files are read once,
    # and read again only when they changed.
    key = tuple((i.path, i.size, i.mtime_ns) for i in infos)
    if key not in _READ_COUNTS:
        names = shard_names(paths)
        _READ_COUNTS[key] = sum(1 for p in paths for row in iter_shard(p, names[p], with_images=False, fs=fs)
                                if not row["problem"])
    return _READ_COUNTS[key]


def disagreement(num_samples: int, total: int, source: str) -> str:
    """The one-line warning when data.num_samples and the files' counts differ (relative to num_samples)."""
    what = {"stats": "img2dataset stats", "parquet": "Parquet footers", "listing": "CSV rows or image files"}[source]
    diff = 100 * abs(num_samples - total) / max(num_samples, 1)
    return (f"data.num_samples={num_samples} but the shards' {what} say {total} samples ({diff:.1f} % "
            f"{'fewer' if total < num_samples else 'more'}); using the {source} — fix or drop data.num_samples")
