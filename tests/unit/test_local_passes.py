"""Passes read in the driver (data.local_passes): which data qualifies, and that the batches and thumbnails are
the rows the Ray Data passes would give (the integration tests compare the two paths' outputs)."""
import glob

import numpy as np

from pipeline.data import local_passes
from pipeline.data.formats.shards import iter_shard, rows_to_batch, shard_names
from pipeline.data.formats.synthetic import write_dataset
from pipeline.data.transforms import prepare_eval_batch


def _val(tmp_path):
    write_dataset(tmp_path, 24, 10, seed=3)
    return sorted(glob.glob(str(tmp_path / "val" / "*.tar")))


def test_only_counted_data_within_the_limit_is_read_in_the_driver(tmp_path):
    val = _val(tmp_path)
    assert local_passes.fits_in_driver(val, 10) and not local_passes.fits_in_driver(val, 9)
    assert not local_passes.fits_in_driver(val, 0)  # 0: never
    for stats in glob.glob(str(tmp_path / "val" / "*_stats.json")):  # no file says how many: small shards are
        (tmp_path / "val" / stats).unlink()                          # counted by reading them
    assert local_passes.fits_in_driver(val, 10) and not local_passes.fits_in_driver(val, 9)


def test_uncounted_data_too_large_to_read_here_goes_to_ray_data(tmp_path, monkeypatch):
    val = _val(tmp_path)
    for stats in glob.glob(str(tmp_path / "val" / "*_stats.json")):
        (tmp_path / "val" / stats).unlink()
    monkeypatch.setattr("pipeline.data.formats.counts.SMALL_SHARDS_BYTES", 100)  # these shards: larger than that
    assert not local_passes.fits_in_driver(val, 10**6)


def test_eval_batches_are_the_prepared_rows_in_order_in_bounded_batches(tmp_path):
    val = _val(tmp_path)
    batches = list(local_passes.eval_batches(val, 16, batch_size=4))
    assert all(0 < len(b["key"]) <= 4 for b in batches)
    names = shard_names(val)
    whole = [prepare_eval_batch(rows_to_batch(list(iter_shard(p, names[p])), p), 16)[0] for p in val]
    assert [k for b in batches for k in b["key"]] == [k for w in whole for k in w["key"]]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]),
                                  np.concatenate([w["image"] for w in whole]))
    assert {str(s) for b in batches for s in b["shard"]} == set(val)  # the shard column the Ray read gives


def test_images_of_the_wanted_keys_only_and_their_thumbnails(tmp_path):
    from pipeline.report_html import thumbnails

    val = _val(tmp_path)
    first = next(iter(local_passes.shard_batches(val)))
    images = local_passes.images_by_key(val, {first["key"][0], "no/such-key"})
    assert images == {first["key"][0]: first["image"][0]}
    thumbs = thumbnails({**images, "broken": b"not an image"}, 32)
    assert list(thumbs) == [first["key"][0]] and thumbs[first["key"][0]].startswith("data:image/jpeg")


def test_a_pass_in_the_driver_records_its_skips_without_an_actor(tmp_path):
    """`SkipLog` in the driver: key sets by split and reason (a bad sample read twice counts once), no Ray;
    a copy bound for Ray tasks must come through `shared()`, since an actor-less copy would count alone."""
    import pickle

    import pytest

    from pipeline.data.skips import SkipLog
    from tests import faults

    tar = str(faults.write_tar(tmp_path / "00000.tar", [
        ("a.jpg", b"not an image"), ("a.txt", b"a cat"), ("b.jpg", faults.encode(faults.good_image(1))),
        ("b.txt", b"a dog"), ("c.jpg", b"nor this"), ("c.txt", b"a cow")]))
    log = SkipLog.start()
    for _ in range(2):
        assert sum(len(b["key"]) for b in local_passes.eval_batches([tar], 16, log, "gallery")) == 1
    assert log.read() == {"gallery": {"corrupt_image": ["00000.tar/a", "00000.tar/c"]}} and log.actor is None
    with pytest.raises(RuntimeError, match="shared"):
        pickle.dumps(log)
