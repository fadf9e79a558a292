"""One Ray Data datasource for img2dataset shards, WebDataset `.tar` or `.parquet`, local or s3://.

Every shard becomes rows {key, image, txt, json, problem, seed}:
- key is `shard-file/KEY`, unique across shards;
- problem is '' for a readable row, else why the row carries no sample: `not_downloaded` (an img2dataset
  Parquet row whose status is not success) or `truncated_shard` (a tar that ends mid-member: the samples
  before the cut are kept, this one row records the shard);
- seed is a per-sample seed for this epoch, so augmentation and caption choice are reproducible whatever
  the block boundaries and whichever worker gets the sample.
Shuffling is seeded and reshuffled every epoch (Ray Data's execution index): file order, then rows inside
windows of `shuffle_block` samples with a window offset that moves each epoch.
"""
from __future__ import annotations

import json
import tarfile
import zlib
from pathlib import PurePosixPath
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
FORMATS = {"tar": "webdataset", "parquet": "parquet"}
# Rows that are not samples: they are counted, but not in the share that data.max_skip_fraction bounds.
NOT_SAMPLES = ("not_downloaded", "truncated_shard", "unreadable_shard", "missing_shard")


def shard_format(path: str) -> str:
    ext = PurePosixPath(path).name.rsplit(".", 1)[-1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: not a shard; use .tar (WebDataset) or .parquet")
    return FORMATS[ext]


def iter_tar_samples(stream, shard: str, with_images: bool = True) -> Iterator[dict]:
    """Group a tar stream's members into samples by key (the member name up to its first dot).

    A truncated or otherwise unreadable tail ends the iteration with one `truncated_shard` row; what came
    before it is kept."""
    current: dict | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                path = PurePosixPath(info.name)
                base, _, suffix = path.name.partition(".")
                suffix = suffix.lower()
                col = "image" if suffix in IMAGE_SUFFIXES else suffix if suffix in ("txt", "json") else None
                key = f"{shard}/{(path.parent / base).as_posix()}"
                if current is not None and key != current["key"]:
                    yield current
                    current = None
                if current is None:
                    current = {"key": key, "image": None, "txt": None, "json": None, "problem": "",
                               "has_image": False}
                if col is None or current.get(col) is not None:
                    continue  # unknown members, and a second image of one key, are ignored
                if col == "image":
                    current["has_image"] = True
                    if not with_images:
                        continue
                data = tar.extractfile(info).read()
                if len(data) < info.size:
                    raise tarfile.ReadError("unexpected end of data")
                current[col] = data
    except (tarfile.TarError, EOFError, zlib.error):
        # The sample being read when the data ran out is kept only if its image and a caption came through
        # whole; otherwise it is part of what the truncated_shard row stands for.
        if current is not None and current["has_image"] and (current["txt"] or current["json"]):
            yield current
        current = None
        yield {"key": f"{shard}/", "image": None, "txt": None, "json": None, "problem": "truncated_shard",
               "has_image": False}
    if current is not None:
        yield current


def _column(names: list[str], *wanted: str) -> str | None:
    return next((n for n in wanted if n in names), None)


def parquet_schema(path: str):
    """The Arrow schema in a Parquet shard's footer (local or s3://): a cheap read, done before Ray work."""
    import pyarrow.parquet as pq

    from pipeline import storage

    fs, inner = storage.filesystem(path)
    with fs.open(inner, "rb") as f:
        return pq.ParquetFile(f).schema_arrow


def check_parquet_schema(names: list[str], path: str) -> None:
    """Fail early, naming the columns, when a Parquet shard lacks an image or a caption column."""
    if not ({"jpg", "image"} & set(names)) or not ({"caption", "txt", "captions"} & set(names)):
        raise ValueError(f"{path}: Parquet shards need an image-bytes column (jpg or image) and a caption "
                         f"column (caption, txt or captions); this one has {names}")


def iter_parquet_samples(file, shard: str, with_images: bool = True, batch: int = 256) -> Iterator[dict]:
    """Rows of an img2dataset Parquet shard; status != success becomes a `not_downloaded` row."""
    import pyarrow.parquet as pq

    import pyarrow as pa

    try:
        pf = pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError):  # cut short or not Parquet at all: count it, keep the run going
        yield {"key": f"{shard}/", "image": None, "txt": None, "json": None, "problem": "unreadable_shard",
               "has_image": False}
        return
    names = pf.schema_arrow.names
    check_parquet_schema(names, shard)
    img_col = _column(names, "jpg", "image")
    wanted = [c for c in ("key", "caption", "txt", "captions", "json", "status") if c in names]
    if with_images:
        wanted.append(img_col)
    index = 0
    for rb in pf.iter_batches(batch_size=batch, columns=wanted):
        cols = rb.to_pydict()
        for i in range(rb.num_rows):
            get = lambda c: cols[c][i] if c in cols else None  # noqa: E731
            key = get("key") or f"{index:09d}"
            index += 1
            img = get(img_col)
            if isinstance(img, dict):  # Hugging Face style {"bytes": ..., "path": ...}
                img = img.get("bytes")
            meta = get("json")
            if get("captions") is not None:
                meta = json.dumps({"captions": list(get("captions"))})
            status = get("status")
            yield {"key": f"{shard}/{key}", "image": img, "txt": get("caption") or get("txt"),
                   "json": meta, "has_image": img is not None or not with_images,
                   "problem": "not_downloaded" if status not in (None, "success") else ""}


def shard_seed(seed: int, epoch: int, shard: str) -> int:
    return (zlib.crc32(f"{seed}/{epoch}/{shard}".encode()) << 20) & 0x7FFF_FFFF_FFFF


def permute_windows(rows: Iterator[dict], window: int, rng: np.random.Generator) -> Iterator[dict]:
    """Shuffle a stream of rows inside windows of `window` rows, holding one window in memory. The first
    window has a random length, so windows (and hence batch neighbours) move from epoch to epoch."""
    if window <= 1:
        yield from rows
        return
    size, buf = int(rng.integers(1, window + 1)), []
    for row in rows:
        buf.append(row)
        if len(buf) == size:
            yield from (buf[j] for j in rng.permutation(len(buf)))
            size, buf = window, []
    yield from (buf[j] for j in rng.permutation(len(buf)))


def make_source(paths: list[str], *, shuffle_seed: int | None = None, shuffle_block: int = 0,
                with_images: bool = True, block_rows: int = 256):
    """A Ray Data datasource over `paths` (all local or all s3://)."""
    from ray.data.datasource import FileBasedDatasource, FileShuffleConfig

    from pipeline import storage

    remote = storage.is_remote(paths[0])

    class ShardSource(FileBasedDatasource):
        _FILE_EXTENSIONS = ["tar", "parquet"]

        def __init__(self):
            fs, _ = storage.arrow_filesystem(paths[0])
            local = [p[len("s3://"):] if storage.is_remote(p) else p for p in paths]
            super().__init__(local, filesystem=fs,
                             shuffle=FileShuffleConfig(seed=shuffle_seed) if shuffle_seed is not None else None)
            self.epoch = 0

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            # Ray Data counts executions of a dataset: each epoch re-executes, so this is the epoch.
            self.epoch = data_context._execution_idx if data_context is not None else 0
            return super().get_read_tasks(parallelism, per_task_row_limit, data_context)

        def _open_input_source(self, filesystem, path, **open_args):
            if shard_format(path) == "parquet":
                return filesystem.open_input_file(path)  # Parquet needs random access to its footer
            return super()._open_input_source(filesystem, path, **open_args)

        def _read_stream(self, f, path):
            shard = PurePosixPath(path).name
            source = f"s3://{path}" if remote else path  # the shard each row came from, for the embeddings
            reader = iter_tar_samples if shard_format(path) == "webdataset" else iter_parquet_samples
            base = shard_seed(shuffle_seed or 0, self.epoch, shard)
            rows = (dict(row, seed=base + i) for i, row in enumerate(reader(f, shard, with_images)))
            if shuffle_seed is not None:
                rows = permute_windows(rows, shuffle_block, np.random.default_rng(base))
            chunk: list[dict] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) == block_rows:
                    yield _to_table(chunk, source)
                    chunk = []
            if chunk:
                yield _to_table(chunk, source)

    return ShardSource()


def _to_table(rows: list[dict], shard: str = ""):
    import pyarrow as pa

    col = lambda name: [r[name] for r in rows]  # noqa: E731
    return pa.table({
        "key": pa.array(col("key"), pa.string()),
        "image": pa.array(col("image"), pa.binary()),
        "txt": pa.array([_as_bytes(v) for v in col("txt")], pa.binary()),
        "json": pa.array([_as_bytes(v) for v in col("json")], pa.binary()),
        "problem": pa.array(col("problem"), pa.string()),
        "has_image": pa.array(col("has_image"), pa.bool_()),
        "seed": pa.array(col("seed"), pa.int64()),
        "shard": pa.array([shard] * len(rows), pa.string()),
    })


def _as_bytes(v) -> bytes | None:
    return v.encode("utf-8") if isinstance(v, str) else v
