"""The trackers rank 0 writes to (run.report_to), each read back with its own library's reader: TensorBoard's event
loader, the MLflow client on a real SQLite store, W&B's offline run files. A second launch continues the first's
tracker runs and logs only the steps beyond what each tracker holds, so a resumed run is one curve."""
import json
import time

import pytest

from pipeline.config import ConfigError, RunJobConfig, load_config
from pipeline.tracking import plan as tracking
from pipeline.tracking.writers import Trackers, log_result
from tests import trackers

READ = {"tensorboard": trackers.tensorboard_points, "mlflow": trackers.mlflow_points,
        "wandb": trackers.wandb_points}
SMOKE = "configs/smoke.yaml"


def _start(tmp_path, report_to, name="r1", params=None):
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    return tracking.start(report_to, str(run_dir), name, "family", tracking.default_mlflow_uri(str(tmp_path)),
                          params or {"train.lr": 0.01, "train.batch_size": 32, "data.train": ["a", "b"]})


def _attempt(plan, steps, value):
    t = Trackers.open(plan, is_main=True)
    for s in steps:
        t.log({"step": s, "epoch": 1, "train/loss": value(s), "val/i2t_R@1": 10.0 + s, "flag": True}, s)
    t.close()


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_a_resumed_launch_continues_one_curve_without_repeating_a_step(tmp_path, name):
    first = _start(tmp_path, [name])
    _attempt(first, range(1, 11), lambda s: 1.0 / s)  # the first launch logs to step 10, then dies
    if name == "wandb":  # W&B names an attempt's folder by the second: two in one second would share one
        time.sleep(1.1)
    again = _start(tmp_path, [name])  # the same run.name again: tracking.json names the same tracker runs
    assert (again.mlflow_run_id, again.wandb_id) == (first.mlflow_run_id, first.wandb_id) and not again.fresh
    _attempt(again, range(6, 16), lambda s: 2.0 / s)  # resumed from a checkpoint at step 5: 6..10 again, then on
    points = READ[name](tmp_path / "r1", "train/loss")
    assert trackers.assert_one_curve(points, name) == list(range(1, 16))
    # the steps the first launch logged keep its values; the resumed launch's begin after them
    assert [v for _, v in points] == pytest.approx([1.0 / s for s in range(1, 11)] + [2.0 / s for s in range(11, 16)])
    recall = "val/i2t_R_at_1" if name == "mlflow" else "val/i2t_R@1"  # MLflow's names take no '@'
    assert [s for s, _ in READ[name](tmp_path / "r1", recall)] == list(range(1, 16))


def test_mlflow_run_holds_the_config_and_its_end_state_and_the_report(tmp_path):
    plan = _start(tmp_path, ["mlflow"], params={"train.lr": 0.01, "data.train": "x" * 7000, "model.arch": ""})
    report = tmp_path / "report"
    (report / "plots").mkdir(parents=True)
    (report / "report.json").write_text("{}")
    (report / "plots" / "recall.png").write_bytes(b"png")
    tracking.finish(plan, "FINISHED")
    log_result(plan, {"eval/rsum": 123.0, "eval/i2t_R@1": 4.0}, 16, str(report))
    client, run = trackers.mlflow_run(tmp_path / "r1")
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert client.get_experiment(run.info.experiment_id).name == "family"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["data.train"].endswith("[cut short]")
    assert run.data.metrics == {"eval/rsum": 123.0, "eval/i2t_R_at_1": 4.0}
    assert client.get_metric_history(run.info.run_id, "eval/rsum")[0].step == 16
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "report")) == ["report/plots",
                                                                                        "report/report.json"]
    ids = json.loads((tmp_path / "r1" / "tracking.json").read_text())
    assert ids["mlflow_run_id"] == run.info.run_id and ids["mlflow_uri"].startswith("sqlite:///")


def test_a_sweeps_trial_goes_under_its_parent(tmp_path):
    uri = tracking.default_mlflow_uri(str(tmp_path))
    parent = tracking.Parent("sweep", uri, group="sweep", swept=["loss.temperature"])
    client = tracking.mlflow_client(uri)
    parent.mlflow_run_id = client.create_run(tracking.experiment_id(client, "sweep", uri)).info.run_id
    (tmp_path / "t1").mkdir()
    plan = tracking.start(["mlflow", "tensorboard"], str(tmp_path / "t1"), "t1", "ignored", "other://", {}, parent)
    assert plan.mlflow_uri == uri and plan.experiment == "sweep" and plan.highlight == ["loss.temperature"]
    run = client.get_run(plan.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.mlflow_run_id


def test_report_to_is_checked_before_any_ray_work(monkeypatch):
    cfg = load_config(RunJobConfig, SMOKE, ["run.report_to=TensorBoard, mlflow,tensorboard"])
    assert cfg.run.report_to == ["tensorboard", "mlflow"]
    assert load_config(RunJobConfig, SMOKE).run.report_to == []
    with pytest.raises(ConfigError, match=r"run.report_to: 'tensorbord' is not a tracker; choose from tensorboard"):
        load_config(RunJobConfig, SMOKE, ["run.report_to=[tensorbord]"])
    with pytest.raises(ConfigError, match=r"run.mlflow_uri is needed .* s3://"):
        load_config(RunJobConfig, SMOKE, ["run.report_to=[mlflow]", "run.storage_path=s3://bucket/runs"])
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    with pytest.raises(ConfigError, match=r"wandb, which is not installed here: pip install 'pipeline\[tracking\]'"):
        tracking.check_installed(["tensorboard", "wandb"])
    tracking.check_installed(["tensorboard", "mlflow"])


def test_an_mlflow_server_that_does_not_answer_is_named_before_any_ray_work():
    import socket

    from pipeline.preflight import check_trackers

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(RunJobConfig, SMOKE, ["run.report_to=[mlflow]", f"run.mlflow_uri=http://127.0.0.1:{port}"])
    with pytest.raises(ConfigError, match=rf"run.mlflow_uri=http://127.0.0.1:{port}: no MLflow tracking server"):
        check_trackers(cfg.run)


def test_a_tracker_that_fails_is_dropped_and_said_once(tmp_path, capsys):
    plan = _start(tmp_path, ["tensorboard"])
    t = Trackers.open(plan, is_main=True)

    def broken(metrics, step):
        raise OSError("disk gone")

    t.writers[0].write = broken
    t.log({"train/loss": 1.0}, 1)
    t.log({"train/loss": 1.0}, 2)
    out = capsys.readouterr().out
    assert out.count("tensorboard stopped taking metrics (OSError: disk gone)") == 1 and not t.writers
    assert Trackers.open(plan, is_main=False) is None and Trackers.open(None, is_main=True) is None


def test_a_sweeps_end_marks_each_trial_as_it_ended(tmp_path):
    from pipeline.tracking import sweep

    uri = tracking.default_mlflow_uri(str(tmp_path))
    parent, parent_plan = sweep.start(["mlflow", "tensorboard"], str(tmp_path / "sw"), "sw", "sw", uri,
                                      {"tune.metric": "val/rsum"}, ["train.lr"])
    (tmp_path / "sw").mkdir(exist_ok=True)
    rows, dirs = [], {}
    for trial, status in (("t0", "done"), ("t1", "stopped early"), ("t2", "error")):
        dirs[trial] = str(tmp_path / "sw" / trial)
        (tmp_path / "sw" / trial).mkdir()
        tracking.start(["mlflow"], dirs[trial], trial, "ignored", "", {"train.lr": 0.1}, parent)
        rows.append({"trial": trial, "status": status, "val/rsum": 10.0})
    rows.append({"trial": "t3", "status": "error"})  # failed before its trackers started: no run to mark
    dirs["t3"] = str(tmp_path / "sw" / "t3")
    results = tmp_path / "sw" / "sweep"
    results.mkdir()
    (results / "results.csv").write_text("trial\n")
    sweep.finish(parent_plan, dirs, rows, ("val/rsum", 10.0), str(results))
    client = tracking.mlflow_client(uri)
    by_name = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("sw").experiment_id])}
    assert {n: (r.info.status, r.data.tags.get("pipeline.status")) for n, r in by_name.items()} == {
        "sw": ("FINISHED", None), "t0": ("FINISHED", "done"), "t1": ("KILLED", "stopped early"),
        "t2": ("FAILED", "error")}
    assert by_name["sw"].data.metrics == {"best/val/rsum": 10.0}
    assert [a.path for a in client.list_artifacts(by_name["sw"].info.run_id, "sweep")] == ["sweep/results.csv"]
