"""`ShardWriter`: image–caption samples written as numbered img2dataset-style shards, either WebDataset
tars (`KEY.<ext>`, `KEY.txt`, `KEY.json`) or Parquet tables, each followed by a `_stats.json` file.
The same samples in the same order give byte-identical shards."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("webdataset", "parquet")
ROW_GROUP_SIZE = 1024
PARQUET_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("jpg", pa.binary()),
    ("caption", pa.string()),
    ("captions", pa.list_(pa.string())),
    ("status", pa.string()),
    ("json", pa.string()),
])


def normalise_ext(image_ext: str) -> str:
    """'.JPEG' -> 'jpg', 'PNG' -> 'png': the member suffix a WebDataset reader keys the image on."""
    ext = image_ext.strip().lstrip(".").lower()
    if not ext or not ext.isalnum():
        raise ValueError(f"image_ext {image_ext!r} is not a file suffix; pass e.g. 'jpg' or '.png'")
    return "jpg" if ext == "jpeg" else ext


def key_width(shard_size: int) -> int:
    """Digits of the in-shard index in a key: at least 4 (img2dataset's default), more for big shards."""
    return max(4, len(str(shard_size - 1)))


def encode_meta(key: str, captions: list[str], meta: dict[str, Any] | None) -> str:
    """The per-sample JSON; key and captions are set by the writer and win over same-named extras."""
    extra = {k: v for k, v in (meta or {}).items() if k not in ("key", "caption", "captions")}
    return json.dumps({"key": key, "caption": captions[0], "captions": captions, **extra}, ensure_ascii=False)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    # fixed owner, mode and mtime: the tar header must not depend on who wrote it or when
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Writes samples into `{out}/{shard:05d}.tar|.parquet`, `shard_size` samples per shard.

    Use as a context manager. A shard is written under a `.tmp` name and renamed when complete, so a
    crashed run never leaves a truncated file under a shard's final name.
    """

    def __init__(self, out_dir: str | Path, fmt: str = "webdataset", shard_size: int = 10000) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown shard format {fmt!r}; use one of {', '.join(FORMATS)}")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer (e.g. 10000), got {shard_size!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.shard_size = shard_size
        self.width = key_width(shard_size)
        self.paths: list[Path] = []
        self.count = 0
        self._shard = 0
        self._in_shard = 0
        self._tar: tarfile.TarFile | None = None
        self._rows: dict[str, list[Any]] | None = None
        self._closed = False

    # -- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- writing ---------------------------------------------------------------------------------------
    def write(self, image_bytes: bytes, image_ext: str, captions: list[str],
              meta: dict[str, Any] | None = None) -> str:
        """Append one sample to the current shard (opening a new shard when it is full); returns its key."""
        if self._closed:
            raise ValueError("ShardWriter is closed; open a new one to write more samples")
        if not isinstance(image_bytes, (bytes, bytearray)):
            raise TypeError(f"image_bytes must be bytes, got {type(image_bytes).__name__}")
        if isinstance(captions, str) or not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError("captions must be a non-empty list of strings; drop samples without captions")
        ext = normalise_ext(image_ext)
        if self._tar is None and self._rows is None:
            self._open_shard()

        key = f"{self._shard:05d}{self._in_shard:0{self.width}d}"
        captions = list(captions)
        meta_json = encode_meta(key, captions, meta)
        if self._tar is not None:
            _add_member(self._tar, f"{key}.{ext}", bytes(image_bytes))
            _add_member(self._tar, f"{key}.txt", captions[0].encode("utf-8"))
            _add_member(self._tar, f"{key}.json", meta_json.encode("utf-8"))
        else:
            assert self._rows is not None
            for col, value in (("key", key), ("jpg", bytes(image_bytes)), ("caption", captions[0]),
                               ("captions", captions), ("status", "success"), ("json", meta_json)):
                self._rows[col].append(value)
        self._in_shard += 1
        self.count += 1
        if self._in_shard == self.shard_size:
            self._finish_shard()  # now, not on the next write: a full shard survives a later abort
        return key

    def close(self) -> None:
        """Finish the open shard (if any) and its stats file; further writes raise."""
        if self._closed:
            return
        if self._in_shard:
            self._finish_shard()
        self._closed = True

    def abort(self) -> None:
        """Drop the half-written shard; shards already finished stay."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._rows = None
        self._tmp_path().unlink(missing_ok=True)
        self.count -= self._in_shard  # count what is on disk, not what was handed in
        self._in_shard = 0
        self._closed = True

    # -- shard lifecycle -------------------------------------------------------------------------------
    def _final_path(self) -> Path:
        suffix = "tar" if self.fmt == "webdataset" else "parquet"
        return self.out_dir / f"{self._shard:05d}.{suffix}"

    def _tmp_path(self) -> Path:
        final = self._final_path()
        return final.with_name(final.name + ".tmp")

    def _open_shard(self) -> None:
        if self.fmt == "webdataset":
            # USTAR: no pax headers carrying atime/ctime, so the bytes depend only on the samples
            self._tar = tarfile.open(self._tmp_path(), "w", format=tarfile.USTAR_FORMAT)
        else:
            self._rows = {name: [] for name in PARQUET_SCHEMA.names}

    def _finish_shard(self) -> None:
        tmp, final = self._tmp_path(), self._final_path()
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        else:
            assert self._rows is not None
            table = pa.table(self._rows, schema=PARQUET_SCHEMA)
            pq.write_table(table, tmp, row_group_size=min(ROW_GROUP_SIZE, self.shard_size))
            self._rows = None
        tmp.replace(final)
        n = self._in_shard
        stats = {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0}
        stats_path = self.out_dir / f"{self._shard:05d}_stats.json"
        stats_path.write_text(json.dumps(stats, indent=4) + "\n", encoding="utf-8")
        self.paths.append(final)
        self._shard += 1
        self._in_shard = 0
