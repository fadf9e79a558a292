"""`pipeline run` end to end on the smoke config inside the shared local Ray."""
import json

import numpy as np
from PIL import Image

import pipeline
from pipeline.cli import main

from tests import faults

from .conftest import smoke_args


def test_run_end_to_end(ray_cluster, smoke_data, tmp_path, capsys):
    assert main(["run", *smoke_args(smoke_data, tmp_path, "e2e")]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "e2e"
    # The closing summary says where everything went and shows the R@K table.
    for needle in ("Run finished", "text → image", str(run_dir / "report" / "report.html"), "checkpoint"):
        assert needle in out

    for path in ("config.json", "checkpoints", "index/meta.json", "index/images.faiss", "report/report.json",
                 "report/report.md", "report/report.html", "report/plots/training.png",
                 "report/plots/recall_at_k.png", "index/images.parquet", "index/captions.parquet", "metrics.jsonl"):
        assert (run_dir / path).exists(), path
    rep = json.loads((run_dir / "report" / "report.json").read_text())
    for d in ("i2t", "t2i"):
        assert set(rep[d]) == {"R@1", "R@5", "R@10", "medr", "meanr"}
        assert all(0 <= rep[d][f"R@{k}"] <= 100 for k in (1, 5, 10))
    assert rep["n_images"] == 64 and rep["n_captions"] == 320
    assert rep["rsum"] == sum(rep[d][f"R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert set(rep["index"]) >= {"type", "recall@10_vs_exact", "build_s", "qps"}
    assert rep["config"]["run"]["name"] == "e2e" and rep["checkpoint"]
    assert [h["epoch"] for h in rep["history"]] == [0, 1, 2]
    # Every faulty sample was skipped and counted by reason, the truncated shard too; none was fatal.
    _, expected, _ = faults.fault_members()
    assert rep["data"]["skipped"]["train"] == {**expected, "truncated_shard": 1}
    assert "truncated_shard" in out and "corrupt_image" in out  # and the summary says so
    # Per-step metrics were logged.
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/logit_scale", "train/samples_per_s", "train/data_wait_share"} <= set(steps[0])

    # The Python API: unit vectors from PIL images and strings.
    enc = pipeline.load(run_dir)
    img = enc.encode_image([Image.fromarray(np.zeros((40, 30, 3), np.uint8))])
    txt = enc.encode_text(["a red circle left of a blue square", ""])
    assert img.shape == (1, 32) and txt.shape == (2, 32) and img.dtype.is_floating_point
    assert np.allclose(txt.norm(dim=1).numpy(), 1, atol=1e-5)

    # pipeline search answers from the built index.
    assert main(["search", "--index", str(run_dir / "index"), "--text", "a red circle", "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[-1]["score"]


def test_evaluate_and_index_commands(ray_cluster, smoke_data, tmp_path, capsys):
    assert main(["train", *smoke_args(smoke_data, tmp_path, "ev", "--set", "train.epochs=1")]) == 0
    ckpt = tmp_path / "ev"
    assert main(["index", "--checkpoint", str(ckpt), "--data", str(smoke_data / "val"),
                 "--out", str(tmp_path / "idx")]) == 0
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["n_images"] == 64
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(smoke_data / "val"),
                 "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["n_captions"] == 320 and "R@1" in capsys.readouterr().out
    assert main(["data", "inspect", str(smoke_data / "train")]) == 0
    out = capsys.readouterr().out
    for needle in ("format: webdataset", "corrupt_image x2", "empty_caption x2", "undecodable_caption x1",
                   "truncated_shard x1", "words per caption"):
        assert needle in out, needle
