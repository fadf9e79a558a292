"""Real-data paths on the shared local Ray: S3 through a moto server, the skip threshold, Karpathy
conversion into a `pipeline run`, Parquet shards."""
import json
import os

import numpy as np
from PIL import Image

import pipeline
from pipeline import storage
from pipeline.cli import main
from pipeline.data.formats.shards import iter_shard
from pipeline.data.transforms import parse_captions
from tests import faults

from .conftest import ROOT, smoke_args


def test_train_from_s3_and_write_the_run_to_s3(ray_cluster, smoke_data, s3_endpoint, capsys):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    fs.mkdir("data-bucket")
    fs.mkdir("runs-bucket")
    fs.put_file(str(smoke_data / "train" / "00000.tar"), "data-bucket/smoke/train/00000.tar")
    fs.put_file(str(smoke_data / "val" / "00000.tar"), "data-bucket/smoke/val/00000.tar")
    args = ["--config", str(ROOT / "configs" / "smoke.yaml"), "--set", "data.synth.enabled=false",
            # 00001.tar is a gap in the brace list, as img2dataset leaves when a shard fails
            "--set", "data.train=s3://data-bucket/smoke/train/{00000..00001}.tar",
            "--set", "data.val=s3://data-bucket/smoke/val", "--set", "run.storage_path=s3://runs-bucket/runs",
            "--set", "run.name=s3run", "--set", f"storage.endpoint_url={s3_endpoint}", "--set", "train.epochs=1"]
    assert main(["run", *args]) == 0
    captured = capsys.readouterr()
    assert "s3://runs-bucket/runs/s3run/report/report.html" in captured.out
    files = fs.find("runs-bucket/runs/s3run")
    for suffix in ("s3run/config.json", "checkpoints/epoch_0001/model.pt", "checkpoints/epoch_0001/state.json",
                   "index/meta.json", "index/images.faiss", "index/captions.faiss", "report/report.json",
                   "report/report.html", "report/plots/training.png"):
        assert any(f.endswith(suffix) for f in files), suffix
    assert any("/index/images.parquet/" in f for f in files)  # the embedding passes wrote straight to S3
    rep = json.loads(fs.cat("runs-bucket/runs/s3run/report/report.json"))
    assert rep["n_images"] == 64 and rep["data"]["skipped"]["train"] == {"missing_shard": 1}

    # The checkpoint reads back from the bucket through the public API.
    storage.configure(s3_endpoint)
    enc = pipeline.load("s3://runs-bucket/runs/s3run")
    assert enc.encode_text(["a red circle"]).shape == (1, 32)

    # Credentials appear in no object written and in no output.
    secret, key_id = os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]
    for f in files:
        body = fs.cat(f)
        assert secret.encode() not in body and key_id.encode() not in body, f
    assert secret not in captured.out + captured.err and key_id not in captured.out + captured.err


def test_too_many_bad_samples_fail_with_a_clear_message(ray_cluster, smoke_data, tmp_path, capsys):
    args = smoke_args(smoke_data, tmp_path, "skips", "--set", "data.max_skip_fraction=0.01",
                      "--set", "train.epochs=1")
    assert main(["train", *args]) == 1
    # (Ray's in-process loggers may also write to the previous test's closed capture stream: ignore that.)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: training failed: rank 0: ValueError: ")  # one line, the user's message
    assert "more than data.max_skip_fraction=0.01" in last and "pipeline data inspect" in last


def test_karpathy_conversion_trains_and_evaluates(ray_cluster, tmp_path, capsys):
    """Both layouts in one run (each launch costs the suite seconds): training reads the Parquet conversion of
    the train split, evaluation the WebDataset one of the test split; the test split converted both ways holds
    the same samples."""
    images = tmp_path / "images"
    images.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
    entries = []
    for i in range(96):
        name, rgb = list(colours.items())[i % 4]
        arr = np.clip(np.array(rgb) + np.random.default_rng(i).integers(-20, 20, (32, 32, 3)), 0, 255)
        (images / f"{i}.jpg").write_bytes(faults.encode(Image.fromarray(arr.astype(np.uint8))))
        entries.append({"filename": f"{i}.jpg", "imgid": i, "split": "test" if i < 32 else "train",
                        "sentences": [{"raw": f"a {name} picture"}, {"raw": f"something {name}"}]})
    (tmp_path / "karpathy.json").write_text(json.dumps({"images": entries, "dataset": "flickr8k"}))
    for split, out, fmt in (("train,restval", "train", "parquet"), ("test", "test", "webdataset"),
                            ("test", "test-parquet", "parquet")):
        assert main(["data", "convert-karpathy", "--json", str(tmp_path / "karpathy.json"), "--images",
                     str(images), "--out", str(tmp_path / out), "--split", split, "--format", fmt,
                     "--shard-size", "40"]) == 0
    def samples(folder: str, ext: str) -> list[tuple]:
        return [(r["key"].split("/")[-1], r["image"], parse_captions(r["txt"], r["json"]))
                for p in sorted((tmp_path / folder).glob(f"*.{ext}")) for r in iter_shard(str(p), p.name)]

    tar = samples("test", "tar")
    assert len(tar) == 32 and tar == samples("test-parquet", "parquet") and len(tar[0][2][0]) == 2
    args = ["--config", str(ROOT / "configs" / "smoke.yaml"), "--set", "data.synth.enabled=false",
            "--set", f"data.train={tmp_path / 'train'}", "--set", f"data.val={tmp_path / 'test'}",
            "--set", f"run.storage_path={tmp_path / 'runs'}", "--set", "run.name=k", "--set", "train.epochs=1"]
    assert main(["run", *args]) == 0
    assert "64 training samples" in capsys.readouterr().out
    rep = json.loads((tmp_path / "runs" / "k" / "report" / "report.json").read_text())
    assert rep["n_images"] == 32 and rep["n_captions"] == 64  # every caption of every test image
