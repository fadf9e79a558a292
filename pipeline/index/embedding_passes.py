"""Gallery embedding: two Ray Data passes (images, then captions) over the eval shards, each through a pool of
model-holding actors and streamed to Parquet, so no vector passes through the driver; a small gallery
(eval.in_driver_images) is embedded in the driver instead, shard by shard, into the same files; and reading
them back.

    <out>/images.parquet/    id, key, label, shard, path, vector  (a Parquet dataset: one file per write task;
                                                                path: the image's file or URL, where known)
    <out>/captions.parquet/  id, key (of its image), caption, vector

Ids are dense (0..n-1, in file-name order) and are the FAISS ids of the indexes built over these files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline import storage

if TYPE_CHECKING:
    from pipeline.gallery import Gallery

IMAGES, CAPTIONS = "images.parquet", "captions.parquet"


def vector_column(x: np.ndarray):
    """(n, D) float32 -> a fixed-size-list Arrow column (readable by any Parquet reader, no Ray types)."""
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])


def vectors_of(table) -> np.ndarray:
    """The `vector` column of an Arrow table -> (n, D) float32."""
    col = table.column("vector").combine_chunks()
    if len(col) == 0:
        return np.zeros((0, col.type.list_size), np.float32)
    return np.array(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(col), -1)  # writable


class _EmbedActor:
    def __init__(self, checkpoint: str | None, device: str = "cpu", storage_options: dict | None = None,
                 encoder=None):
        if encoder is not None:  # handed over: the model the image pass loaded, or a fitted baseline
            self.encoder = encoder
            return
        from pipeline.encoder import load

        storage.configure(**(storage_options or {}))  # a checkpoint on s3:// is read from this process
        self.encoder = load(checkpoint, device)


class EmbedImages(_EmbedActor):
    """Ray Data actor: eval rows {'key', 'label', 'image', 'shard', 'path', ...} -> {key, label, shard, path,
    vector}."""

    def __call__(self, batch: dict):
        import pyarrow as pa

        vectors = self.encoder.encode_pixels(batch["image"]).numpy()  # (n, D)
        return pa.table({"key": pa.array(batch["key"].tolist(), pa.string()),
                         "label": pa.array([str(x) for x in batch["label"]], pa.string()),
                         "shard": pa.array([str(x) for x in batch["shard"]], pa.string()),
                         "path": pa.array([str(x) for x in batch["path"]], pa.string()),
                         "vector": vector_column(vectors)})


class EmbedCaptions(_EmbedActor):
    """Ray Data actor: caption rows {'key', 'caption'} -> {key, caption, vector}."""

    def __call__(self, batch: dict):
        import pyarrow as pa

        captions = [str(c) for c in batch["caption"]]
        return pa.table({"key": pa.array(batch["key"].tolist(), pa.string()),
                         "caption": pa.array(captions, pa.string()),
                         "vector": vector_column(self.encoder.encode_text(captions).numpy())})  # (n, D)


@dataclass
class Embedded:
    out: str  # the directory holding images.parquet/ and captions.parquet/
    n_images: int
    n_captions: int
    dim: int


def embed_to_parquet(checkpoint: str | None, paths: list[str], image_size: int, out: str, num_actors: int = 1,
                     use_gpu: bool = False, batch_size: int = 256, skip_log=None, in_driver_images: int = 0,
                     encoder=None, captionless: bool = False) -> Embedded:
    """Embed every image and every caption of the eval shards into `out` (local or s3://): in this process
    where the gallery has at most `in_driver_images` images and no GPU is asked for, else by Ray Data actor
    pools. The encoder is the `checkpoint`'s, loaded in each actor, or `encoder` itself (a fitted baseline:
    anything with `encode_pixels` and `encode_text`), handed to each. `captionless`: images without a caption
    are embedded too (a search gallery, a zero-shot set); an evaluation's gallery skips them."""
    from pipeline.checkpoint import read_config
    from pipeline.data.local_passes import fits_in_driver
    from pipeline.data.transforms import image_view

    for name in (IMAGES, CAPTIONS):  # a rerun into the same directory replaces, never appends
        if storage.exists(storage.join(out, name)):
            storage.remove_tree(storage.join(out, name))
    # resampled as the checkpoint's model expects (a baseline: the default view it was fitted on)
    view = image_view(read_config(checkpoint)["data"]) if encoder is None else ("bilinear", "shortest")
    if not use_gpu and fits_in_driver(paths, in_driver_images):
        n_images, n_captions = embed_here(checkpoint, paths, image_size, out, batch_size, skip_log, view, encoder,
                                          captionless)
    else:
        embed_with_actors(checkpoint, paths, image_size, out, num_actors, use_gpu, batch_size, skip_log, view,
                          encoder, captionless)
        n_images, n_captions = number_rows(storage.join(out, IMAGES)), number_rows(storage.join(out, CAPTIONS))
    if n_images == 0:
        raise ValueError(f"the gallery {paths[0]}{' ...' if len(paths) > 1 else ''} has no readable samples")
    return Embedded(out, n_images, n_captions, parquet_dim(storage.join(out, IMAGES)))


def embed_with_actors(checkpoint: str | None, paths: list[str], image_size: int, out: str, num_actors: int,
                      use_gpu: bool, batch_size: int, skip_log, view: tuple[str, str], encoder=None,
                      captionless: bool = False) -> None:
    """The two Ray Data passes, each file of rows then numbered by `number_rows`."""
    from ray.data import ActorPoolStrategy

    from pipeline.data.ingest import eval_dataset, read_shards
    from pipeline.data.transforms import caption_rows

    actors = dict(fn_constructor_kwargs={"checkpoint": checkpoint, "device": "cuda" if use_gpu else "cpu",
                                         "storage_options": storage.options(), "encoder": encoder},
                  batch_size=batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=num_actors),
                  num_gpus=1 if use_gpu else 0)
    fs, root = storage.arrow_filesystem(out)
    images = eval_dataset(paths, image_size, skip_log, "gallery", view, captionless).map_batches(EmbedImages,
                                                                                                 **actors)
    images.write_parquet(f"{root}/{IMAGES}", filesystem=fs)
    captions = read_shards(paths, with_images=False).map_batches(caption_rows, batch_format="numpy")
    captions.map_batches(EmbedCaptions, **actors).write_parquet(f"{root}/{CAPTIONS}", filesystem=fs)


def embed_here(checkpoint: str | None, paths: list[str], image_size: int, out: str, batch_size: int, skip_log,
               view: tuple[str, str], encoder=None, captionless: bool = False) -> tuple[int, int]:
    """Both passes in this process, shard by shard: the rows `eval_dataset` and the caption pass would give
    (same reader, same preparation, same skips counted), one numbered Parquet file per shard and pass.
    -> (images, captions)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.local_passes import chunks, prepare_eval, shard_batches
    from pipeline.data.transforms import caption_rows

    images = EmbedImages(checkpoint, storage_options=storage.options(), encoder=encoder)
    captions = EmbedCaptions(checkpoint, encoder=images.encoder)
    fs, root = storage.arrow_filesystem(out)
    counts = {IMAGES: 0, CAPTIONS: 0}
    for i, rows in enumerate(shard_batches(paths)):
        prepared = prepare_eval(rows, image_size, skip_log, "gallery", view, captionless)
        for name, fn, batch in ((IMAGES, images, prepared), (CAPTIONS, captions, caption_rows(rows))):
            parts = [fn(part) for part in chunks(batch, batch_size)]
            if not parts:
                continue
            table = pa.concat_tables(parts)
            n = len(table)
            table = table.add_column(0, "id", pa.array(np.arange(counts[name], counts[name] + n), pa.int64()))
            fs.create_dir(f"{root}/{name}", recursive=True)
            pq.write_table(table, f"{root}/{name}/{i:06d}.parquet", filesystem=fs)  # by name: the id order
            counts[name] += n
    return counts[IMAGES], counts[CAPTIONS]


# ------------------------------------------------------------------------------------------ reading back


def parquet_files(directory: str) -> list[str]:
    """The Parquet files of a dataset directory, in the order ids are numbered (by name)."""
    import pyarrow.fs as pafs

    fs, root = storage.arrow_filesystem(directory)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    return [f"s3://{f}" if storage.is_remote(directory) else f for f in files]


def row_counts(files: list[str]) -> list[int]:
    """Rows per Parquet file, from the footers alone."""
    import pyarrow.parquet as pq

    counts = []
    for f in files:
        fs, path = storage.arrow_filesystem(f)
        with fs.open_input_file(path) as fh:
            counts.append(pq.ParquetFile(fh).metadata.num_rows)
    return counts


def parquet_schema(directory: str):
    """The Arrow schema of a Parquet dataset directory, from its first file's footer."""
    import pyarrow.parquet as pq

    files = parquet_files(directory)
    fs, path = storage.arrow_filesystem(files[0])
    with fs.open_input_file(path) as fh:
        return pq.ParquetFile(fh).schema_arrow


def parquet_columns(directory: str) -> list[str]:
    return parquet_schema(directory).names


def parquet_dim(directory: str) -> int:
    return parquet_schema(directory).field("vector").type.list_size


def read_file(path: str, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    fs, local = storage.arrow_filesystem(path)
    return pq.read_table(local, filesystem=fs, columns=columns)


def _number_file(path: str, first_id: int, storage_options: dict) -> int:
    """Prepend the `id` column (first_id, first_id + 1, ...) to one Parquet file, replacing it atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    storage.configure(**storage_options)
    table = read_file(path)
    if "id" in table.column_names:
        table = table.drop_columns(["id"])
    table = table.add_column(0, "id", pa.array(np.arange(first_id, first_id + len(table)), pa.int64()))
    fs, local = storage.arrow_filesystem(path)
    pq.write_table(table, local + ".tmp", filesystem=fs)
    fs.move(local + ".tmp", local)  # a crash mid-write leaves the old file, not a half-written one
    return len(table)


def number_rows(directory: str) -> int:
    """Give every row of a Parquet dataset directory its dense id, one Ray task per file. -> rows."""
    import ray

    files = parquet_files(directory)
    counts = row_counts(files)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    task = ray.remote(num_cpus=0.25)(_number_file)
    ray.get([task.remote(f, s, storage.options()) for f, s in zip(files, starts)])
    return int(sum(counts))


def read_columns(directory: str, columns: list[str]):
    """Selected columns of every file, ordered by id -> Arrow table."""
    import pyarrow as pa

    tables = [read_file(f, ["id", *[c for c in columns if c != "id"]]) for f in parquet_files(directory)]
    return pa.concat_tables(tables).sort_by("id") if tables else None


def read_vectors(directory: str) -> np.ndarray:
    """Every vector of a dataset directory, in id order -> (n, D) float32."""
    return vectors_of(read_columns(directory, ["vector"]))


def sample_vectors(directory: str, n: int, seed: int = 0) -> np.ndarray:
    """Up to n vectors drawn uniformly without replacement, reading one file at a time -> (<=n, D)."""
    files = parquet_files(directory)
    counts = np.array(row_counts(files))
    total = int(counts.sum())
    picked = np.sort(np.random.default_rng(seed).choice(total, min(n, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for f, lo, hi in zip(files, starts[:-1], starts[1:]):
        rows = picked[(picked >= lo) & (picked < hi)] - lo
        if len(rows):
            parts.append(vectors_of(read_file(f, ["vector"]).take(rows)))
    return np.concatenate(parts) if parts else np.zeros((0, parquet_dim(directory)), np.float32)


def read_gallery(out: str) -> tuple[Gallery, int]:
    """Both passes joined into the evaluation's Gallery (images in id order, so Gallery positions are FAISS
    ids) -> (gallery, captions dropped because the image pass skipped their image)."""
    import torch

    from pipeline.gallery import Gallery

    images = read_columns(storage.join(out, IMAGES), ["key", "label", "vector"])
    captions = read_columns(storage.join(out, CAPTIONS), ["key", "caption", "vector"])
    keys = images.column("key").to_pylist()
    position = {k: i for i, k in enumerate(keys)}
    owners = [position.get(k, -1) for k in captions.column("key").to_pylist()]
    keep = np.array([o >= 0 for o in owners], dtype=bool)
    if not keep.all():  # the caption pass cannot know which images fail to decode
        import pyarrow as pa

        captions = captions.filter(pa.array(keep))
    labels = images.column("label").to_pylist()
    labelled = all(labels) and len(set(labels)) > 1  # zero-shot needs every image labelled
    gallery = Gallery(torch.from_numpy(vectors_of(images)), torch.from_numpy(vectors_of(captions)),
                      torch.tensor([o for o in owners if o >= 0], dtype=torch.long), keys,
                      captions.column("caption").to_pylist(), labels if labelled else None)
    return gallery, int((~keep).sum())
