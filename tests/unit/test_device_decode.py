"""data.decode=gpu without Ray, on the CPU (the same code nvjpeg feeds on a GPU): the resampling against Pillow's
own, the views against data.decode=cpu's on real photographs of several shapes, and the same skips."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.epoch import device_decode as dd
from pipeline.data import transforms
from pipeline.data.formats import shards
from pipeline.data.epoch.batcher import EpochBatcher
from pipeline.data.formats.photos import load_photo
from pipeline.data.text.tokenizer import Tokenizer
from tests import faults

SHAPES = {"portrait": (300, 450), "landscape": (450, 300), "square": (256, 256), "tall": (200, 520)}
TOK = Tokenizer.from_counts({"a": 3, "photo": 2, "of": 2, "fine": 2, "caption": 2}, 8)


def _photo(name: str, shape: tuple[int, int]) -> Image.Image:
    return Image.fromarray(load_photo(name)).convert("RGB").resize(shape, Image.BICUBIC)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("size", [48, 224])
def test_bilinear_resampling_is_pillows_within_a_level(shape, size):
    img, rng = _photo("astronaut", shape), np.random.default_rng(size)
    tensor = torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())
    boxes = []
    for _ in range(6):
        x0, y0 = rng.uniform(0, shape[0] / 2), rng.uniform(0, shape[1] / 2)
        boxes.append((x0, y0, rng.uniform(x0 + 4, shape[0]), rng.uniform(y0 + 4, shape[1])))
    boxes.append((0.0, 0.0, float(shape[0]), float(shape[1])))
    out = dd.resample([tensor] * len(boxes), np.array(boxes), size, "bilinear").numpy().astype(int)
    for view, box in zip(out, boxes):
        ref = np.asarray(img.resize((size, size), Image.BILINEAR, box=box)).transpose(2, 0, 1).astype(int)
        assert np.abs(view - ref).max() <= 1, box


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_bicubic_resampling_is_pillows_but_for_rare_edge_pixels(shape):
    """Pillow 13 runs its two passes in either order (a portrait image, sometimes rows last), each rounded to 8
    bits: where a bicubic overshoot is clipped in between, a pixel may differ by several levels."""
    img = _photo("coffee", shape)
    tensor = torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())
    box = (shape[0] * 0.1, shape[1] * 0.05, shape[0] * 0.95, shape[1] * 0.9)
    view = dd.resample([tensor], np.array([box]), 224, "bicubic")[0].numpy().astype(int)
    diff = np.abs(view - np.asarray(img.resize((224, 224), Image.BICUBIC, box=box)).transpose(2, 0, 1))
    assert diff.mean() < 0.3 and np.mean(diff > 1) < 0.01


def test_filter_weights_are_a_partition_of_unity_inside_the_image():
    w = dd.filter_weights(300, 64, 20.5, 280.25, "bicubic")
    assert w.shape == (64, 300) and np.allclose(w.sum(axis=1), 1.0)
    assert not w[:, :10].any() and not w[:, 290:].any()  # a 4x reduction reaches ~8 px past the box, no further


def _rows(samples, seed0=100):
    """[(key, image bytes, caption)] -> a `data.formats.shards` batch with seeds and positions."""
    return shards.rows_to_batch([{"key": k, "image": img, "txt": cap.encode(), "json": None, "problem": "",
                                  "has_image": True, "seed": seed0 + i, "pos": i}
                                 for i, (k, img, cap) in enumerate(samples)])


def _block(out: dict, first: int, last: int, skips: dict) -> dict:
    """A planned batch as the read task sends it: its rows, then its tally row (ingest.train_epoch_source)."""
    import json

    from pipeline.data.ingest import _with_blank_row
    from pipeline.data.skips import SkipTally

    mark = json.dumps({"first": first, "last": last, **SkipTally.from_keys(skips).to_dict()})
    n = len(out["key"])
    return {**{c: _with_blank_row(c, v) for c, v in out.items() if c != "pos"},
            "pos": np.append(out["pos"], last), "tally": np.array([""] * n + [mark], dtype=object)}


@pytest.mark.parametrize("augment", [True, False])
def test_device_views_are_the_cpu_views_of_real_photos(augment):
    """At 224 px no JPEG is decoded at reduced size on the CPU (draft), so both paths cut the same box from the
    same pixels: same keys, same captions drawn, views within a grey level (two after a brightness gain > 1)."""
    samples = [(f"s/{i:04d}", _jpeg(_photo(name, shape)), f"a photo of {name}")
               for i, (name, shape) in enumerate(zip(["astronaut", "coffee", "chelsea", "rocket"], SHAPES.values()))]
    batch = _rows(samples)
    cpu, cpu_skips = transforms.prepare_train_batch(batch, TOK, 224, augment, 0.5)
    plan, skips = dd.plan_train_batch(batch, TOK, 224, augment, 0.5)
    assert plan["encoded"].all() and skips == cpu_skips == {}
    (block,) = dd.device_blocks([_block(plan, 0, 3, skips)], torch.device("cpu"), 224, two_step=not augment)
    keep = block["tally"] == ""
    assert list(block["key"][keep]) == list(cpu["key"])
    assert np.array_equal(block["tokens"][keep], cpu["tokens"])
    diff = np.abs(block["image"][torch.from_numpy(keep)].numpy().astype(int) - cpu["image"])
    assert diff.max() <= (2 if augment else 1) and diff.mean() < 0.3


def test_other_images_take_the_cpu_path_and_bad_ones_are_skipped_as_the_cpu_path_skips_them(tmp_path):
    members, expected, usable = faults.fault_members()
    path = faults.write_tar(tmp_path / "faults.tar", members)
    rows = [dict(r, seed=1000 + i, pos=i) for i, r in enumerate(shards.iter_shard(str(path), "faults.tar"))]
    batch = shards.rows_to_batch(rows)
    cpu, cpu_skips = transforms.prepare_train_batch(batch, TOK, 48, True, 0.5)
    plan, skips = dd.plan_train_batch(batch, TOK, 48, True, 0.5)
    assert skips == cpu_skips and list(plan["key"]) == list(cpu["key"]) and len(cpu["key"]) == usable
    assert {r: len(k) for r, k in skips.items()} == expected
    # the unusual modes (CMYK, palette, 16-bit, alpha, WebP) come finished from the read task, as the CPU made them
    (block,) = dd.device_blocks([_block(plan, 0, len(rows) - 1, skips)], torch.device("cpu"), 48)
    keep = block["tally"] == ""
    views = block["image"][torch.from_numpy(keep)].numpy()
    for i in np.flatnonzero(~plan["encoded"]):
        assert np.array_equal(views[i], cpu["image"][i])


def test_a_jpeg_no_decoder_takes_is_counted_in_its_batchs_tally_and_left_out():
    good = _jpeg(_photo("chelsea", (120, 90)))
    at = good.index(b"\xff\xda") + 5  # the scan's first component id: the header still reads, the scan cannot
    bad_scan = good[:at] + b"\x09" + good[at + 1:]
    assert dd.jpeg_size(bad_scan) == (120, 90)
    batch = _rows([("s/0000", good, "a photo"), ("s/0001", bad_scan, "a photo"), ("s/0002", good, "a photo")])
    plan, skips = dd.plan_train_batch(batch, TOK, 32, True, 0.5)
    assert skips == {} and plan["encoded"].all()
    blocks = [_block(plan, 0, 2, skips)]
    batcher = EpochBatcher(dd.device_blocks(blocks, torch.device("cpu"), 32), 2)
    (out,) = list(batcher)
    assert list(out["key"]) == ["s/0000", "s/0002"] and tuple(out["image"].shape) == (2, 3, 32, 32)
    assert batcher.tally.counts == {"corrupt_image": 1} and batcher.tally.examples["corrupt_image"] == ["s/0001"]
    batcher.mark_trained(out["pos"])
    assert batcher.state()["cursor"]["next"] == 3  # the dropped row is done with: a resume does not read it again


def test_jpegs_the_device_cannot_take_as_they_are_are_sent_to_the_cpu():
    img = _photo("astronaut", (80, 60))
    exif = Image.Exif()
    exif[transforms.ORIENTATION] = 6
    assert dd.jpeg_size(_jpeg(img)) == (80, 60)
    assert dd.jpeg_size(_jpeg(img.convert("L"))) == (80, 60)
    assert dd.jpeg_size(_jpeg(img, exif=exif)) is None  # turned: the read task applies the EXIF turn
    assert dd.jpeg_size(_jpeg(img.convert("CMYK"))) is None
    assert dd.jpeg_size(_jpeg(img)[:-200]) is None  # cut short: no end marker
    assert dd.jpeg_size(faults.encode(img, "PNG")) is None


def test_data_decode_is_checked_and_refuses_the_decoded_cache_beside_it():
    from pipeline.config import ConfigError, RunJobConfig, load_config

    base = {"data.train": "x", "data.val": "y"}
    assert load_config(RunJobConfig, None, base | {"data.decode": "gpu"}).data.decode == "gpu"
    with pytest.raises(ConfigError, match="data.decode='nvjpeg'; choose cpu or gpu"):
        load_config(RunJobConfig, None, base | {"data.decode": "nvjpeg"})
    with pytest.raises(ConfigError, match="data.cache_decoded=true keeps decoded images"):
        load_config(RunJobConfig, None, base | {"data.decode": "gpu", "data.cache_decoded": "true"})
