import json

from pipeline.data.text.subword import tokenizer_from_dict
from pipeline.data.text.tokenizer import PAD, UNK, Tokenizer, count_words, split_words


def test_split_lowercases_and_splits_punctuation():
    assert split_words("A Red circle, left-of it.") == ["a", "red", "circle", ",", "left", "-", "of", "it", "."]


def test_vocab_order_unk_padding_and_roundtrip(tmp_path):
    tok = Tokenizer.from_counts(count_words(["b b a", "c b a"]), max_tokens=5, min_count=2)
    assert tok.vocab == [PAD, UNK, "b", "a"]  # c appears once: below min_count
    ids = tok.encode_batch(["a c b", ""])
    assert ids.shape == (2, 5) and ids.dtype.name == "int64"
    assert ids[0].tolist() == [3, 1, 2, 0, 0]
    assert ids[1].tolist() == [1, 0, 0, 0, 0]  # empty caption -> a lone [UNK], never all padding
    (tmp_path / "t.json").write_text(json.dumps(tok.to_dict()))  # as a checkpoint keeps it
    again = tokenizer_from_dict(json.loads((tmp_path / "t.json").read_text()))
    assert again.vocab == tok.vocab and (again.encode_batch(["a c b"]) == ids[:1]).all()


def test_truncation_and_max_size():
    tok = Tokenizer.from_counts(count_words(["x y z w"] * 3), max_tokens=2, max_size=4)
    assert len(tok) == 4
    assert len(tok.encode("x y z w")) == 2
