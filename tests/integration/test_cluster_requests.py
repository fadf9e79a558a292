"""A request the cluster can never hold is one line before any Ray work on the data, not a run that waits
forever for workers."""
import time

import pytest

from pipeline.cli import main

from .conftest import smoke_args


@pytest.mark.parametrize("override, needle", [
    ("scaling.cpus_per_worker=64", "the cluster cannot place 2 workers x (64 CPU): it has node 0: "),
    ("scaling.use_gpu=true", "set scaling.use_gpu=false or add GPU nodes"),
])
def test_a_request_that_cannot_fit_fails_at_once(ray_cluster, smoke_data, tmp_path, capsys, override, needle):
    t0 = time.time()
    rc = main(["train", *smoke_args(smoke_data, tmp_path, "nofit", "--set", override), "--address", ray_cluster])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert time.time() - t0 < 60
    assert not (tmp_path / "nofit" / "checkpoints").exists()  # nothing started
