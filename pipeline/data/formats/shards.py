"""One Ray Data datasource for img2dataset shards, WebDataset `.tar` or `.parquet`, and for the inputs whose
images are files of their own (a `.csv`/`.tsv` listing, an image folder: `data.formats.files`), local or s3://.

Every shard becomes rows {key, image, txt, json, problem, seed}:
- key is `SHARD/KEY`: SHARD is the shard's path below the common folder of the dataset's shard list (so
  `a/00000.tar` and `b/00000.tar` stay apart), KEY the member name up to its first dot (or Parquet's `key`);
- problem is '' for a readable row, else why the row carries no sample: `not_downloaded` (an img2dataset
  Parquet row, or a row of the metadata Parquet beside a tar, whose status is not success; its json holds
  the url and error_message), `truncated_shard` (a tar that ends mid-member: the samples before the cut are
  kept, this one row records the shard), `unreadable_shard` (a Parquet file that does not open),
  `duplicate_key` (a key met again in its tar, or two members of one kind for a key) or `empty_key`;
- seed is a per-sample seed for this epoch, so augmentation and caption choice are reproducible whatever
  the block boundaries and whichever worker gets the sample.
A training epoch's seeded order (rows shuffled inside windows of `shuffle_block` samples, `permute_windows`)
is the epoch source's (`data.epoch.source`); this module's datasource reads whole passes in file order.
"""
from __future__ import annotations

import json
import os
import posixpath
import tarfile
import zlib
from pathlib import PurePosixPath
from typing import Iterable, Iterator

import numpy as np

from pipeline.data.formats import files

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "gif", "tif", "tiff", "bmp")
FORMATS = {"tar": "webdataset", "parquet": "parquet", "csv": "csv", "tsv": "csv"}
# Rows that are not samples: they are counted, but not in the share that data.max_skip_fraction bounds.
NOT_SAMPLES = ("not_downloaded", "truncated_shard", "unreadable_shard", "missing_shard")


def shard_format(path: str) -> str:
    """webdataset | parquet | csv | folder (a path ending in `/`: one directory's images, `ingest` lists them)."""
    if path.endswith("/"):
        return "folder"
    ext = PurePosixPath(path).name.rsplit(".", 1)[-1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: not a shard; use .tar (WebDataset), .parquet, .csv/.tsv or a folder of images")
    return FORMATS[ext]


def arrow_paths(paths: list[str]) -> list[str]:
    """Paths as Arrow's filesystems name them: s3:// dropped, local ones absolute (a folder shard keeps its `/`)."""
    return [p[len("s3://"):] if p.startswith("s3://") else os.path.abspath(p) + ("/" if p.endswith("/") else "")
            for p in paths]


def shard_names(paths: list[str]) -> dict[str, str]:
    """path -> the shard's name in its rows' keys: its path below the common folder of all `paths` (the
    dataset's shard list). A file name alone would give `a/00000.tar` and `b/00000.tar` the same keys, and
    captions would be joined to the wrong image. A folder shard is named like a file (`photos/cats/` -> `cats`)."""
    bare = {p: b.rstrip("/") for p, b in zip(paths, arrow_paths(paths))}
    root = posixpath.commonpath([posixpath.dirname(b) for b in bare.values()])
    return {p: posixpath.relpath(b, root) if root else b for p, b in bare.items()}


def _row(key: str, problem: str = "") -> dict:
    return {"key": key, "image": None, "txt": None, "json": None, "problem": problem, "has_image": False}


def tar_member(name: str) -> tuple[str, str | None] | None:
    """A tar member name -> (its sample's key inside the shard, its column or None for an unknown kind), or
    None for a member that belongs to no sample: macOS tar's AppleDouble `._NAME` files (Finder metadata,
    not data) would otherwise split every sample of a shard in two."""
    path = PurePosixPath(name)
    if path.name.startswith("._"):
        return None
    base, _, suffix = path.name.partition(".")
    suffix = suffix.lower()
    col = "image" if suffix in IMAGE_SUFFIXES else suffix if suffix in ("txt", "json") else None
    return ((path.parent / base).as_posix() if base else ""), col


def iter_tar_samples(stream, shard: str, with_images: bool = True) -> Iterator[dict]:
    """Group a tar stream's members into samples by key (the member name up to its first dot).

    Keys are checked, not trusted: a member with nothing before its first dot (`.jpg`) is an `empty_key`
    row; a key met again after another sample is a `duplicate_key` row (its first sample keeps the key), and
    so is a sample with two images or two captions (which one is its own is unknown). AppleDouble `._*`
    members are passed over. A truncated or otherwise unreadable tail ends the iteration with one
    `truncated_shard` row; what came before it is kept."""
    current: dict | None = None
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                member = tar_member(info.name) if info.isreg() else None
                if member is None:
                    continue
                key = f"{shard}/{member[0]}"
                if current is not None and key != current["key"]:
                    yield current
                    current = None
                if current is None:
                    bad = "empty_key" if not member[0] else "duplicate_key" if key in seen else ""
                    current = _row(key, bad)
                    seen.add(key)
                _add_member(current, member[1], tar, info, with_images)
    except (tarfile.TarError, EOFError, zlib.error):
        # The sample being read when the data ran out is kept only if its image and a caption came through
        # whole; otherwise it is part of what the truncated_shard row stands for.
        whole = current is not None and current["has_image"] and (current["txt"] or current["json"])
        if current is not None and (whole or current["problem"]):  # a bad row is counted whatever was cut
            yield current
        current = None
        yield _row(f"{shard}/", "truncated_shard")
    if current is not None:
        yield current


def _add_member(row: dict, col: str | None, tar, info, with_images: bool) -> None:
    """Read one member into its sample's row (unknown kinds are ignored; a row already bad is not read)."""
    if col is None:
        return
    if (row["has_image"] if col == "image" else row[col] is not None):
        row["problem"] = row["problem"] or "duplicate_key"  # two images for one key: which is its own?
    if row["problem"]:
        return
    if col == "image":
        row["has_image"] = True
        if not with_images:
            return
    data = tar.extractfile(info).read()
    if len(data) < info.size:
        raise tarfile.ReadError("unexpected end of data")
    row[col] = data


def _column(names: list[str], *wanted: str) -> str | None:
    return next((n for n in wanted if n in names), None)


def parquet_schema(path: str):
    """The Arrow schema in a Parquet shard's footer (local or s3://): a cheap read, done before Ray work."""
    import pyarrow.parquet as pq

    from pipeline import storage

    fs, inner = storage.filesystem(path)
    with fs.open(inner, "rb") as f:
        return pq.ParquetFile(f).schema_arrow


def first_readable_schema(paths: list[str]):
    """(path, Arrow schema) of the first Parquet shard whose footer reads, or None when none does. An
    unreadable shard is the reader's to skip and count (unreadable_shard), wherever it comes in the list."""
    import pyarrow as pa

    for path in paths:
        try:
            return path, parquet_schema(path)
        except (pa.ArrowInvalid, OSError):
            continue
    return None


def check_parquet_schema(names: list[str], path: str) -> None:
    """Fail early, naming the columns, when a Parquet shard lacks an image or a caption column."""
    if not ({"jpg", "image"} & set(names)) or not ({"caption", "txt", "captions"} & set(names)):
        raise ValueError(f"{path}: Parquet shards need an image-bytes column (jpg or image) and a caption "
                         f"column (caption, txt or captions); this one has {names}")


def check_parquet_types(schema, path: str) -> None:
    """Fail early when a caption or image column has a type the reader cannot use (a caption column of ints
    would otherwise fail inside a Ray Data worker, retried, with Ray's message instead of this one)."""
    import pyarrow as pa

    def ok(name: str, typ) -> bool:
        if name in ("caption", "txt"):
            return pa.types.is_string(typ) or pa.types.is_large_string(typ)
        if name == "captions":
            return pa.types.is_list(typ) and (pa.types.is_string(typ.value_type)
                                              or pa.types.is_large_string(typ.value_type))
        if name in ("jpg", "image"):  # raw bytes, or Hugging Face's {"bytes": ..., "path": ...}
            return pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or (
                pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0)
        return True

    bad = [f"{f.name} ({f.type})" for f in schema if not ok(f.name, f.type)]
    if bad:
        raise ValueError(f"{path}: column {bad[0]} has the wrong type; captions must be strings (captions a "
                         "list of strings) and images bytes")


def is_download_metadata(names: list[str]) -> bool:
    """Whether Parquet columns are img2dataset's download metadata (url, status, error_message, ... and no
    image column), which its WebDataset output writes beside each tar under the same name."""
    return not ({"jpg", "image"} & set(names))


def _failure(url, error) -> str:
    """A not_downloaded row's json: what img2dataset says went wrong, for `data inspect` to show."""
    return json.dumps({"url": url, "error_message": error})


def iter_failed_downloads(file, shard: str) -> Iterator[dict]:
    """The failed downloads listed in a tar's metadata Parquet -> `not_downloaded` rows keyed like the tar's
    samples, as img2dataset's Parquet output format has them. A metadata file that does not open costs
    those rows, never the shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
        names = pf.schema_arrow.names
        if not is_download_metadata(names) or not {"key", "status"} <= set(names):
            return
        table = pf.read(columns=[c for c in ("key", "status", "url", "error_message") if c in names])
    except (pa.ArrowInvalid, OSError):
        return
    for r in table.to_pylist():
        if r["status"] != "success":
            row = _row(f"{shard}/{r['key']}", "not_downloaded")
            yield dict(row, json=_failure(r.get("url"), r.get("error_message")))


def iter_parquet_samples(file, shard: str, with_images: bool = True, batch: int = 256) -> Iterator[dict]:
    """Rows of an img2dataset Parquet shard; status != success becomes a `not_downloaded` row."""
    import pyarrow.parquet as pq

    import pyarrow as pa

    try:
        pf = pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError):  # cut short or not Parquet at all: count it, keep the run going
        yield _row(f"{shard}/", "unreadable_shard")
        return
    names = pf.schema_arrow.names
    check_parquet_schema(names, shard)
    img_col = _column(names, "jpg", "image")
    wanted = [c for c in ("key", "caption", "txt", "captions", "json", "status", "url", "error_message")
              if c in names]
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
            failed = get("status") not in (None, "success")
            yield {"key": f"{shard}/{key}", "image": img, "txt": get("caption") or get("txt"),
                   "json": _failure(get("url"), get("error_message")) if failed else meta,
                   "has_image": img is not None or not with_images,
                   "problem": "not_downloaded" if failed else ""}


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


def chunked(rows: Iterable, size: int) -> Iterator[list]:
    """`rows` in lists of `size` (the last one shorter): the tables a read task yields."""
    chunk: list = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def make_source(paths: list[str], *, with_images: bool = True, block_rows: int = 256):
    """A Ray Data datasource over `paths` (all local or all s3://): validation, galleries, passes over the
    captions. A training worker's own epoch reads through `epoch_source.EpochSource` instead."""
    from ray.data.datasource import FileBasedDatasource

    from pipeline import storage

    remote = storage.is_remote(paths[0])
    named = shard_names(paths)
    names = {b: named[p] for p, b in zip(paths, arrow_paths(paths))}  # the path Arrow reads -> the name in keys

    class ShardSource(FileBasedDatasource):
        _FILE_EXTENSIONS = ["tar", "parquet", "csv", "tsv", *files.IMAGE_FILES]

        def __init__(self):
            fs, _ = storage.arrow_filesystem(paths[0])
            super().__init__(inputs, filesystem=fs)
            self.epoch = 0
            self.shard_fs = fs

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            # Ray Data counts executions of a dataset: each epoch re-executes, so this is the epoch.
            self.epoch = data_context._execution_idx if data_context is not None else 0
            return super().get_read_tasks(parallelism, per_task_row_limit, data_context)

        def _open_input_source(self, filesystem, path, **open_args):
            if path in folder_of or shard_format(path) != "parquet":
                return super()._open_input_source(filesystem, path, **open_args)
            return filesystem.open_input_file(path)  # Parquet needs random access to its footer

        def _read_stream(self, f, path):
            if path in folder_of:  # one image of a folder shard: the task reads it (and its sidecar) alone
                folder = folder_of[path]
                row = files.folder_row(self.shard_fs, path, names[folder], False)
                row.update(image=f.read() if with_images else None, has_image=True)
                rows = iter([dict(row, seed=0)])
                path = folder
            else:
                shard = names[path]  # Ray Data hands back the path it was given
                base = shard_seed(0, self.epoch, shard)
                rows = (dict(row, seed=base + i) for i, row in
                        enumerate(shard_rows(self.shard_fs, f, path, shard, with_images, layout)))
            source = f"s3://{path}" if remote else path  # the shard each row came from, for the embeddings
            yield from (rows_to_table(chunk, source) for chunk in chunked(rows, block_rows))

    # A folder shard's images are the datasource's files: Ray Data spreads them over its read tasks.
    fs = storage.arrow_filesystem(paths[0])[0]
    listed = {b: files.list_folder(fs, b) if b.endswith("/") else [b] for b in names}
    folder_of = {image: b for b, images in listed.items() if b.endswith("/") for image in images}
    inputs = [p for b in names for p in listed[b]]
    layout = files.current()  # the driver's CSV columns, into every read task
    return ShardSource()


def shard_rows(fs, f, path: str, shard: str, with_images: bool = True, layout=None) -> Iterator[dict]:
    """The rows of one open shard `f` (`path` as the Arrow filesystem `fs` names it): a Parquet file's, a CSV's
    (`layout`: its columns, default this process's `files.current()`), a folder's (`f` None), or a tar's
    followed by the failed downloads its img2dataset metadata Parquet lists."""
    import pyarrow.fs as pafs

    kind = shard_format(path)
    if kind == "parquet":
        yield from iter_parquet_samples(f, shard, with_images)
        return
    if kind == "csv":
        yield from files.iter_csv_samples(fs, f, path, shard, with_images, layout)
        return
    if kind == "folder":
        yield from files.iter_folder_samples(fs, path, shard, with_images)
        return
    yield from iter_tar_samples(f, shard, with_images)
    # img2dataset's WebDataset output lists every URL of a tar, failed ones too, in NNNNN.parquet
    meta = path[: -len(".tar")] + ".parquet"
    if fs.get_file_info(meta).type == pafs.FileType.File:
        with fs.open_input_file(meta) as m:
            yield from iter_failed_downloads(m, shard)


def iter_shard(path: str, shard: str, with_images: bool = True, fs=None) -> Iterator[dict]:
    """Every row of one shard (local or s3://), read in this process: for passes too small to be worth a Ray
    Data pipeline's start. `shard`: its name in the keys (`shard_names`)."""
    from pipeline import storage

    fs = fs or storage.arrow_filesystem(path)[0]
    bare = arrow_paths([path])[0]
    with open_shard(fs, bare) as f:
        yield from shard_rows(fs, f, bare, shard, with_images)


def open_shard(fs, bare: str):
    """An open shard (`bare`: as `fs` names it) for `shard_rows`; a folder opens as nothing."""
    import contextlib

    kind = shard_format(bare)
    if kind == "folder":
        return contextlib.nullcontext()
    if kind == "parquet":
        return fs.open_input_file(bare)  # Parquet needs random access to its footer
    return fs.open_input_stream(bare, buffer_size=1 << 20)


def rows_to_batch(rows: list[dict], shard: str = "") -> dict[str, np.ndarray]:
    """Rows -> the numpy batch `transforms` takes, without Arrow: "image" may then hold decoded arrays of any
    shape (data.cache_decoded), one object each."""
    batch = {name: np.array([r[name] for r in rows], dtype=object) for name in ("key", "txt", "json", "problem")}
    batch["image"] = np.empty(len(rows), dtype=object)
    batch["image"][:] = [r["image"] for r in rows]
    batch["has_image"] = np.array([r["has_image"] for r in rows], dtype=bool)
    batch["shard"] = np.array([shard] * len(rows), dtype=object)
    batch["seed"] = np.array([r.get("seed", 0) for r in rows], dtype=np.int64)
    if rows and "pos" in rows[0]:
        batch["pos"] = np.array([r["pos"] for r in rows], dtype=np.int64)
    return batch


def rows_to_table(rows: list[dict], shard: str = ""):
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
        **({"pos": pa.array(col("pos"), pa.int64())} if rows and "pos" in rows[0] else {}),
    })


def _as_bytes(v) -> bytes | None:
    return v.encode("utf-8") if isinstance(v, str) else v
