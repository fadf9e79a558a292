"""Co-occurrence counts, PPMI + SVD word vectors and the GloVe format. No Ray."""
import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import svds

from pipeline.words.cooccurrence import (DENSE_MAX_VOCAB, Counts, count_cooccurrences, cosine, format_glove, merge_counts,
                                   ppmi, truncated_svd_vectors, word_vectors)


def test_counts_of_a_tiny_sentence_by_hand():
    # ids: 2 3 4 2 (e.g. "a red cat a"), window 2, harmonic weights 1/d
    c = count_cooccurrences([[2, 3, 4, 2]], vocab_size=5, window=2).dense()
    expected = np.zeros((5, 5))
    for i, j, w in [(2, 3, 1), (3, 4, 1), (4, 2, 1), (2, 4, 0.5), (3, 2, 0.5)]:
        expected[i, j] += w
        expected[j, i] += w
    np.testing.assert_allclose(c, expected)
    uniform = count_cooccurrences([[2, 3, 4, 2]], vocab_size=5, window=2, weighting="uniform").dense()
    assert uniform[2, 4] == 2 and uniform[3, 4] == 1  # (cat, a) at distances 1 and 2; (red, cat) once


def test_pad_and_unk_hold_positions_but_are_not_counted():
    c = count_cooccurrences([[2, 1, 3], [0, 0]], vocab_size=4, window=1).dense()
    assert c.sum() == 0  # 2 and 3 are two apart, window 1; [UNK] between them is never counted
    c = count_cooccurrences([[2, 1, 3]], vocab_size=4, window=2).dense()
    assert c[2, 3] == c[3, 2] == 0.5 and c[:2].sum() == 0 and c[:, :2].sum() == 0


def test_merged_partial_counts_equal_counts_of_the_whole():
    rng = np.random.default_rng(0)
    caps = [list(rng.integers(0, 30, size=rng.integers(1, 12))) for _ in range(200)]
    whole = count_cooccurrences(caps, 30, window=3)
    parts = [count_cooccurrences(caps[a:a + 37], 30, window=3) for a in range(0, 200, 37)]
    merged = merge_counts(parts, 30)
    np.testing.assert_array_equal(merged.rows, whole.rows)
    np.testing.assert_array_equal(merged.cols, whole.cols)
    np.testing.assert_allclose(merged.values, whole.values)
    assert np.allclose(whole.dense(), whole.dense().T)  # symmetric


def test_ppmi_matches_its_dense_formula():
    rng = np.random.default_rng(1)
    caps = [list(rng.integers(2, 12, size=8)) for _ in range(50)]
    counts = count_cooccurrences(caps, 12, window=2)
    m = counts.dense()
    total, word = m.sum(), m.sum(1)
    ctx = m.sum(0) ** 0.75
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(m / total) - np.log(word[:, None] / total) - np.log(ctx[None, :] / ctx.sum()) - np.log(2.0)
    expected = np.where(m > 0, np.maximum(pmi, 0), 0)
    np.testing.assert_allclose(ppmi(counts, alpha=0.75, shift=2.0).dense(), expected, atol=1e-12)


VOCAB = ["[PAD]", "[UNK]", "the", "cat", "dog", "sleeps", "runs", "on", "mat", "red", "blue", "car", "bus",
         "drives", "road"]


def _corpus():
    """'cat' and 'dog' share their contexts; 'red' only appears with vehicles."""
    ids = {w: i for i, w in enumerate(VOCAB)}
    sents = []
    for animal in ("cat", "dog"):
        for verb in ("sleeps", "runs"):
            sents += [f"the {animal} {verb} on the mat"] * 3
    for colour in ("red", "blue"):
        for vehicle in ("car", "bus"):
            sents += [f"the {colour} {vehicle} drives on the road"] * 3
    return [[ids[w] for w in s.split()] for s in sents], ids


def test_words_sharing_contexts_are_nearer():
    caps, ids = _corpus()
    vec = word_vectors(count_cooccurrences(caps, len(VOCAB), window=2), dim=8)
    assert vec.shape == (len(VOCAB), 8)
    assert cosine(vec[ids["cat"]], vec[ids["dog"]]) > cosine(vec[ids["cat"]], vec[ids["red"]]) + 0.3
    assert cosine(vec[ids["car"]], vec[ids["bus"]]) > cosine(vec[ids["car"]], vec[ids["dog"]]) + 0.3
    assert np.all(vec[:2] == 0)  # [PAD] and [UNK] never co-occur


def test_dimension_beyond_the_vocabulary_is_zero_padded():
    caps, _ = _corpus()
    vec = word_vectors(count_cooccurrences(caps, len(VOCAB), window=2), dim=40)
    assert vec.shape == (len(VOCAB), 40) and np.all(vec[:, len(VOCAB):] == 0)


def test_randomised_svd_agrees_with_exact_on_a_large_vocabulary():
    rng = np.random.default_rng(2)
    v = DENSE_MAX_VOCAB + 50
    # a low-rank matrix: the randomised SVD recovers its spectrum
    a, b = rng.random((v, 3)), rng.random((3, v))
    m = np.where(rng.random((v, v)) < 0.01, a @ b, 0.0)
    rows, cols = np.nonzero(m)
    sparse = Counts(rows, cols, m[rows, cols], v)
    vec = truncated_svd_vectors(sparse, 4, power=1.0)
    # the reference: ARPACK's Lanczos iteration (scipy), which gives the top singular values to every digit a
    # dense np.linalg.svd of this 3050 x 3050 matrix gives, in a 200th of its time
    exact = np.sort(svds(csr_matrix(m), k=4, return_singular_vectors=False))[::-1]
    np.testing.assert_allclose(np.linalg.norm(vec, axis=0), exact, rtol=0.05)


def test_glove_text_loads_into_a_vocabulary(tmp_path):
    from pipeline.models.word_vectors import load_word_vectors

    vec = np.arange(6, dtype=float).reshape(3, 2) / 7
    (tmp_path / "v.txt").write_text(format_glove(["a", ",", "b's"], vec))
    lines = (tmp_path / "v.txt").read_text().splitlines()
    assert lines[1].split(" ")[0] == "," and len(lines[1].split(" ")) == 3
    back, found, coverage = load_word_vectors(str(tmp_path / "v.txt"), ["[PAD]", "[UNK]", "b's", "a", ","])
    assert found.tolist() == [False, False, True, True, True] and coverage["dim"] == 2
    np.testing.assert_allclose(back[2:].numpy(), vec[[2, 0, 1]], rtol=1e-5)
    with pytest.raises(ValueError, match="whitespace"):
        format_glove(["a b"], vec[:1])
