"""One gallery sample's stored image, by its key, for showing hits (`pipeline search --out`, `pipeline serve`'s
`GET /image/<key>`): the file a CSV row or an image folder named, else the member of its tar shard (from an
index of the shard's members, read once per shard: headers only, the images are skipped over) or the row of
its Parquet shard. Sequential reading of whole shards stays with `shards.shard_rows`; this is random access.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from pipeline import storage
from pipeline.data.formats.shards import shard_format, tar_member


@dataclass
class ImageLookup:
    """`sources`: image key -> (its shard's URI or path, the image's own file where known, else '')."""
    sources: dict[str, tuple[str, str]]
    _members: dict = field(default_factory=dict)  # tar shard -> {sample key: (data offset, size)}
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __contains__(self, key: str) -> bool:
        return key in self.sources

    def image_bytes(self, key: str) -> bytes:
        """The stored (encoded) image of `key`. KeyError: no such key; OSError: its file or shard is unreadable."""
        shard, path = self.sources[key]
        if path and (path.startswith("s3://") or os.path.isabs(path)):  # a URL is not fetched: the shard has it
            return storage.read_bytes(path)
        kind = shard_format(shard)
        inner = key.split("/", 1)[1] if "/" in key else key  # keys are '<shard name>/<sample key>'
        if kind == "parquet":
            return _parquet_image(shard, inner)
        if kind != "webdataset":
            raise OSError(f"{key}: its image has no file of its own and its shard {shard} is not a tar or Parquet")
        offset, size = self._tar_members(shard).get(inner, (None, 0))
        if offset is None:
            raise OSError(f"{key}: shard {shard} holds no image for it")
        fs, bare = storage.arrow_filesystem(shard)
        with fs.open_input_file(bare) as f:
            f.seek(offset)
            return f.read(size)

    def _tar_members(self, shard: str) -> dict[str, tuple[int, int]]:
        with self._lock:
            if shard not in self._members:
                self._members[shard] = _index_tar(shard)
            return self._members[shard]


def _index_tar(shard: str) -> dict[str, tuple[int, int]]:
    """sample key -> (offset, size) of its image member, from the tar's headers (the first image a key has)."""
    import tarfile

    fs, bare = storage.arrow_filesystem(shard)
    out: dict[str, tuple[int, int]] = {}
    with fs.open_input_file(bare) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
            member = tar_member(info.name) if info.isreg() else None
            if member is not None and member[1] == "image":
                out.setdefault(member[0], (info.offset_data, info.size))
    return out


def _parquet_image(shard: str, inner: str) -> bytes:
    """The image cell of the row keyed `inner` (or, in a shard without a key column, the row at that index)."""
    import pyarrow.parquet as pq

    fs, bare = storage.arrow_filesystem(shard)
    with fs.open_input_file(bare) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        col = "jpg" if "jpg" in names else "image"
        if "key" in names:
            table = pq.read_table(f, columns=[col], filters=[("key", "==", inner)])
        elif inner.isdigit():
            table = _row_at(pf, int(inner), col)
        else:
            raise OSError(f"{shard} has no key column, and {inner!r} is not a row number")
    if table.num_rows == 0:
        raise OSError(f"{shard} holds no row {inner}")
    cell = table.column(col)[0].as_py()
    return cell.get("bytes") if isinstance(cell, dict) else cell


def _row_at(pf, index: int, col: str):
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if index < n:
            return pf.read_row_group(g, columns=[col]).slice(index, 1)
        index -= n
    return pf.schema_arrow.empty_table().select([col])
