import io
import json

import numpy as np
from PIL import Image

from pipeline.data import transforms
from pipeline.data.tokenizer import Tokenizer, count_words


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def _left_red_right_blue(size=64) -> Image.Image:
    arr = np.zeros((size, size, 3), np.uint8)
    arr[20:44, 4:24] = (255, 0, 0)
    arr[20:44, 40:60] = (0, 0, 255)
    return Image.fromarray(arr)


def test_augment_never_flips():
    img = _left_red_right_blue()
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = transforms.augment_image(img, 32, 0.5, rng).astype(int)  # (3, S, S)
        red = (out[0] > 150) & (out[2] < 100)
        blue = (out[2] > 150) & (out[0] < 100)
        assert red.any() and blue.any()
        assert np.nonzero(red)[1].mean() < np.nonzero(blue)[1].mean()


def test_parse_captions_prefers_json_list():
    meta = json.dumps({"captions": ["one", "  ", "two  words"]}).encode()
    assert transforms.parse_captions(b"txt caption", meta) == ["one", "two words"]
    assert transforms.parse_captions(b"txt caption", None) == ["txt caption"]
    assert transforms.parse_captions(b"   ", b"{}") == []
    assert transforms.parse_captions(b"\xff\xfe bad utf8", None)  # replaced, not crashed


def test_rename_member():
    assert transforms.rename_member("0001.JPEG") == "0001.image"
    assert transforms.rename_member("0001.webp") == "0001.image"
    assert transforms.rename_member("0001.txt") == "0001.txt"


def _batch():
    good = _jpeg(_left_red_right_blue())
    return {"__key__": np.array(["a", "b", "c", "d"], dtype=object),
            "image": np.array([good, b"not a jpeg", good, None], dtype=object),
            "txt": np.array([b"red left of blue", b"x", b"", b"y"], dtype=object)}


def test_train_batch_skips_and_counts_bad_samples():
    tok = Tokenizer.from_counts(count_words(["red left of blue"]), max_tokens=8)
    out, skips = transforms.prepare_train_batch(_batch(), tok, 32, True, 0.8, np.random.default_rng(0))
    assert out["image"].shape == (1, 3, 32, 32) and out["image"].dtype == np.uint8
    assert out["tokens"].shape == (1, 8)
    assert skips == {"corrupt_image": ["b"], "empty_caption": ["c"], "missing_image": ["d"]}


def test_eval_batch_keeps_all_captions():
    b = _batch()
    b["json"] = np.array([json.dumps({"captions": ["p", "q"]}).encode(), None, None, None], dtype=object)
    out, skips = transforms.prepare_eval_batch(b, 16)
    assert out["key"].tolist() == ["a"] and json.loads(out["captions"][0]) == ["p", "q"]
    assert sum(len(v) for v in skips.values()) == 3


def test_word_counts_carry_sample_count():
    out = transforms.caption_word_counts(_batch())
    counts = dict(zip(out["word"].tolist(), out["count"].tolist()))
    assert counts[""] == 3 and counts["red"] == 1
