"""`pipeline export --format clip-retrieval`: an index folder's embeddings in the layout clip-retrieval's inference
writes and its back end, autofaiss and embedding-reader read:

    <out>/img_emb/img_emb_0.npy         (N, D) float16, L2-normalised, row i = image i (the index's id order)
    <out>/text_emb/text_emb_0.npy       (N, D) float16, row i = the first caption of image i (a zero row where
                                        the image has none)
    <out>/metadata/metadata_0.parquet   N rows: image_path, caption, key (+ label where the images have one)

clip-retrieval keeps one caption per image; every caption (and its vector) stays in the index's captions.parquet.
Rows are written by parts of at most `part_rows`, numbered img_emb_0, img_emb_1, ... in id order, as
clip-retrieval's partitions are, so a large gallery never sits in memory whole.
"""
from __future__ import annotations

import io
import math

import numpy as np

from pipeline import storage
from pipeline.index.embedding_passes import (CAPTIONS, IMAGES, parquet_files, read_columns, read_file,
                                             row_counts, vectors_of)

FORMATS = ("clip-retrieval",)
PART_ROWS = 1_000_000


def first_captions(index_dir: str) -> dict[str, tuple[str, np.ndarray]]:
    """key -> (its first caption in id order, that caption's vector)."""
    table = read_columns(storage.join(index_dir, CAPTIONS), ["key", "caption", "vector"])
    if table is None:
        return {}
    vectors, out = vectors_of(table), {}
    for i, (key, caption) in enumerate(zip(table.column("key").to_pylist(), table.column("caption").to_pylist())):
        out.setdefault(key, (caption, vectors[i]))
    return out


def export_clip_retrieval(index_dir: str, out: str, part_rows: int = PART_ROWS, dtype: str = "float16") -> dict:
    """Write `out`'s three folders from the index at `index_dir` (local or s3://). -> {images, captioned, dim,
    parts}"""
    import pyarrow as pa

    captions = first_captions(index_dir)
    files = parquet_files(storage.join(index_dir, IMAGES))
    if not files:
        raise FileNotFoundError(f"--index {index_dir}: no images.parquet/ (write one with `pipeline index`)")
    for folder in ("img_emb", "text_emb", "metadata"):  # a rerun replaces: no part of an older export is left
        if storage.exists(storage.join(out, folder)):
            storage.remove_tree(storage.join(out, folder))
    tables = (read_file(f) for f in files)
    total = sum(row_counts(files))
    digits = int(math.log10(max(1, math.ceil(total / part_rows)))) + 1  # clip-retrieval's zero-padded numbering
    done = {"images": 0, "captioned": 0, "parts": 0, "dim": 0}
    pending: list = []
    for table in tables:
        pending.append(table.sort_by("id"))
        while sum(len(t) for t in pending) >= part_rows:
            whole = pa.concat_tables(pending)
            _write_part(out, whole.slice(0, part_rows), captions, done, digits, dtype)
            pending = [whole.slice(part_rows)]
    rest = [t for t in pending if len(t)]
    if rest:
        _write_part(out, pa.concat_tables(rest), captions, done, digits, dtype)
    return done


def _write_part(out: str, table, captions: dict, done: dict, digits: int, dtype: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = vectors_of(table)
    keys = table.column("key").to_pylist()
    found = [captions.get(k) for k in keys]
    text = np.stack([c[1] if c is not None else np.zeros(images.shape[1], np.float32) for c in found]) \
        if keys else np.zeros((0, images.shape[1]), np.float32)
    paths = table.column("path").to_pylist() if "path" in table.column_names else [""] * len(keys)
    meta = {"image_path": pa.array([p or k for p, k in zip(paths, keys)], pa.string()),
            "caption": pa.array([c[0] if c is not None else None for c in found], pa.string()),
            "key": pa.array(keys, pa.string())}
    labels = table.column("label").to_pylist() if "label" in table.column_names else []
    if any(labels):
        meta["label"] = pa.array(labels, pa.string())
    part = str(done["parts"]).zfill(digits)
    for folder, name, matrix in (("img_emb", "img_emb", images), ("text_emb", "text_emb", text)):
        buf = io.BytesIO()
        np.save(buf, matrix.astype(dtype))
        storage.write_bytes(storage.join(out, folder, f"{name}_{part}.npy"), buf.getvalue())
    buf = io.BytesIO()
    pq.write_table(pa.table(meta), buf)
    storage.write_bytes(storage.join(out, "metadata", f"metadata_{part}.parquet"), buf.getvalue())
    done.update(images=done["images"] + len(keys), captioned=done["captioned"] + sum(c is not None for c in found),
                parts=done["parts"] + 1, dim=int(images.shape[1]))


def format_summary(done: dict, out: str) -> str:
    return (f"exported {done['images']} images ({done['captioned']} with a caption), {done['dim']}-d, in "
            f"{done['parts']} part(s) to {out}: img_emb/, text_emb/, metadata/ (clip-retrieval's layout; read them "
            "with embedding-reader, index them with autofaiss)")
