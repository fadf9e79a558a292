"""One local Ray per test session, shared by every integration test (a start costs ~10 s)."""
import os
import tarfile
from pathlib import Path

import pytest

from pipeline.data.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from pipeline.cluster import local_cpus

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=local_cpus(), log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _add(tar, name, data):
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """Tiny synthetic train/val splits plus a shard holding one corrupt JPEG and one empty caption."""
    out = tmp_path_factory.mktemp("smoke_data")
    write_dataset(out, 256, 64, seed=1)
    with tarfile.open(out / "train" / "bad.tar", "w") as tar:
        _add(tar, "bad0.jpg", b"\xff\xd8\xff\xe0 definitely not a jpeg")
        _add(tar, "bad0.txt", b"a red circle left of a blue square")
        good = (out / "train" / "00000.tar")
        with tarfile.open(good) as src:
            jpg = src.extractfile("000000000.jpg").read()
        _add(tar, "bad1.jpg", jpg)
        _add(tar, "bad1.txt", b"   ")
    return out


def smoke_args(data: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "smoke.yaml"), "--set", f"data.train={data}/train",
            "--set", f"data.val={data}/val", "--set", f"run.storage_path={storage}", "--set", f"run.name={name}",
            "--set", "data.synth.enabled=false", *extra]
