"""FAISS indexes over an embedded gallery (see `embedding_passes`), built in one process or, for galleries
above `index.shard_rows` vectors, as shards in parallel Ray tasks over one trained quantizer; saved, loaded
and searched (shard-parallel, merged top-K).

    pipeline index --checkpoint runs/demo --data data/demo/val --out runs/demo/index

An index directory holds the embeddings (images.parquet/, captions.parquet/: ids, keys, captions, vectors),
images.faiss (text -> image search) and captions.faiss (image -> text), or their shards
images.shard-00000.faiss ..., and meta.json (checkpoint, dimension, index types, shards, build figures), so
`pipeline search` needs nothing else (`searcher` queries it).
"""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from pipeline import storage
from pipeline.index.embedding_passes import (CAPTIONS, IMAGES, parquet_files, read_file, row_counts,
                                             sample_vectors)
from pipeline.index.faiss_indexes import (IndexSpec, ShardedIndex, build_index, deserialize, fill_shard, measure,
                                          merge_top_k, recall_vs_exact, serialize, train_template)

N_QUERIES = 1000  # held-out queries of the other modality for recall and QPS


def build_measured(vectors: np.ndarray, queries: np.ndarray, spec: IndexSpec):
    """(n, D) vectors in one index, measured against exact search on the held-out queries -> (index, info)."""
    t0 = time.perf_counter()
    index = build_index(vectors, spec)[0]
    build_s = time.perf_counter() - t0
    return index, {"type": spec.resolve(len(vectors)), "n": len(vectors), "build_s": build_s,
                   **measure(index, vectors, queries, k=min(10, len(vectors)))}


def build_one(directory: str, queries: np.ndarray, spec: IndexSpec):
    """The whole gallery in one index, in this process -> (index, info)."""
    from pipeline.index.embedding_passes import read_vectors

    t0 = time.perf_counter()
    vectors = read_vectors(directory)  # (n, D) in id order
    read_s = time.perf_counter() - t0
    index, info = build_measured(vectors, queries, spec)
    info["build_s"] += read_s  # reading the Parquet counts, as it does for the shards
    return index, info


def _shard_task(pieces: list, first_id: int, template: bytes | None, n_total: int, spec: dict,
                queries: np.ndarray, k: int, uri: str, storage_options: dict) -> dict:
    """A Ray task: read this shard's rows, fill a copy of the trained template, write it to `uri`, and
    search the held-out queries exactly and through the shard (global ids) for the driver to merge."""
    from pipeline.index.embedding_passes import vectors_of

    storage.configure(**storage_options)
    t0 = time.perf_counter()
    vectors = np.concatenate([vectors_of(read_file(f, ["vector"]).slice(lo, hi - lo)) for f, lo, hi in pieces])
    index = fill_shard(vectors, template, n_total, IndexSpec(**spec))
    storage.write_bytes(uri, serialize(index))
    build_s = time.perf_counter() - t0  # read, add, write: the measurement below is not part of the build
    kk = min(k, len(vectors))
    flat = build_index(vectors, IndexSpec(type="flat"))[0]
    exact = flat.search(queries, kk)
    t0 = time.perf_counter()
    approx = index.search(queries, kk)
    search_s = time.perf_counter() - t0
    shift = lambda r: (r[0], np.where(r[1] >= 0, r[1] + first_id, -1))  # noqa: E731
    return {"n": len(vectors), "first_id": first_id, "build_s": build_s, "search_s": search_s,
            "exact": shift(exact), "approx": shift(approx)}


def shard_pieces(counts: list[int], files: list[str], shard_rows: int) -> list[tuple[int, list]]:
    """Split ids 0..n-1 into ceil(n / shard_rows) near-equal consecutive ranges -> [(first id, [(file, lo, hi)
    row slices of the files that make up the range])]."""
    n = sum(counts)
    shards = -(-n // shard_rows)
    bounds = np.linspace(0, n, shards + 1).round().astype(int)
    starts = np.concatenate([[0], np.cumsum(counts)])
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        pieces = [(f, max(a, s) - s, min(b, e) - s) for f, s, e in zip(files, starts[:-1], starts[1:])
                  if s < b and e > a and e > s]
        out.append((int(a), pieces))
    return out


def build_sharded(directory: str, out: str, name: str, queries: np.ndarray, spec: IndexSpec, shard_rows: int):
    """Shards of at most shard_rows vectors, built in parallel Ray tasks over one quantizer trained on a
    sample of the whole gallery; each task writes its shard next to the embeddings and searches the held-out
    queries through it and exactly, so recall and QPS are measured without gathering the gallery. -> info"""
    import ray

    t0 = time.perf_counter()
    files = parquet_files(directory)
    counts = row_counts(files)
    n = int(sum(counts))
    template = train_template(sample_vectors(directory, spec.train_sample), n, spec)
    train_s = time.perf_counter() - t0
    plan = shard_pieces(counts, files, shard_rows)
    task = ray.remote(num_cpus=1)(_shard_task)
    k = min(10, n)
    uris = [storage.join(out, f"{name}.shard-{i:05d}.faiss") for i in range(len(plan))]
    done = ray.get([task.remote(pieces, first, template, n, dataclasses.asdict(spec), queries, k, uri,
                                storage.options()) for (first, pieces), uri in zip(plan, uris)])
    build_s = train_s + max(d["build_s"] for d in done)  # shards build in parallel: the slowest bounds it
    exact = merge_top_k([d["exact"] for d in done], k)[1]
    found = merge_top_k([d["approx"] for d in done], k)[1]
    slowest = max(d["search_s"] for d in done)  # shards search in parallel: the slowest bounds the latency
    shards = [{"file": uri.rsplit("/", 1)[-1], "first_id": d["first_id"], "n": d["n"], "build_s": d["build_s"],
               "qps": len(queries) / max(d["search_s"], 1e-9)} for uri, d in zip(uris, done)]
    return {"type": spec.resolve(n), "n": n, "build_s": build_s, "train_s": train_s, "qps": len(queries) / max(slowest, 1e-9),
            f"recall@{k}_vs_exact": recall_vs_exact(found, exact), "shards": shards}


def build_gallery_indexes(out: str, spec: IndexSpec, shard_rows: int = 1_000_000,
                          names=("images", "captions")) -> dict:
    """name -> (index or None, info) for the image index (text -> image search) and the caption index
    (image -> text) over the embeddings in `out`, each measured against exact search on held-out queries
    of the other modality. Indexes built in one process are returned for saving and for the evaluation's
    approximate search; sharded ones are written by their tasks and returned as None."""
    built = {}
    for name, directory, other in (("images", IMAGES, CAPTIONS), ("captions", CAPTIONS, IMAGES)):
        if name not in names:
            continue
        directory = storage.join(out, directory)
        queries = np.ascontiguousarray(sample_vectors(storage.join(out, other), N_QUERIES), dtype=np.float32)
        if sum(row_counts(parquet_files(directory))) <= shard_rows:
            built[name] = build_one(directory, queries, spec)
        else:
            built[name] = (None, build_sharded(directory, out, name, queries, spec, shard_rows))
    return built


def write_index(out: str, built: dict, checkpoint: str, spec: IndexSpec, n_images: int, n_captions: int,
                dim: int) -> dict:
    """Save the indexes `built` in one process (sharded ones are already written) and meta.json. -> meta"""
    per_index = {}
    for name, (index, info) in built.items():
        if index is not None:
            storage.write_bytes(storage.join(out, f"{name}.faiss"), serialize(index))
        per_index[name] = info
    main = per_index["images"]  # the contract's index block: text -> image search over the image gallery
    # the checkpoint relative to the index when both lie in one run directory: a moved run keeps its model
    meta = {"type": main["type"], "metric": "inner_product", "checkpoint": storage.relative_ref(str(checkpoint), out),
            "dim": int(dim),
            "n_images": n_images, "n_captions": n_captions, "build_s": main["build_s"], "qps": main["qps"],
            "recall@10_vs_exact": main.get("recall@10_vs_exact", 1.0), "spec": dataclasses.asdict(spec),
            "indexes": per_index}
    storage.write_text(storage.join(out, "meta.json"), json.dumps(meta, indent=2))
    return meta


def index_checkpoint(index_dir: str, meta: dict) -> str:
    """The checkpoint an index was built with, as a path to open (meta.json may name it relative to the index)."""
    return storage.resolve_ref(meta["checkpoint"], str(index_dir))


def load_gallery_index(index_dir: str, name: str, meta: dict):
    """The saved index `name` (images | captions): one FAISS index, or its shards as a ShardedIndex."""
    spec = IndexSpec(**meta["spec"]) if "spec" in meta else IndexSpec()
    shards = meta.get("indexes", {}).get(name, {}).get("shards")
    if not shards:
        return deserialize(storage.read_bytes(storage.join(index_dir, f"{name}.faiss")), spec)
    return ShardedIndex([(deserialize(storage.read_bytes(storage.join(index_dir, s["file"])), spec), s["first_id"])
                         for s in shards])


class ShardServer:
    """A Ray actor holding one shard, for galleries whose shards do not fit in one process together."""

    def __init__(self, uri: str, first_id: int, spec: dict, storage_options: dict):
        storage.configure(**storage_options)
        self.index, self.first_id = deserialize(storage.read_bytes(uri), IndexSpec(**spec)), first_id

    def search(self, queries: np.ndarray, k: int):
        s, i = self.index.search(queries, min(k, self.index.ntotal))
        return s, np.where(i >= 0, i + self.first_id, -1)


class RayShardedIndex:
    """`search(q, k)` over shards held by one ShardServer actor each, queried in parallel and merged. Each actor
    asks for the memory its shard takes (so Ray spreads them over nodes), not for CPUs it would hold idle."""

    def __init__(self, index_dir: str, name: str, meta: dict, timeout_s: float = 600.0):
        import ray

        spec, shards = meta.get("spec", {}), meta["indexes"][name]["shards"]
        self.timeout_s = timeout_s
        self.servers = []
        for s in shards:
            uri = storage.join(index_dir, s["file"])
            fs, path = storage.filesystem(uri)
            need = int(1.5 * fs.size(path)) + (64 << 20)
            server = ray.remote(num_cpus=0, memory=need)(ShardServer)
            self.servers.append(server.remote(uri, s["first_id"], spec, storage.options()))
        self.ntotal = sum(s["n"] for s in shards)

    def search(self, queries: np.ndarray, k: int):
        import ray
        from ray.exceptions import GetTimeoutError

        q = np.ascontiguousarray(queries, dtype=np.float32)
        try:
            return merge_top_k(ray.get([s.search.remote(q, k) for s in self.servers], timeout=self.timeout_s), k)
        except GetTimeoutError:
            raise RuntimeError(f"the {len(self.servers)} shard actors did not answer within {self.timeout_s:.0f} s: "
                               "the cluster may lack the memory to hold every shard (see `ray status`)") from None
