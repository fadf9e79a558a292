"""FAISS index builds against exact search on clustered unit vectors."""
import faiss
import numpy as np
import pytest

from pipeline import indexes


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
    indexes.save_index(index, str(tmp_path / "i.faiss"))
    again = indexes.load_index(str(tmp_path / "i.faiss"), spec)
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


def test_auto_is_exact_below_the_threshold_and_approximate_above():
    spec = indexes.IndexSpec(type="auto", auto_threshold=1000)
    assert spec.resolve(999) == "flat" and spec.resolve(1000) == "ivfpq"
    with pytest.raises(ValueError, match="choose one of"):
        indexes.IndexSpec(type="annoy")


def test_recall_vs_exact_hand_worked():
    found, exact = np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])
    assert indexes.recall_vs_exact(found, exact) == pytest.approx(1 / 3)  # 2/3 and 0/3
