"""FAISS index builds against exact search on clustered unit vectors."""
import faiss
import numpy as np
import pytest

from pipeline.index import faiss_indexes as indexes


def clustered(n: int, d: int, seed: int = 0, centres: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind,floor", [("flat", 1.0), ("hnsw", 0.95), ("ivfpq", 0.95)])
def test_each_index_type_against_exact(kind, floor, tmp_path):
    x, q = clustered(3000, 32), clustered(200, 32, seed=1)
    # 32-d codes of 4 bytes are coarse: the refine stage re-ranks 32 x K candidates on the raw vectors
    spec = indexes.IndexSpec(type=kind, nlist=32, nprobe=16, refine_k_factor=32)
    index, build_s = indexes.build_index(x, spec)
    assert index.ntotal == 3000 and build_s >= 0
    m = indexes.measure(index, x, q, k=10)
    assert m["recall@10_vs_exact"] >= floor and m["qps"] > 0
    again = indexes.deserialize(indexes.serialize(index), spec)  # how a built index is saved and loaded
    assert (again.search(q, 10)[1] == index.search(q, 10)[1]).all()


def test_refine_is_what_keeps_pq_recall():
    x, q = clustered(3000, 32), clustered(200, 32, seed=1)
    spec = indexes.IndexSpec(type="ivfpq", nlist=32, nprobe=32, refine_k_factor=32)
    with_refine, _ = indexes.build_index(x, spec)
    holder = indexes.make_index(32, 3000, spec)  # keeps the base index alive: it owns it
    without = faiss.downcast_index(holder.base_index)
    without.train(x)
    without.add(x)
    indexes.configure_search(without, spec)
    exact = indexes.exact_top_k(x, q, 10)
    coarse = indexes.recall_vs_exact(without.search(q, 10)[1], exact)
    refined = indexes.recall_vs_exact(with_refine.search(q, 10)[1], exact)
    assert refined > coarse + 0.1 and refined >= 0.95


def test_ivfpq_searches_as_the_factory_default_without_its_polysemous_training():
    """index_factory's 8-bit PQ trains its codebooks for polysemous search (a reordering for filtering by Hamming
    distance, which this project never searches by, and nearly all of the training time). Without it: the same
    codebook in another order, and the same PQ distances and neighbours as the factory's default index."""
    x, q = clustered(2000, 8), clustered(100, 8, seed=1)
    spec = indexes.IndexSpec(type="ivfpq", nlist=8, nprobe=8, refine_k_factor=1, pq_m=1)
    ours = indexes.build_index(x, spec)[0]
    ref = faiss.index_factory(8, "IVF8,PQ1x8,RFlat", faiss.METRIC_INNER_PRODUCT)  # the reference: as FAISS makes it
    indexes.configure_search(ref, spec)
    ref.train(x)
    ref.add(x)
    codebooks = [faiss.vector_to_array(faiss.downcast_index(faiss.extract_index_ivf(i)).pq.centroids).reshape(256, 8)
                 for i in (ours, ref)]
    assert not np.array_equal(*codebooks)  # the reordering happened in the reference only
    assert np.array_equal(*(np.unique(c, axis=0) for c in codebooks))
    pq_ours, pq_ref = (faiss.downcast_index(i.base_index).search(q, 10) for i in (ours, ref))
    np.testing.assert_allclose(pq_ours[0], pq_ref[0], rtol=1e-5, atol=1e-6)
    assert (pq_ours[1] == pq_ref[1]).mean() > 0.99  # ties between equal codes may order either way


def test_auto_is_exact_below_the_threshold_and_approximate_above():
    spec = indexes.IndexSpec(type="auto", auto_threshold=1000)
    assert spec.resolve(999) == "flat" and spec.resolve(1000) == "ivfpq"
    with pytest.raises(ValueError, match="choose one of"):
        indexes.IndexSpec(type="annoy")


def test_recall_vs_exact_hand_worked():
    found, exact = np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])
    assert indexes.recall_vs_exact(found, exact) == pytest.approx(1 / 3)  # 2/3 and 0/3


# ------------------------------------------------------------------------------------------ shards


def naive_merge(results, k):
    """Slow reference: every (score, id) pair of every shard in one list per query, sorted."""
    out_s, out_i = [], []
    for q in range(results[0][0].shape[0]):
        pairs = [(float(s), int(i)) for scores, ids in results for s, i in zip(scores[q], ids[q]) if i >= 0]
        pairs.sort(key=lambda p: -p[0])
        pairs = (pairs + [(-np.inf, -1)] * k)[:k]
        out_s.append([p[0] for p in pairs])
        out_i.append([p[1] for p in pairs])
    return np.array(out_s), np.array(out_i)


def test_merge_top_k_against_a_naive_merge():
    rng = np.random.default_rng(0)
    results = []
    for shard in range(3):
        scores = np.sort(rng.standard_normal((7, 4)), axis=1)[:, ::-1].astype(np.float32)
        ids = rng.choice(1000, (7, 4), replace=False) + 1000 * shard
        ids[0, 2:] = -1  # a shard with fewer than k vectors pads with -1
        results.append((scores, ids))
    s, i = indexes.merge_top_k(results, 5)
    ns, ni = naive_merge(results, 5)
    assert (i == ni).all() and np.allclose(s, ns)


def test_merge_top_k_hand_worked_and_padding():
    a = (np.array([[0.9, 0.1]]), np.array([[3, 4]]))
    b = (np.array([[0.5, -1.0]]), np.array([[10, -1]]))
    s, i = indexes.merge_top_k([a, b], 4)
    assert i.tolist() == [[3, 10, 4, -1]] and np.allclose(s[0, :3], [0.9, 0.5, 0.1])


def test_sharded_flat_equals_one_exact_index():
    x, q = clustered(1000, 16), clustered(50, 16, seed=1)
    spec = indexes.IndexSpec(type="flat")
    bounds = [0, 300, 650, 1000]
    template = indexes.train_template(x[:100], 1000, spec)
    assert template is None  # flat needs no training
    sharded = indexes.ShardedIndex([(indexes.fill_shard(x[a:b], template, 1000, spec), a)
                                    for a, b in zip(bounds[:-1], bounds[1:])])
    assert sharded.ntotal == 1000
    s, i = sharded.search(q, 10)
    es, ei = indexes.build_index(x, spec)[0].search(q, 10)
    assert (i == ei).all() and np.allclose(s, es, atol=1e-6)


def test_ivfpq_shards_share_one_trained_quantizer_and_keep_recall():
    x, q = clustered(1200, 32), clustered(100, 32, seed=1)
    spec = indexes.IndexSpec(type="ivfpq", nlist=8, nprobe=8, refine_k_factor=32)
    template = indexes.train_template(x, 1200, spec)
    shards = [(indexes.fill_shard(x[a:a + 300], template, 1200, spec), a) for a in range(0, 1200, 300)]
    # the same centroids in every shard: the quantizer was trained once, not per shard
    centroids = [faiss.extract_index_ivf(s).quantizer.reconstruct_n(0, 8) for s, _ in shards]
    assert all(np.array_equal(centroids[0], c) for c in centroids[1:])
    found = indexes.ShardedIndex(shards).search(q, 10)[1]
    exact = indexes.exact_top_k(x, q, 10)
    single = indexes.build_index(x, spec)[0].search(q, 10)[1]
    assert indexes.recall_vs_exact(found, exact) >= 0.95
    assert indexes.recall_vs_exact(found, exact) >= indexes.recall_vs_exact(single, exact) - 0.02
    copy = indexes.deserialize(indexes.serialize(shards[0][0]), spec)
    assert (copy.search(q, 10)[1] == shards[0][0].search(q, 10)[1]).all()


def test_the_spec_a_config_section_asks_for():
    from pipeline.config import IndexConfig

    spec = indexes.IndexSpec.of(IndexConfig(type="hnsw", hnsw_m=16, shard_rows=5))
    assert (spec.type, spec.hnsw_m) == ("hnsw", 16)
    assert spec.nprobe == IndexConfig().nprobe and spec.ef_search == IndexConfig().ef_search
