"""`pipeline run` end to end on the smoke config inside the shared local Ray, then `evaluate`, `index` and
`search` on the checkpoints that run left (one training for both tests: a second costs ~25 s)."""
import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import pipeline
from pipeline import storage
from pipeline.cli import main

from tests import faults, trackers

from .conftest import smoke_args


@pytest.fixture(scope="module")
def e2e_run(ray_cluster, smoke_data, tmp_path_factory, mlflow_server):
    """-> (run directory, what `pipeline run` printed): 3 epochs, with the linear CCA baseline fitted beside the
    model and the fusion re-ranker trained with the towers, logged to TensorBoard and to a real MLflow server
    (one run covers all of it; a second costs ~40 s)."""
    storage = tmp_path_factory.mktemp("e2e")
    # The validation set gains a shard with one corrupt image: skipped and counted, both by the training's
    # validation (the tasks that prepare it in memory) and by the evaluation's gallery pass.
    val = storage / "val"
    shutil.copytree(smoke_data / "val", val)
    faults.write_tar(val / "bad.tar", [("vbad.jpg", b"not an image"), ("vbad.txt", b"a red circle")])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["run", *smoke_args(smoke_data, storage, "e2e", "--set", f"data.val={val}",
                                      "--set", "cca.enabled=true",
                                      "--set", "rerank.enabled=true", "--set", "rerank.fusion=product",
                                      "--set", "rerank.dim=32", "--set", "rerank.hidden=32", "--set", "rerank.k=10",
                                      "--set", "run.report_to=[tensorboard,mlflow]",
                                      "--set", f"run.mlflow_uri={mlflow_server}")])
    assert rc == 0, printed.getvalue()[-3000:]
    return storage / "e2e", printed.getvalue()


def test_run_end_to_end(e2e_run, capsys):
    run_dir, out = e2e_run
    # The closing summary says where everything went and shows the R@K table.
    for needle in ("Run finished", "text → image", str(run_dir / "report" / "report.html"), "checkpoint",
                   "baseline rsum: "):
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
    base = rep["baselines"]["linear_cca"]  # chance rsum on 64 images x 5 captions is about 49
    assert base["rsum"] > 2 * 49 and base["description"] == "linear CCA: pixels 16x16 + bag of words"
    assert "## Baselines" in (run_dir / "report" / "report.md").read_text()
    assert "Baselines" in (run_dir / "report" / "report.html").read_text()
    assert [h["epoch"] for h in rep["history"]] == [0, 1, 2]
    # rerank.enabled: every checkpoint carries the head trained with the towers, and the report re-ranks with it.
    block = rep["rerank"]
    assert block["k"] == 10 and block["description"] == "product fusion, 32 hidden, trained with the towers"
    # the report names the run's own checkpoint relative to itself (a moved run keeps it)
    assert rep["checkpoint"].startswith("../checkpoints/")
    assert block["reranker"] == storage.resolve_ref(rep["checkpoint"], str(run_dir / "report"))
    assert block["ms_per_query"] > 0
    assert all((p / "rerank.pt").is_file() for p in (run_dir / "checkpoints").glob("epoch_*"))
    assert "Re-ranked" in (run_dir / "report" / "report.html").read_text()
    i2t = block["i2t"]
    assert (f"re-ranked top 10 (product fusion, 32 hidden, trained with the towers): image → text R@1 "
            f"{i2t['before']['R@1']:.1f} -> {i2t['after']['R@1']:.1f}, text → image R@1") in out
    # Every faulty sample was skipped and counted by reason, the truncated shard too; none was fatal.
    _, expected, _ = faults.fault_members()
    assert rep["data"]["skipped"]["train"] == {**expected, "truncated_shard": 1}
    assert rep["data"]["skipped"]["val"] == rep["data"]["skipped"]["gallery"] == {"corrupt_image": 1}
    assert "truncated_shard" in out and "corrupt_image" in out  # and the summary says so, as a table
    table = out.split("skipped samples:")[1]
    assert "{" not in table and re.search(r"train\s+corrupt_image\s+2\n", table)
    # Per-step metrics were logged.
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"samples_seen", "train/loss", "train/logit_scale", "train/lr", "train/grad_norm", "train/samples_per_second",
            "train/samples_per_second_per_worker", "train/data_wait_share"} <= set(steps[0])
    _check_trackers(run_dir, steps, rep)

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
    # and re-orders them with the head the run trained (the run directory stands for its newest checkpoint)
    assert main(["search", "--index", str(run_dir / "index"), "--text", "a red circle", "--k", "3", "--json",
                 "--rerank", str(run_dir)]) == 0
    out = capsys.readouterr().out
    hits = json.loads(out[out.index("[\n"):])
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["rerank_score"] >= hits[-1]["rerank_score"]


def _check_trackers(run_dir, steps: list[dict], rep: dict) -> None:
    """The curves TensorBoard and the MLflow server hold are metrics.jsonl's, step for step; MLflow's run also
    has the config, the final evaluation and the report."""
    loss = [(r["step"], pytest.approx(r["train/loss"])) for r in steps]
    assert trackers.tensorboard_curve(run_dir, "train/loss") == loss
    assert trackers.mlflow_points(run_dir, "train/loss") == loss
    client, run = trackers.mlflow_run(run_dir)
    assert client.get_experiment(run.info.experiment_id).name == "e2e" and run.info.status == "FINISHED"
    assert run.data.params["loss.name"] == "infonce" and run.data.params["rerank.k"] == "10"
    last = steps[-1]["step"]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/rsum")] == \
        [(last, pytest.approx(rep["rsum"]))]
    val = [(h.get("step", 0), pytest.approx(h["val/rsum"])) for h in rep["history"]]  # the untrained model's at 0
    assert trackers.mlflow_points(run_dir, "val/rsum") == val and val[-1][0] == last
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} >= {"report/report.html",
                                                                                 "report/report.json"}


def test_evaluate_and_index_commands(e2e_run, smoke_data, tmp_path, capsys):
    import pyarrow.parquet as pq

    val = str(smoke_data / "val")
    # Two checkpoints of the run compared on the same gallery; the report's main block is the first one's.
    epochs = sorted(str(p) for p in (e2e_run[0] / "checkpoints").glob("epoch_*"))
    assert len(epochs) >= 2, epochs
    assert main(["evaluate", "--checkpoint", epochs[-1], "--checkpoint", epochs[0], "--data", val,
                 "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["n_captions"] == 320 and rep["checkpoint"] == epochs[-1]
    rows = rep["comparison"]
    assert [r["checkpoint"] for r in rows] == epochs[::-1] and rows[0]["rsum"] == rep["rsum"]
    out = capsys.readouterr().out
    assert "| checkpoint |" in out and "e2e/epoch_" in out
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Checkpoints compared" in html and "Checkpoints compared" in (tmp_path / "rep" / "report.md").read_text()
    dirs = [tmp_path / "rep" / "index" / r["label"].replace("/", "_") for r in rows]
    assert all((d / "meta.json").is_file() for d in dirs)
    # two different models, each scored on its own embeddings of the same images
    first, second = (pq.read_table(d / "images.parquet").sort_by("key") for d in dirs)
    assert first.column("key").equals(second.column("key"))
    assert not np.allclose(*(np.array(t.column("vector").to_pylist()) for t in (first, second)))

    # The newest checkpoint's gallery, as evaluate left it: one exact index (auto is flat at 64 images) and the
    # embeddings streamed to Parquet by the two passes, every row with a dense id.
    idx = tmp_path / "rep" / "index" / rows[0]["label"].replace("/", "_")
    meta = json.loads((idx / "meta.json").read_text())
    assert meta["n_images"] == 64 and meta["type"] == "flat" and "shards" not in meta["indexes"]["images"]
    images, captions = (pq.read_table(idx / f"{n}.parquet") for n in ("images", "captions"))
    assert set(images.column_names) == {"id", "key", "label", "shard", "path", "vector"}
    assert sorted(images.column("id").to_pylist()) == list(range(64))
    assert sorted(captions.column("id").to_pylist()) == list(range(320))
    assert set(captions.column("key").to_pylist()) == set(images.column("key").to_pylist())

    # The same gallery as shards (40 vectors at most: 2 image shards, 8 caption shards), built in parallel
    # Ray tasks: exact shards merged must answer exactly what the single exact index answers. Embedded by Ray
    # Data's actor pools this time (evaluate embedded its 64 images in the driver): the same rows and ids.
    assert main(["index", "--checkpoint", epochs[-1], "--data", val, "--out", str(tmp_path / "sharded"),
                 "--set", "index.type=flat", "--set", "index.shard_rows=40", "--set", "eval.in_driver_images=0"]) == 0
    files = lambda d: [p.name for p in (d / "images.parquet").glob("*.parquet")]  # noqa: E731
    assert files(idx) == ["000000.parquet"] and files(tmp_path / "sharded") != ["000000.parquet"]  # driver; pool
    for name in ("images", "captions"):
        here, pooled = (pq.read_table(d / f"{name}.parquet").sort_by("id") for d in (idx, tmp_path / "sharded"))
        assert here.drop_columns(["vector"]).equals(pooled.drop_columns(["vector"])), name
        np.testing.assert_allclose(np.array(here.column("vector").to_pylist()),
                                   np.array(pooled.column("vector").to_pylist()), atol=1e-5)
    meta = json.loads((tmp_path / "sharded" / "meta.json").read_text())
    assert [s["n"] for s in meta["indexes"]["images"]["shards"]] == [32, 32]
    assert [s["n"] for s in meta["indexes"]["captions"]["shards"]] == [40] * 8 and meta["recall@10_vs_exact"] == 1.0
    capsys.readouterr()

    def search(index, *query, distributed=False):
        args = ["search", "--index", str(index), *query, "--k", "5", "--json"]
        assert main(args + (["--distributed"] if distributed else [])) == 0
        out = capsys.readouterr().out
        assert "[\n" in out, out
        # --json prints one indented list; Ray may log a line of its own first when actors start
        return [(h.get("key"), h.get("caption"), round(h["score"], 5)) for h in json.loads(out[out.index("[\n"):])]

    image_file = tmp_path / "query.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image_file)
    search_before = search(e2e_run[0] / "index", "--text", "a red circle")
    for query in (["--text", "a red circle left of a blue square"], ["--image", str(image_file)]):
        single = search(idx, *query)
        assert len(single) == 5
        assert search(tmp_path / "sharded", *query) == single  # shard-parallel in threads, merged top-K
        assert search(tmp_path / "sharded", *query, distributed=True) == single  # one Ray actor per shard
    # the head the run trained with its towers re-orders the hits the same way, whichever index found them
    reranked = ("--text", "a red circle", "--rerank", str(e2e_run[0]), "--rerank-k", "8")
    assert search(tmp_path / "sharded", *reranked, distributed=True) == search(idx, *reranked)
    # A run directory moved elsewhere keeps its model: the index names its checkpoint relative to itself
    run_dir = e2e_run[0]
    moved = tmp_path / "moved" / run_dir.name
    shutil.copytree(run_dir, moved)
    hidden = run_dir.with_name(run_dir.name + ".away")
    run_dir.rename(hidden)
    try:
        assert json.loads((moved / "index" / "meta.json").read_text())["checkpoint"].startswith("../checkpoints/")
        assert search(moved / "index", "--text", "a red circle") == search_before
        assert "Checkpoint: `../checkpoints/" in (moved / "report" / "report.md").read_text()
    finally:
        hidden.rename(run_dir)
    assert main(["data", "inspect", str(smoke_data / "train")]) == 0
    out = capsys.readouterr().out
    for needle in ("format: webdataset", "corrupt_image x2", "empty_caption x2", "undecodable_caption x1",
                   "truncated_shard x1", "words per caption"):
        assert needle in out, needle


def test_rerank_trains_on_the_runs_embeddings_and_rescores_the_top_k(e2e_run, smoke_data, tmp_path, capsys):
    """`pipeline rerank` on the run's newest checkpoint (Ray Train workers, hard negatives mined from its own
    ranking), then `evaluate --rerank`: R@K before (the evaluation's own) and after, the cost, in every report
    format; rerank.k clamped to the gallery; the re-ranker refused with another checkpoint, naming both."""
    run_dir, _ = e2e_run
    rr, val = tmp_path / "rr", str(smoke_data / "val")
    assert main(["rerank", "--checkpoint", str(run_dir), "--data", str(smoke_data / "train"), "--out", str(rr),
                 "--set", "rerank.epochs=2", "--set", "rerank.negatives=7", "--set", "rerank.fusion=compact_bilinear",
                 "--set", "rerank.sketch_dim=512"]) == 0
    assert "use it with `pipeline evaluate" in capsys.readouterr().out
    meta = json.loads((rr / "rerank.json").read_text())
    epochs = sorted(str(p) for p in (run_dir / "checkpoints").glob("epoch_*"))
    assert meta["two_tower"]["checkpoint"] == epochs[-1] and meta["trained_on"]["negatives"] == 7
    assert (rr / "rerank.pt").stat().st_size > 0

    out_dir = tmp_path / "rep"
    assert main(["evaluate", "--checkpoint", str(run_dir), "--data", val, "--out", str(out_dir), "--rerank", str(rr),
                 "--set", "rerank.k=100"]) == 0
    assert "rerank.k=100 is larger than the gallery (64 images, 320 captions): re-scoring the top 64" in \
        capsys.readouterr().out
    rep = json.loads((out_dir / "report.json").read_text())
    block = rep["rerank"]
    assert block["k"] == 64 and block["ms_per_query"] > 0 and block["description"].startswith("compact_bilinear")
    for d in ("i2t", "t2i"):  # before = the evaluation's own recall; after: re-ordered within all 64
        assert block[d]["before"] == {k: round(v, 2) for k, v in rep[d].items() if k.startswith("R@")}
        assert all(0 <= v <= 100 for v in block[d]["after"].values())
    assert "## Re-ranked" in (out_dir / "report.md").read_text() and "Re-ranked" in (out_dir / "report.html").read_text()

    # search re-orders the index's top hits with the same head, each hit with its head score
    assert main(["search", "--index", str(out_dir / "index"), "--text", "a red circle", "--k", "3", "--json",
                 "--rerank", str(rr), "--rerank-k", "10"]) == 0
    out = capsys.readouterr().out
    hits = json.loads(out[out.index("[\n"):])
    assert [h["rank"] for h in hits] == [1, 2, 3] and all("rerank_score" in h for h in hits)
    assert hits[0]["rerank_score"] >= hits[1]["rerank_score"] >= hits[2]["rerank_score"]

    # the run's first checkpoint has other weights: refused before any Ray work, both checkpoints named
    assert main(["evaluate", "--checkpoint", epochs[0], "--data", val, "--out", str(tmp_path / "x"),
                 "--rerank", str(rr)]) == 2
    err = capsys.readouterr().err
    assert f"was trained on the two-tower checkpoint {epochs[-1]}, not on {epochs[0]}" in err
