"""A training driver killed mid-run resumes from its last checkpoint when run again with the same name."""
import json
import os
import signal
import subprocess
import sys
import time

from pipeline.cli import main

from .conftest import RAY_CHATTER, ROOT, smoke_args

EPOCHS = 4


def test_resume_after_interruption(ray_cluster, smoke_data, tmp_path, capsys):
    args = smoke_args(smoke_data, tmp_path, "resume", "--set", f"train.epochs={EPOCHS}",
                      "--set", f"run.keep_checkpoints={EPOCHS}")
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args, "--address", ray_cluster],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    first = tmp_path / "resume" / "checkpoints" / "epoch_0001" / "state.json"
    deadline = time.time() + 240
    # The checkpoint lands before the worker's epoch line has been forwarded to the driver's console, so wait
    # for both: the console check below reads that line.
    while proc.poll() is None and time.time() < deadline and not (
            first.exists() and "[train] epoch 1:" in log.read_text()):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the interruption: the driver dies mid-training
    proc.wait()
    assert first.exists(), "the first run never wrote a checkpoint"
    done_before = sorted(p.name for p in first.parent.parent.glob("epoch_*") if (p / "state.json").exists())
    assert f"epoch_{EPOCHS:04d}" not in done_before, "the run finished before it could be interrupted"
    epoch1 = json.loads(first.read_text())["metrics"]
    # What a user reads from a driver of their own: the project's lines only, none of Ray's chatter.
    printed = log.read_text()
    noise = [line for line in printed.splitlines() if RAY_CHATTER.search(line)]
    assert not noise and "[train] epoch 1:" in printed, noise[:10] or printed[-2000:]
    import tempfile
    from pathlib import Path

    kept = list((Path(tempfile.gettempdir()) / "pipeline-logs").glob(f"train-*-{proc.pid}.log"))
    assert kept and "(RayTrainWorker)" in kept[0].read_text()  # the workers' output went to the log file

    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    final = json.loads((tmp_path / "resume" / "checkpoints" / f"epoch_{EPOCHS:04d}" / "state.json").read_text())
    epochs = [h["epoch"] for h in final["history"]]
    assert epochs == list(range(EPOCHS + 1)), epochs  # each epoch once, none retrained, none skipped
    assert final["history"][1] == epoch1  # epoch 1 comes from the interrupted run, untouched
    assert "checkpoint" in out and f"epoch_{EPOCHS:04d}" in out

    # The advice for a damaged checkpoint is to delete it. Ray's own checkpoint list still names it, which
    # made every rerun fail inside Ray; the run must resume from the newest complete checkpoint instead.
    import shutil

    newest = tmp_path / "resume" / "checkpoints" / f"epoch_{EPOCHS:04d}"
    shutil.rmtree(newest)
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert f"epoch_{EPOCHS - 1:04d}" in out and "was damaged" in out, out[-2000:]
    again = json.loads((newest / "state.json").read_text())
    assert [h["epoch"] for h in again["history"]] == list(range(EPOCHS + 1))

