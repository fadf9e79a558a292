"""data.cache_decoded without Ray: what a shard decodes to, that a view cut from the cache is the view a fresh
decode gives (skip reasons included), and when `auto` turns the cache on."""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data import transforms

from pipeline.data.epoch import decoded_cache

from pipeline.data.formats import shards
from pipeline.data.text.tokenizer import Tokenizer
from pipeline.training.worker_data import primed
from tests import faults


def _fault_rows(tmp_path):
    members, expected, usable = faults.fault_members()
    path = faults.write_tar(tmp_path / "faults.tar", members)
    rows = [dict(r, seed=1000 + i) for i, r in enumerate(shards.iter_shard(str(path), "faults.tar"))]
    return rows, expected, usable


def test_base_side_keeps_the_resize_then_crop_margin():
    assert decoded_cache.base_side(224) == 256
    assert decoded_cache.base_side(64) == 74


def test_to_base_scales_the_short_side_and_never_enlarges():
    wide = Image.new("RGB", (400, 200), (10, 20, 30))
    assert decoded_cache.to_base(wide, 100).shape == (100, 200, 3)
    tall = Image.new("RGB", (150, 600), (10, 20, 30))
    assert decoded_cache.to_base(tall, 100).shape == (400, 100, 3)
    small = Image.new("RGB", (40, 30), (10, 20, 30))
    assert decoded_cache.to_base(small, 100).shape == (30, 40, 3)


def test_a_decoded_shard_gives_back_the_rows_it_was_built_from(tmp_path):
    rows, _, usable = _fault_rows(tmp_path)
    decoder = decoded_cache.ShardDecoder(37)
    streamed = list(decoder.decode(iter(rows)))
    again = list(decoder.finish().iter_rows())
    assert [r["key"] for r in again] == [r["key"] for r in rows]
    for a, b in zip(streamed, again):
        if isinstance(a["image"], np.ndarray):
            assert np.array_equal(a["image"], b["image"]) and min(a["image"].shape[:2]) <= 37
        else:
            assert a["image"] == b["image"]
    kinds = [type(r["image"]).__name__ for r in again]
    assert kinds.count("ndarray") == usable + 4  # the usable ones, and 0004-0006, 0009: decodable, bad captions
    reasons = {r["key"].split("/")[-1]: r["image"] for r in again if isinstance(r["image"], str)}
    assert reasons == {"0001": "corrupt_image", "0002": "corrupt_image", "0008": "oversized_image"}


@pytest.mark.parametrize("augment", [True, False])
def test_views_from_the_cache_equal_views_from_a_fresh_decode(tmp_path, augment):
    """The three ways a read task meets a row (cached, decoded while building the cache, decoded by a reader
    that did not claim the shard) train on the same pixels, and skip the same keys for the same reasons."""
    rows, expected, usable = _fault_rows(tmp_path)
    tok = Tokenizer.from_counts({"a": 3, "image": 2, "of": 2, "mode": 2}, 8)
    side = decoded_cache.base_side(32)
    decoder = decoded_cache.ShardDecoder(side)
    building = list(decoder.decode(iter(rows)))
    cached = list(decoder.finish().iter_rows())
    outs = [transforms.prepare_train_batch(shards.rows_to_batch(r), tok, 32, augment, 0.5, base=side)
            for r in (rows, building, cached)]
    for out, skips in outs[1:]:
        assert np.array_equal(out["image"], outs[0][0]["image"])
        assert np.array_equal(out["tokens"], outs[0][0]["tokens"])
        assert list(out["key"]) == list(outs[0][0]["key"]) and skips == outs[0][1]
    assert len(outs[0][0]["key"]) == usable
    assert {r: len(k) for r, k in outs[0][1].items()} == expected


def test_a_view_from_the_base_shows_what_a_view_from_the_original_shows():
    """Against the view cut from the full decode: the same region at the same scale, so the pixels are close
    (a crop box misplaced by the smaller base would put the shapes elsewhere)."""
    img = Image.fromarray(np.kron(np.random.default_rng(3).integers(0, 255, (8, 12, 3)), np.ones((40, 40, 1)))
                          .astype(np.uint8))  # 480 x 320, blocks of 40 px
    buf = io.BytesIO()
    img.save(buf, "PNG")  # lossless: the only difference is the base's downscale
    raw, side = buf.getvalue(), decoded_cache.base_side(64)
    for seed in range(10):
        fresh = transforms.augment_image(transforms.decode_image(raw), 64, 0.8, np.random.default_rng(seed))
        base = Image.fromarray(decoded_cache.to_base(transforms.decode_image(raw), side))
        cut = transforms.augment_image(base, 64, 0.8, np.random.default_rng(seed))
        assert np.abs(fresh.astype(int) - cut.astype(int)).mean() < 12
        assert not np.array_equal(fresh, cut)  # it is a different decode: the cache's, not the file's


def test_auto_caches_what_fits_in_a_fifth_of_the_object_store():
    store = 10 * 2**30
    on, line = decoded_cache.decide("auto", 4000, 64, store)
    assert on and "decoded once" in line
    on, line = decoded_cache.decide("auto", 10**8, 224, store)
    assert not on and "data.cache_decoded=true" in line
    on, line = decoded_cache.decide("true", 10**8, 224, store)
    assert on and "spills" in line
    assert decoded_cache.decide("false", 10, 64, store)[0] is False
    assert decoded_cache.estimate_bytes(1000, 224) == int(1000 * 3 * 256 * 256 * 4 / 3)


def test_cache_decoded_accepts_yaml_booleans_and_refuses_others():
    from pipeline.config import ConfigError, RunJobConfig, load_config

    base = {"data.train": "x", "data.val": "y"}
    assert load_config(RunJobConfig, None, base | {"data.cache_decoded": True}).data.cache_decoded == "true"
    assert load_config(RunJobConfig, None, base | {"data.cache_decoded": "false"}).data.cache_decoded == "false"
    with pytest.raises(ConfigError, match="data.cache_decoded='sometimes'; choose auto, true or false"):
        load_config(RunJobConfig, None, base | {"data.cache_decoded": "sometimes"})


def test_primed_fetches_the_first_item_early_and_keeps_order_and_errors():
    fetched = []

    def items():
        for i in range(3):
            fetched.append(i)
            yield i

    it = primed(items())
    for _ in range(100):
        if fetched:
            break
        import time
        time.sleep(0.01)
    assert fetched == [0]  # fetched before anyone asked
    assert list(it) == [0, 1, 2]
    assert list(primed([])) == []

    def broken():
        raise OSError("shard went away")
        yield

    with pytest.raises(OSError, match="shard went away"):
        list(primed(broken()))
