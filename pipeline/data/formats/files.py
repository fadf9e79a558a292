"""Samples whose images are files of their own: a CSV/TSV listing (OpenCLIP's `--dataset-type csv`) and a folder
of images (clip-retrieval's `--input_format files`). Both read into the rows `shards` gives every format
({key, image, txt, json, problem, has_image}), so decode, skip counting, exact resume and the embedding
passes see no difference.

- A CSV/TSV file is one shard: one row per data line, keyed `SHARD/NNNNNNNNN` (its 0-based line index among
  the data rows, so a resumed epoch finds the same sample at the same position). The image column holds a
  path relative to the file's folder, an absolute path, or an s3:// URI. A path that names no file is a
  `missing_image` row, one that does not read an `unreadable_image` row, a line without the image column a
  `malformed_row`: each skipped and counted.
- A folder shard is one directory's own images (`shards` writes it with a trailing `/`); a sidecar `NAME.txt`
  beside `NAME.jpg` is its caption. Keys are `SHARD/NAME`.
Every row's json holds `image_path`, the file the image came from: the clip-retrieval export writes it.

Which columns a CSV's images and captions are in is the job's `data.csv_*` keys; `configure` sets them for
this process and the datasources carry `current()` into their read tasks.
"""
from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Iterator

IMAGE_FILES = ("jpg", "jpeg", "png", "webp")
FETCH_THREADS = 16  # image files read at once per reader: S3's latency is per object
FETCH_ROWS = 64  # rows whose images are fetched together


@dataclass(frozen=True)
class CsvLayout:
    image_key: str = "filepath"  # OpenCLIP's --csv-img-key default
    caption_key: str = "title"  # OpenCLIP's --csv-caption-key default
    separator: str = "auto"  # auto (tab for .tsv; for .csv the one whose split header holds image_key) | , | \t

    def separator_for(self, path: str, header: str) -> str:
        if self.separator != "auto":
            return self.separator
        if path.lower().endswith(".tsv"):
            return "\t"
        tabbed = next(csv.reader([header], delimiter="\t"), [])
        return "\t" if self.image_key in tabbed else ","


_LAYOUT = [CsvLayout()]


def configure(data_cfg) -> None:
    """This process's CSV columns, from a job's data section (anything with csv_image_key/csv_caption_key)."""
    use(CsvLayout(data_cfg.csv_image_key, data_cfg.csv_caption_key, data_cfg.csv_separator))


def use(layout: CsvLayout) -> None:
    """This process's CSV columns: a task's process is handed the driver's `current()`."""
    _LAYOUT[0] = layout


def current() -> CsvLayout:
    return _LAYOUT[0]


def is_image_file(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and base.rsplit(".", 1)[-1].lower() in IMAGE_FILES and "." in base


# ------------------------------------------------------------------------------------------ CSV / TSV


def read_header(f, path: str, layout: CsvLayout) -> tuple[csv.reader, list[str], str]:
    """(row reader, header, separator) of an open CSV stream (bytes)."""
    text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
    first = text.readline()
    sep = layout.separator_for(path, first)
    header = next(csv.reader([first], delimiter=sep), [])
    return csv.reader(text, delimiter=sep), [h.strip() for h in header], sep


def check_header(header: list[str], path: str, layout: CsvLayout) -> None:
    """A ValueError naming the key to set when the image or caption column is not in the header."""
    for key, name in (("data.csv_image_key", layout.image_key), ("data.csv_caption_key", layout.caption_key)):
        if name not in header:
            raise ValueError(f"{path} has no column {name!r} ({key}); its columns are {header}: set {key} to "
                             "one of them" + ("" if len(header) > 1 else ", or data.csv_separator"))


def resolve_image(value: str, folder: str, remote: bool) -> str:
    """An image cell -> the path to read: s3:// and absolute paths as they are, others below the CSV's folder
    (on the CSV's filesystem: `folder` is as that filesystem names it)."""
    value = value.strip()
    if value.startswith("s3://") or os.path.isabs(value) and not remote:
        return value
    return posixpath.normpath(posixpath.join(folder, value)) if remote else os.path.normpath(os.path.join(folder, value))


def iter_csv_samples(fs, f, path: str, shard: str, with_images: bool = True, layout: CsvLayout | None = None
                     ) -> Iterator[dict]:
    """The rows of one CSV/TSV shard `f` (open, bytes); `path` as the Arrow filesystem `fs` names it."""
    layout = layout or current()
    rows, header, _ = read_header(f, path, layout)
    check_header(header, path, layout)
    at_img, at_cap = header.index(layout.image_key), header.index(layout.caption_key)
    remote = not isinstance(fs, _local_types())
    folder = posixpath.dirname(path) if remote else os.path.dirname(path)
    index = 0

    def parsed() -> Iterator[tuple[str, str | None, str, str]]:
        nonlocal index
        for cells in rows:
            if not cells:
                continue  # a blank line is no row
            key = f"{shard}/{index:09d}"
            index += 1
            if len(cells) <= max(at_img, at_cap):
                yield key, None, "", "malformed_row"
            elif not cells[at_img].strip():
                yield key, None, cells[at_cap], "missing_image"
            else:
                yield key, resolve_image(cells[at_img], folder, remote), cells[at_cap], ""

    lines = parsed()
    while chunk := list(islice(lines, FETCH_ROWS)):
        images = fetch_images(fs, [p for _, p, _, _ in chunk], with_images)
        for (key, image_path, caption, bad), (data, problem) in zip(chunk, images):
            problem = bad or problem
            shown = f"s3://{image_path}" if remote and image_path and not image_path.startswith("s3://") else image_path
            yield {"key": key, "image": data, "txt": caption, "has_image": not problem,
                   "json": json.dumps({"image_path": shown}) if image_path else None, "problem": problem}


# ------------------------------------------------------------------------------------------ image folders


def list_folder(fs, folder: str) -> list[str]:
    """The image files directly in `folder` (as `fs` names it), sorted by name."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(folder.rstrip("/"), recursive=False))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and is_image_file(i.path))


def folder_row(fs, image: str, shard: str, with_images: bool, captions: set[str] | None = None) -> dict:
    """One image file's row; its caption from the sidecar `.txt` (when `captions`, the folder's .txt files,
    holds it, or when `captions` is None and it exists)."""
    import pyarrow.fs as pafs

    stem = posixpath.basename(image).rsplit(".", 1)[0]
    sidecar = image.rsplit(".", 1)[0] + ".txt"
    has_txt = sidecar in captions if captions is not None else fs.get_file_info(sidecar).type == pafs.FileType.File
    txt = None
    if has_txt:
        with fs.open_input_stream(sidecar) as t:
            txt = t.read()
    data, problem = _read(fs, image) if with_images else (None, "")
    remote = not isinstance(fs, _local_types())
    return {"key": f"{shard}/{stem}", "image": data, "txt": txt, "has_image": not problem, "problem": problem,
            "json": json.dumps({"image_path": f"s3://{image}" if remote else image})}


def iter_folder_samples(fs, folder: str, shard: str, with_images: bool = True) -> Iterator[dict]:
    """The rows of one folder shard: its images in name order. Two images with one name (`a.jpg`, `a.png`) are
    a `duplicate_key` row: which of them the caption belongs to is unknown."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(folder.rstrip("/"), recursive=False))  # one listing for both
    captions = {i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".txt")}
    images = sorted(i.path for i in infos if i.type == pafs.FileType.File and is_image_file(i.path))
    stems = [posixpath.basename(p).rsplit(".", 1)[0] for p in images]
    seen: set[str] = set()
    local = isinstance(fs, _local_types())  # read in turn; S3's objects in threads (see fetch_images)
    with ThreadPoolExecutor(1 if local else FETCH_THREADS) as pool:
        rows = (map if local else pool.map)(lambda p: folder_row(fs, p, shard, with_images, captions), images)
        for stem, row in zip(stems, rows):
            if stem in seen:
                row = dict(row, image=None, txt=None, has_image=False, problem="duplicate_key")
            seen.add(stem)
            yield row


def count_folder(fs, folder: str) -> int:
    return len(list_folder(fs, folder))


def count_csv(fs, path: str, layout: CsvLayout | None = None) -> int:
    """Data rows of a CSV/TSV (every line after the header that is not blank): each is a sample or a counted skip."""
    with fs.open_input_stream(path) as f:
        rows, _, _ = read_header(f, path, layout or current())
        return sum(1 for cells in rows if cells)


# ------------------------------------------------------------------------------------------ reading images


def _local_types():
    import pyarrow.fs as pafs

    return (pafs.LocalFileSystem,)


def _read(fs, path: str) -> tuple[bytes | None, str]:
    """(bytes, '') or (None, missing_image | unreadable_image)."""
    import pyarrow.fs as pafs

    try:
        if isinstance(fs, _local_types()):
            with open(path, "rb") as f:  # Arrow's stream costs more than the read for a small local file
                return f.read(), ""
        with fs.open_input_stream(path) as f:
            return f.read(), ""
    except FileNotFoundError:
        return None, "missing_image"
    except OSError:  # IsADirectoryError, PermissionError, an S3 error
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None, "missing_image"
        return None, "unreadable_image"


def fetch_images(fs, paths: list[str | None], with_images: bool) -> list[tuple[bytes | None, str]]:
    """Each path's (bytes, problem); None paths and (without images) every path: (None, ''). Local files are read
    one after another (threads cost more than they save on a local disk); anything on S3 in threads, through
    one client for the s3:// URIs a CSV names."""
    from pipeline import storage

    if not with_images:
        return [(None, "")] * len(paths)
    remote = [p for p in paths if p is not None and p.startswith("s3://")]
    s3 = storage.arrow_filesystem(remote[0])[0] if remote else None

    def one(p: str | None) -> tuple[bytes | None, str]:
        if p is None:
            return None, ""
        if p.startswith("s3://"):
            return _read(s3, p[len("s3://"):])
        return _read(fs, p)

    if not remote and isinstance(fs, _local_types()):
        return [one(p) for p in paths]
    with ThreadPoolExecutor(min(FETCH_THREADS, len(paths))) as pool:
        return list(pool.map(one, paths))
