import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipeline.data import transforms

from pipeline.data.formats import shards
from pipeline.data.text.tokenizer import Tokenizer, count_words
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


def test_appledouble_members_are_ignored_and_an_empty_key_is_counted():
    # macOS tar writes `._NAME` (AppleDouble metadata) right before NAME: it must not split the sample in two.
    good = faults.encode(faults.good_image())
    members = [("._0000.jpg", b"\x00\x05\x16\x07 mac metadata"), ("0000.jpg", good),
               ("._0000.txt", b"\x00\x05\x16\x07"), ("0000.txt", b"a caption"), ("sub/._0001.jpg", b"x"),
               ("sub/0001.jpg", good), ("sub/0001.txt", b"another"), (".jpg", good), (".txt", b"no key")]
    out, skips = transforms.prepare_eval_batch(_rows(members), 16)
    assert out["key"].tolist() == ["s.tar/0000", "s.tar/sub/0001"]
    assert list(skips) == ["empty_key"] and len(skips["empty_key"]) == 1


def test_duplicate_keys_in_one_tar_are_counted_not_merged():
    good = faults.encode(faults.good_image())
    members = [("a.jpg", good), ("a.txt", b"first a"), ("b.jpg", good), ("b.txt", b"b"),
               ("a.jpg", good), ("a.txt", b"second a"),  # the same key again, after another sample
               ("c.jpg", good), ("c.jpg", good), ("c.txt", b"two images, one key")]
    rows = _rows(members)
    assert rows["problem"].tolist() == ["", "", "duplicate_key", "duplicate_key"]
    out, skips = transforms.prepare_eval_batch(rows, 16)
    assert out["key"].tolist() == ["s.tar/a", "s.tar/b"] and json.loads(out["captions"][0]) == ["first a"]
    assert skips == {"duplicate_key": ["s.tar/a", "s.tar/c"]}
    counts = dict(zip(*(transforms.scan_captions(rows)[c].tolist() for c in ("word", "count"))))
    assert counts["\x00samples"] == 4 and counts[""] == 2  # duplicates are bad samples, not rows to ignore


def test_oversized_image_is_refused_from_its_header():
    import time

    png = faults.huge_png(12000)  # 144 MP: between PIL's limit and twice it, where PIL only warns
    t0 = time.perf_counter()
    skips: dict = {}
    assert transforms.decode_or_skip("k", png, "", "", skips, min_side=32) is None
    assert skips == {"oversized_image": ["k"]} and time.perf_counter() - t0 < 0.1  # no 144 MB decode


@pytest.mark.parametrize("fmt,suffix", [("GIF", "gif"), ("TIFF", "tif"), ("TIFF", "tiff"), ("BMP", "bmp")])
def test_gif_tiff_bmp_members_are_images(fmt, suffix):
    members = [(f"0000.{suffix}", faults.encode(faults.good_image(), fmt)), ("0000.txt", b"a picture")]
    out, skips = transforms.prepare_eval_batch(_rows(members), 16)
    assert skips == {} and out["image"].shape == (1, 3, 16, 16)


@pytest.mark.parametrize("min_side", [0, 8])  # 8: the JPEG draft path, which decodes at half size here
def test_exif_orientation_is_applied(min_side):
    img = transforms.decode_image(faults.oriented_jpeg(6), min_side)  # stored 40x20, shown rotated 90 cw
    w, h = img.size
    assert h == 2 * w and w == (10 if min_side else 20)
    arr = np.asarray(img).astype(int)
    assert arr[h // 4, w // 2, 0] > 200 and arr[3 * h // 4, w // 2, 2] > 200  # red (stored left) on top
    upright = transforms.decode_image(faults.oriented_jpeg(1), min_side)
    assert upright.size == ((20, 10) if min_side else (40, 20))


def test_exif_transpose_runs_only_when_the_tag_asks(monkeypatch):
    from PIL import ImageOps

    def refuse(img, *a, **k):
        raise AssertionError("exif_transpose copies the image even when it has nothing to do")

    monkeypatch.setattr(ImageOps, "exif_transpose", refuse)
    assert transforms.decode_image(faults.encode(faults.good_image()), 16).size == (24, 24)  # draft still on
    assert transforms.decode_image(faults.oriented_jpeg(1)).size == (40, 20)


def test_corrupt_exif_decodes_without_a_warning():
    import warnings

    buf = io.BytesIO()
    faults.good_image().save(buf, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")  # IFD offset past the end
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning per web image would flood a run's output
        assert transforms.decode_image(buf.getvalue(), 16).size == (24, 24)


@pytest.mark.parametrize("shape", [(300, 450), (400, 600), (450, 300), (256, 256), (225, 224)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_the_shortest_side_view_is_torchvisions_resize_and_centre_crop(shape, interpolation):
    """Portrait sizes too (Pillow's one-call box resize ran its passes in the other order for 300x450 and
    400x600, 12 levels off): the view is torchvision's own two steps, pixel for pixel."""
    from torchvision import transforms as tv

    from pipeline.data.formats.photos import load_photo

    img = Image.fromarray(load_photo("astronaut")).resize(shape, Image.BICUBIC)
    mode = {"bilinear": tv.InterpolationMode.BILINEAR, "bicubic": tv.InterpolationMode.BICUBIC}[interpolation]
    want = np.asarray(tv.Compose([tv.Resize(224, interpolation=mode), tv.CenterCrop(224)])(img)).transpose(2, 0, 1)
    assert np.array_equal(transforms.resize_image(img, 224, interpolation, "shortest"), want)
    crop = tv.Compose([tv.Resize(int(224 / 0.875), interpolation=mode), tv.CenterCrop(224)])(img)  # timm's 0.875
    assert np.array_equal(transforms.resize_image(img, 224, interpolation, "shortest", 0.875),
                          np.asarray(crop).transpose(2, 0, 1))
