"""FAISS indexes over unit vectors (inner product = cosine), without Ray: build flat / hnsw / ivfpq / auto,
measure them against exact search, save and load them.

- flat: exact.
- hnsw: a graph index over the raw vectors (no training).
- ivfpq: an inverted file with product-quantised codes, trained on a sample, with a refine stage that re-ranks
  `refine_k_factor` x K candidates on the raw vectors so that compression does not cost recall.
- auto: flat below `auto_threshold` vectors, ivfpq (+ refine) above.
"""
from __future__ import annotations

import math
import time
import dataclasses
from dataclasses import dataclass

import faiss
import numpy as np

from pipeline.registry import INDEX_TYPES

TYPES = INDEX_TYPES


@dataclass(frozen=True)
class IndexSpec:
    """How to build an index; the defaults suit unit vectors of a few hundred dimensions."""
    type: str = "auto"
    auto_threshold: int = 100_000
    nlist: int = 0  # 0: about 4 sqrt(n), at most n / 39 (FAISS wants >= 39 training points per list)
    pq_m: int = 0  # 0: d / 8 sub-quantisers (8 dims each, 8 bits per code)
    nprobe: int = 32
    refine_k_factor: int = 48
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    train_sample: int = 100_000

    @classmethod
    def of(cls, index_cfg) -> "IndexSpec":
        """The spec a job's `index` section (`config.IndexConfig`) asks for."""
        return cls(**{k: v for k, v in dataclasses.asdict(index_cfg).items() if k != "shard_rows"})

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"index type {self.type!r}; choose one of {list(TYPES)}")

    def resolve(self, n: int) -> str:
        if self.type != "auto":
            return self.type
        return "flat" if n < self.auto_threshold else "ivfpq"


def ivf_lists(n: int, spec: IndexSpec) -> int:
    if spec.nlist:
        return spec.nlist
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def pq_subquantizers(d: int, spec: IndexSpec) -> int:
    m = spec.pq_m or max(1, d // 8)
    while d % m:  # PQ needs the dimension to split evenly
        m -= 1
    return m


def make_index(d: int, n: int, spec: IndexSpec) -> faiss.Index:
    """An empty (untrained) index of the resolved type for n vectors of dimension d."""
    kind = spec.resolve(n)
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
        return index
    nlist, m = ivf_lists(n, spec), pq_subquantizers(d, spec)
    index = faiss.index_factory(d, f"IVF{nlist},PQ{m}x8,RFlat", faiss.METRIC_INNER_PRODUCT)
    # The factory turns on polysemous training for 8-bit codes: it reorders each codebook so that a search may
    # filter by the codes' Hamming distance (polysemous_ht), which this index never does. The ordering changes no
    # distance, and it was nearly all of the training (d 256, 20,000 vectors: 53 core-s against 1.9).
    faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    configure_search(index, spec)
    return index


def configure_search(index: faiss.Index, spec: IndexSpec) -> None:
    """Search-time knobs (they are not all saved with the index, so loading sets them again)."""
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = spec.refine_k_factor
    try:
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    except RuntimeError:
        pass  # not an IVF index
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = spec.ef_search


def train_sample(vectors: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    if len(vectors) <= size:
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))]


def build_index(vectors: np.ndarray, spec: IndexSpec) -> tuple[faiss.Index, float]:
    """(n, d) float32 unit vectors -> (index holding them in order, build seconds incl. training)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    t0 = time.perf_counter()
    index = make_index(x.shape[1], len(x), spec)
    if not index.is_trained:
        index.train(train_sample(x, spec.train_sample))
    index.add(x)
    return index, time.perf_counter() - t0


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_vs_exact(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-K that the index also returned in its top-K: (q, K) ids each."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[:k]) & set(e)) / k for f, e in zip(found, exact)]))


def measure(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
    """recall@k against exact search and queries per second, on held-out queries."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    exact = exact_top_k(vectors, q, k)
    t0 = time.perf_counter()
    found = index.search(q, k)[1]
    qps = len(q) / max(time.perf_counter() - t0, 1e-9)
    return {f"recall@{k}_vs_exact": recall_vs_exact(found, exact), "qps": qps}


# ------------------------------------------------------------------------------------------ shards


def merge_top_k(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-shard (scores (q, k_s), global ids (q, k_s)) -> the best k overall (q, k) each, best first. Ids < 0
    (a shard with fewer than k vectors) never win; ties keep shard order, like one index holding them all."""
    scores = np.concatenate([r[0] for r in results], axis=1).astype(np.float32)  # (q, sum k_s)
    ids = np.concatenate([r[1] for r in results], axis=1).astype(np.int64)
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (q, k)
    top_s, top_i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    if top_s.shape[1] < k:  # fewer vectors in all shards together than k: pad like FAISS does
        pad = k - top_s.shape[1]
        top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
    return top_s, np.where(np.isinf(top_s), -1, top_i)


class ShardedIndex:
    """Indexes over consecutive id ranges of one gallery, searched in parallel threads (FAISS releases the
    GIL) and merged: the same `search(q, k) -> (scores, ids)` as one FAISS index over everything."""

    def __init__(self, shards: list[tuple[faiss.Index, int]]):
        self.shards = shards  # (index, first global id)
        self.ntotal = sum(index.ntotal for index, _ in shards)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor

        q = np.ascontiguousarray(queries, dtype=np.float32)

        def one(shard):
            index, offset = shard
            s, i = index.search(q, min(k, index.ntotal))
            return s, np.where(i >= 0, i + offset, -1)

        with ThreadPoolExecutor(max_workers=len(self.shards)) as pool:
            return merge_top_k(list(pool.map(one, self.shards)), k)


def train_template(sample: np.ndarray, n_total: int, spec: IndexSpec) -> bytes | None:
    """The shared trained (empty) index every shard starts from: IVF centroids and PQ codebooks learnt once
    on a sample of the whole gallery, so the shards' codes are comparable. None for untrained types."""
    index = make_index(sample.shape[1], n_total, spec)
    if index.is_trained:
        return None
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def fill_shard(vectors: np.ndarray, template: bytes | None, n_total: int, spec: IndexSpec) -> faiss.Index:
    """One shard: a copy of the trained template (or a fresh untrained-type index) holding `vectors`."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if template is None:
        index = make_index(x.shape[1], n_total, spec)
    else:
        index = faiss.deserialize_index(np.frombuffer(template, dtype=np.uint8))
        configure_search(index, spec)
    index.add(x)
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes, spec: IndexSpec | None = None) -> faiss.Index:
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    configure_search(index, spec or IndexSpec())
    return index

