import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipeline.data import shards, transforms
from pipeline.data.tokenizer import Tokenizer, count_words
from tests import faults


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


def test_parse_captions_reasons():
    meta = json.dumps({"captions": ["one", "  ", "two  words"]}).encode()
    assert transforms.parse_captions(b"txt caption", meta) == (["one", "two words"], "")
    assert transforms.parse_captions(b"txt caption", None) == (["txt caption"], "")
    assert transforms.parse_captions(None, None) == ([], "missing_caption")
    assert transforms.parse_captions(b"   ", b"{}") == ([], "empty_caption")
    assert transforms.parse_captions(b"\xff\xfe bad utf8", None) == ([], "undecodable_caption")


def _rows(members, shard="s.tar"):
    """Tar members -> a shards-style batch, through the real tar reader."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = list(shards.iter_tar_samples(io.BytesIO(buf.getvalue()), shard))
    return {c: np.array([r[c] if c != "seed" else i for i, r in enumerate(rows)], dtype=object)
            for c in ("key", "image", "txt", "json", "problem", "has_image", "seed")}


def test_every_fault_is_skipped_and_counted_or_converted():
    members, expected, usable = faults.fault_members()
    tok = Tokenizer.from_counts(count_words(["an image of mode"]), max_tokens=8)
    out, skips = transforms.prepare_train_batch(_rows(members), tok, 32, True, 0.8)
    assert {r: len(k) for r, k in skips.items()} == expected
    assert out["image"].shape == (usable, 3, 32, 32) and out["image"].dtype == np.uint8
    assert out["tokens"].shape == (usable, 8) and len(out["key"]) == usable


def test_unusual_modes_are_converted_faithfully():
    imgs = faults.unusual_images()
    gray16 = transforms.decode_image(imgs["gray16"])
    assert gray16.mode == "RGB" and np.asarray(gray16).min() == 255  # scaled from 16 bits, not clipped to 1
    alpha = np.asarray(transforms.decode_image(imgs["alpha"]))
    assert (alpha[:, 20:] == 255).all() and alpha[:, :10, 2].min() > 200  # transparent -> white
    assert transforms.decode_image(imgs["cmyk"]).size == (40, 30)
    for name in ("wide", "tall"):  # extreme aspect: a centred view of bounded aspect, never a sliver
        img = transforms.decode_image(imgs[name])
        x0, y0, x1, y1 = transforms.crop_box(*img.size, 0.8, np.random.default_rng(0))
        assert 0.5 <= (x1 - x0) / (y1 - y0) <= 2.0
        assert transforms.resize_image(img, 16).shape == (3, 16, 16)


def test_truncated_tar_keeps_samples_before_the_cut(tmp_path):
    members = [(f"{i:04d}.{ext}", data) for i in range(20)
               for ext, data in (("jpg", faults.encode(faults.good_image(i))), ("txt", b"caption"))]
    path = faults.write_tar(tmp_path / "t.tar", members)
    cut = path.stat().st_size // 2
    with tarfile.open(path) as tar:  # samples whose last member ends before the cut are whole
        complete = [m.name[:4] for m in tar.getmembers() if m.name.endswith(".txt") and m.offset_data + m.size <= cut]
    faults.truncate(path, 0.5)
    with open(path, "rb") as f:
        rows = list(shards.iter_tar_samples(f, "t.tar"))
    assert rows[-1]["problem"] == "truncated_shard"
    whole = [r["key"][-4:] for r in rows[:-1] if r["image"] is not None and r["txt"] is not None]
    assert whole == complete and 0 < len(whole) < 20


def test_same_row_seed_same_view():
    members = [("0000.jpg", faults.encode(faults.good_image())), ("0000.txt", b"red")]
    tok = Tokenizer.from_counts(count_words(["red"]), max_tokens=4)
    a, _ = transforms.prepare_train_batch(_rows(members), tok, 24, True, 0.5)
    b, _ = transforms.prepare_train_batch(_rows(members), tok, 24, True, 0.5)
    assert np.array_equal(a["image"], b["image"])


def test_eval_batch_keeps_all_captions():
    members = [("a.jpg", faults.encode(faults.good_image())),
               ("a.json", json.dumps({"captions": ["p", "q"]}).encode()), ("b.jpg", b"junk"), ("b.txt", b"x")]
    out, skips = transforms.prepare_eval_batch(_rows(members), 16)
    assert out["key"].tolist() == ["s.tar/a"] and json.loads(out["captions"][0]) == ["p", "q"]
    assert skips == {"corrupt_image": ["s.tar/b"]}


def test_scan_counts_samples_and_usable():
    members, _, _ = faults.fault_members()
    out = transforms.scan_captions(_rows(members))
    counts = dict(zip(out["word"].tolist(), out["count"].tolist()))
    assert counts["\x00samples"] == len({n.split(".")[0] for n, _ in members})
    assert counts["image"] == 8  # 7 "an image of mode ..." + "zero-byte image"; not the image-less sample


@pytest.mark.parametrize("window", [0, 1, 4, 64])
def test_permute_windows_is_a_permutation(window):
    rows = [{"i": i} for i in range(50)]
    out = list(shards.permute_windows(iter(rows), window, np.random.default_rng(3)))
    assert sorted(r["i"] for r in out) == list(range(50))
    if window > 1:
        assert [r["i"] for r in out] != list(range(50))
