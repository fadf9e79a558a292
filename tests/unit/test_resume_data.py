"""A mid-epoch resume over other data is refused in one line, or with data.allow_changed_data goes on in a new
order: shards added or removed, and a shard of the same name whose contents changed (size, date or ETag)."""
import os
import time

import pytest

from pipeline import storage
from pipeline.training.attempts import check_resume_data
from pipeline.config import TrainJobConfig, load_config
from tests.unit.test_checkpoint_trust import BASE, _checkpoint


def _shards(tmp_path, sizes=(100, 200)):
    paths = []
    for i, size in enumerate(sizes):
        p = tmp_path / "train" / f"{i:05d}.tar"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x" * size)
        paths.append(str(p))
    return paths


def _stopped_mid_epoch(tmp_path, paths):
    """A checkpoint that stopped inside epoch 1 over `paths`, as train.run records them."""
    import json

    ckpt = _checkpoint(tmp_path / "run" / "checkpoints" / "epoch_0001")
    state = json.loads((ckpt / "state.json").read_text())
    ids = storage.fingerprints(paths)
    state |= {"in_epoch": {"epoch": 1, "steps": 3, "workers": []}, "data_shards": [os.path.basename(p) for p in paths],
              "data_shard_ids": {os.path.basename(p): ids[p] for p in paths}}
    (ckpt / "state.json").write_text(json.dumps(state))
    return str(ckpt)


def _ids(paths):
    return {os.path.basename(p): fp for p, fp in storage.fingerprints(paths).items()}


def test_the_same_shards_resume_and_a_rewritten_one_is_refused_naming_it(tmp_path):
    paths = _shards(tmp_path)
    latest = _stopped_mid_epoch(tmp_path, paths)
    cfg = load_config(TrainJobConfig, None, BASE)
    names = [os.path.basename(p) for p in paths]
    assert check_resume_data(cfg, latest, names, _ids(paths)) is False
    time.sleep(0.01)
    with open(paths[0], "wb") as f:  # swapped for a smaller shard under the same name
        f.write(b"y" * 64)
    with pytest.raises(ValueError, match=r"data.train has changed since .* 1 rewritten since \(e.g. 00000.tar: "
                                         r"size or date differ\); point data.train at the same shards"):
        check_resume_data(cfg, latest, names, _ids(paths))
    allowed = load_config(TrainJobConfig, None, BASE + ["data.allow_changed_data=true"])
    assert check_resume_data(allowed, latest, names, _ids(paths)) is True


def test_an_added_shard_is_refused_too(tmp_path):
    paths = _shards(tmp_path)
    latest = _stopped_mid_epoch(tmp_path, paths)
    more = _shards(tmp_path, (100, 200, 300))
    with pytest.raises(ValueError, match=r"1 shard\(s\) added \(e.g. 00002.tar\)"):
        check_resume_data(load_config(TrainJobConfig, None, BASE), latest, [os.path.basename(p) for p in more],
                          _ids(more))


def test_fingerprints_tell_a_rewrite_from_the_same_file(tmp_path):
    (a,) = _shards(tmp_path, (100,))
    first = storage.fingerprints([a])[a]
    assert storage.fingerprints([a])[a] == first and first.startswith("100:")
    os.utime(a, ns=(1, 1))
    assert storage.fingerprints([a])[a] != first  # same size, another date
    assert storage.fingerprints([str(tmp_path / "gone.tar")]) == {str(tmp_path / "gone.tar"): ""}
