"""A run stopped mid-epoch, by a killed driver or a killed worker, resumes from its last step checkpoint and
trains every usable sample of each epoch exactly once (none lost, none twice), ending at the step count of an
uninterrupted run (the killed driver's rerun under scaling.strategy=fsdp with activation checkpointing: a DDP
checkpoint resumed sharded). Every worker records the keys of each step it trained (run.record_keys). The
killed driver's rerun is also a user's console (no Ray chatter), and resumes past a deleted (damaged) newest
checkpoint that Ray Train's own list still names."""
import json
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline import checkpoint
from tests import faults, trackers

from . import drivers
from .conftest import RAY_CHATTER, smoke_args

SHARDS, GOOD, BAD, BATCH, EPOCHS, EVERY = 8, 48, 3, 16, 2, 5
STEPS = EPOCHS * SHARDS * GOOD // BATCH  # 2 workers x 4 shards x 48 usable = 24 steps an epoch
TOL_LOSS, TOL_RSUM = 0.25, 100  # a killed run against an uninterrupted one: relative train/loss, val rsum of 600


@pytest.fixture(scope="module")
def even_data(tmp_path_factory):
    """8 shards of 48 good samples and 3 corrupt ones each: dealt 4 to a worker, every worker holds a whole
    number of batches, so an uninterrupted epoch trains every usable sample."""
    out = tmp_path_factory.mktemp("even_data")
    image = faults.encode(faults.good_image(0, size=40))
    usable = set()
    for s in range(SHARDS):
        members = []
        for j in range(GOOD + BAD):
            key = f"{s:02d}{j:04d}"
            members += [(f"{key}.jpg", image if j % 17 else b"not an image"), (f"{key}.txt", f"a red square {j}".encode())]
        faults.write_tar(out / "train" / f"{s:05d}.tar", members)
        usable |= {f"{s:05d}.tar/{s:02d}{j:04d}" for j in range(GOOD + BAD) if j % 17}
    # Distinct validation pairs: identical ones tie everywhere, and their rsum (0) could not tell two runs apart.
    faults.write_tar(out / "val" / "00000.tar", [
        m for j in range(32) for m in ((f"v{j}.jpg", faults.encode(faults.good_image(100 + j, size=40))),
                                       (f"v{j}.txt", f"a red square {j}".encode()))])
    assert len(usable) == SHARDS * GOOD
    return out, usable


def _args(data: Path, tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [*smoke_args(data, tmp_path, name), "--set", f"data.train={data}/train", "--set", f"data.val={data}/val",
            "--set", f"train.epochs={EPOCHS}", "--set", f"train.batch_size={BATCH}", "--set", "train.log_every=6",
            "--set", f"run.checkpoint_every_steps={EVERY}", "--set", "run.keep_checkpoints=30",
            "--set", "run.record_keys=true", "--set", "data.max_skip_fraction=0.1", *extra]


def _wait_until(ready, proc, timeout: float = 240) -> bool:
    """Poll `ready()` every 50 ms until it holds, the driver exits or `timeout` seconds pass. -> whether it holds."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return ready()


def _wait_for_step_checkpoint(run_dir: Path, proc, log: Path, timeout: float = 240) -> None:
    """Until a mid-epoch checkpoint of epoch 1 is complete (every file at its manifest size): a kill while the
    first one is still being written leaves none to resume from, and the run rightly starts over."""
    if not _wait_until(lambda: any(checkpoint.is_checkpoint(p)
                                   for p in (run_dir / "checkpoints").glob("epoch_0000_step_*")), proc, timeout):
        raise AssertionError(f"no mid-epoch checkpoint (driver exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def _effective(run_dir: Path) -> tuple[dict[int, Counter], list[str], int]:
    """Keys trained per epoch by the steps that count: an attempt's steps after the checkpoint the next attempt
    resumed from were trained again by that attempt. -> (epoch -> key counts, the resume points, last step)."""
    per_epoch: dict[int, Counter] = {}
    starts, last = [], 0
    for f in sorted((run_dir / "keys").glob("rank*.jsonl")):
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        attempts: list[list[dict]] = []
        for r in lines:  # a new attempt: another resume point, or the steps start again (both from scratch)
            if not attempts or attempts[-1][0]["start"] != r["start"] or r["step"] <= attempts[-1][-1]["step"]:
                attempts.append([])
            attempts[-1].append(r)
        for i, att in enumerate(attempts):
            nxt = attempts[i + 1][0]["start"] if i + 1 < len(attempts) else None
            until = (json.loads((Path(nxt) / "state.json").read_text())["step"] if nxt else
                     0 if i + 1 < len(attempts) else float("inf"))
            for r in att:
                if r["step"] <= until:
                    per_epoch.setdefault(r["epoch"], Counter()).update(r["keys"])
                    last = max(last, r["step"])
        starts += [a[0]["start"] for a in attempts[1:]]
    return per_epoch, starts, last


def _check_exactly_once(run_dir: Path, usable: set[str]) -> list[str]:
    per_epoch, starts, last = _effective(run_dir)
    assert sorted(per_epoch) == list(range(1, EPOCHS + 1))
    for epoch, seen in per_epoch.items():
        twice = [k for k, n in seen.items() if n > 1]
        assert not twice, f"epoch {epoch}: {len(twice)} samples trained twice, e.g. {twice[:3]}"
        lost = usable - set(seen)
        assert not lost, f"epoch {epoch}: {len(lost)} usable samples never trained, e.g. {sorted(lost)[:3]}"
        assert set(seen) <= usable
    assert last == STEPS
    final = json.loads((run_dir / "checkpoints" / f"epoch_{EPOCHS:04d}" / "state.json").read_text())
    assert final["step"] == STEPS and final["metrics"]["data/skipped"] == SHARDS * BAD
    assert final["skips"]["counts"] == {"corrupt_image": SHARDS * BAD}  # counted once, though read twice
    return starts


TRACKED = ("--set", "run.report_to=[tensorboard,mlflow,wandb]")


def _check_trackers(run_dir: Path, first_after: set[int]) -> None:
    """Each tracker's train/loss is one curve (every step once, in order, across the attempts' files) over the
    steps metrics.jsonl holds, the resumed attempt's own first step aside (the dead attempt had logged past it),
    with the values metrics.jsonl has (the steps the dead attempt logged after its checkpoint were trained again
    on the same batches)."""
    jsonl = {r["step"]: r["train/loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    curves = {"tensorboard": trackers.tensorboard_points(run_dir, "train/loss"),
              "mlflow": trackers.mlflow_points(run_dir, "train/loss"),
              "wandb": trackers.wandb_points(run_dir, "train/loss")}
    for name, points in curves.items():
        steps = trackers.assert_one_curve(points, name)
        assert set(steps) <= set(jsonl) and set(jsonl) - set(steps) <= first_after, (name, steps, sorted(jsonl))
        assert steps[-1] == STEPS
        for step, value in points:
            assert abs(value - jsonl[step]) <= TOL_LOSS * jsonl[step], (name, step, value, jsonl[step])
    assert [s for s, _ in trackers.tensorboard_curve(run_dir, "train/loss")] == [s for s, _ in curves["tensorboard"]]
    assert {s for s, _ in trackers.tensorboard_points(run_dir, "val/rsum")} >= {0, STEPS // EPOCHS, STEPS}
    _, run = trackers.mlflow_run(run_dir)
    assert run.info.status == "FINISHED" and run.data.params["train.batch_size"] == str(BATCH)


def _ray_listed(run_dir: Path) -> list[str]:
    """The complete mid-epoch checkpoints of epoch 1 that Ray Train's own checkpoint list names, oldest first."""
    try:
        snap = json.loads((run_dir / "checkpoints" / checkpoint.RAY_SNAPSHOT).read_text())
        names = [r["checkpoint_dir_name"] for r in snap["checkpoint_results"]]
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or caught mid-write
        return []
    return sorted(n for n in names if n.startswith("epoch_0000_step_")
                  and checkpoint.is_checkpoint(run_dir / "checkpoints" / n))


def test_a_killed_driver_resumes_mid_epoch_exactly_past_a_deleted_checkpoint(ray_cluster, even_data, tmp_path):
    data, usable = even_data
    args = _args(data, tmp_path, "driver", *TRACKED)
    log = tmp_path / "driver.log"
    proc = drivers.train(args, ray_cluster, log)
    run_dir, ckpts = tmp_path / "driver", tmp_path / "driver" / "checkpoints"
    _wait_until(lambda: len(_ray_listed(run_dir)) >= 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the interruption: the driver dies mid-epoch
    proc.wait()
    listed = _ray_listed(run_dir)
    assert len(listed) >= 2, f"Ray never listed two checkpoints (driver exit {proc.poll()}):\n{log.read_text()[-3000:]}"
    assert not (ckpts / "epoch_0001").exists(), "the kill came too late: epoch 1 was over"

    # The advice for a damaged checkpoint is to delete it: here the newest one Ray's own list names, with any
    # newer one Ray had not listed yet. Ray's list still names it, which made every rerun fail inside Ray; the run
    # must resume from the newest complete checkpoint instead, the one Ray listed before.
    for p in ckpts.glob("epoch_0000_step_*"):
        if p.name >= listed[-1]:
            shutil.rmtree(p)
    expected = checkpoint.find_latest(run_dir, verify=True)
    assert expected and Path(expected).name == listed[-2]

    # Run again with the same name, as a user's own driver (no --verbose): it resumes, and its console shows the
    # project's lines only, none of Ray's chatter; the workers' output went to the kept log file. It resumes
    # the DDP run's checkpoint as a user short of memory would: under FSDP, with the image tower's activations
    # checkpointed (neither is a shaping key). The towers are sharded, validated with a whole copy and gathered
    # whole into each checkpoint; every check below holds as for a plain resume.
    resumed = tmp_path / "resumed.log"
    again = drivers.train([*args, "--set", "scaling.strategy=fsdp", "--set", "model.image.grad_checkpointing=true"],
                          ray_cluster, resumed, verbose=False)
    assert again.wait(timeout=400) == 0, resumed.read_text()[-3000:]
    printed = resumed.read_text()
    noise = [line for line in printed.splitlines() if RAY_CHATTER.search(line)]
    assert not noise and f"resuming driver from {expected} (inside epoch 1" in printed \
        and "[train] epoch 1:" in printed, noise[:10] or printed[-2000:]
    assert f"was damaged (it names {listed[-1]}, which is not there)" in printed, printed[-2000:]
    assert "[train] FSDP: the towers sharded across 2 workers" in printed, printed[-2000:]
    assert "checkpoint" in printed and f"epoch_{EPOCHS:04d}" in printed
    kept = list((Path(tempfile.gettempdir()) / "pipeline-logs").glob(f"train-*-{again.pid}.log"))
    assert kept and "(RayTrainWorker)" in kept[0].read_text()
    starts = _check_exactly_once(run_dir, usable)
    assert starts and {Path(s).name for s in starts} == {Path(expected).name}, starts  # resumed inside epoch 1
    final = json.loads((ckpts / f"epoch_{EPOCHS:04d}" / "state.json").read_text())
    assert [h["epoch"] for h in final["history"]] == list(range(EPOCHS + 1))  # every epoch once
    _check_trackers(run_dir, {json.loads((Path(s) / "state.json").read_text())["step"] + 1 for s in starts})


def _steps(run_dir: Path) -> list[tuple[int, int]]:
    return [(r["epoch"], r["step"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_a_killed_worker_resumes_mid_epoch_exactly_and_lands_on_an_uninterrupted_run(ray_cluster, even_data,
                                                                                     tmp_path):
    """A worker SIGKILLed inside epoch 1 with run.max_failures=1: Ray Train restarts the group from the last step
    checkpoint, every usable sample is trained once, and the run ends where an uninterrupted run with the same
    seed, trained beside it, ends. (A resume at an epoch's end: test_node_loss.py.)"""
    data, usable = even_data
    log, steady_log = tmp_path / "worker.log", tmp_path / "steady.log"
    proc = drivers.train(_args(data, tmp_path, "worker", "--set", "run.max_failures=1", *TRACKED), ray_cluster, log)
    run_dir, steady = tmp_path / "worker", None
    try:
        workers = drivers.wait_for_workers(2, proc, log)  # known to be this run's: the steady one starts after
        # Side by side on the shared cluster's 8 CPUs: about a launch's time less than one after the other.
        steady = drivers.train(_args(data, tmp_path, "steady"), ray_cluster, steady_log)
        _wait_for_step_checkpoint(run_dir, proc, log)
        victim = next(pid for pid in drivers.train_workers() if pid in workers)
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
        assert steady.wait(timeout=400) == 0, steady_log.read_text()[-3000:]
    finally:
        for p in (proc, steady):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    starts = _check_exactly_once(run_dir, usable)
    assert starts and "_step_" in starts[0], starts  # the restarted workers went on from a step checkpoint
    assert "recovered from 1 worker failure" in log.read_text(), log.read_text()[-3000:]
    attempts = [json.loads(ln) for ln in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and attempts[0]["launch"] == attempts[1]["launch"]
    assert attempts[1]["start_epoch"] == 0 and "epoch_0000_step_" in attempts[1]["resumed_from"], attempts

    # Against the uninterrupted run: the same final step, and an ending within floating-point differences of it
    # (each worker replays its seeded epoch plan, so the restarted attempt trains the same batches; what these
    # tolerances add over the exact key checks above is that the model and optimiser state came back with them).
    final = json.loads((run_dir / "checkpoints" / f"epoch_{EPOCHS:04d}" / "state.json").read_text())
    base = json.loads((tmp_path / "steady" / "checkpoints" / f"epoch_{EPOCHS:04d}" / "state.json").read_text())
    assert [h["epoch"] for h in final["history"]] == list(range(EPOCHS + 1))  # every epoch once, none twice
    # The same logged steps, each once, none from the lost attempt's steps after its checkpoint; the restarted
    # attempt also logs its own first step.
    logged, steady_logged = _steps(run_dir), _steps(tmp_path / "steady")
    first_after = {json.loads((Path(s) / "state.json").read_text())["step"] + 1 for s in starts}
    assert len(logged) == len(set(logged)) and set(steady_logged) <= set(logged), (logged, steady_logged)
    assert {step for _, step in set(logged) - set(steady_logged)} <= first_after, (logged, steady_logged)
    _check_trackers(run_dir, first_after)
    assert final["step"] == base["step"]
    a, b = final["metrics"], base["metrics"]
    trace = lambda s: [(h["epoch"], round(h.get("train/loss", 0), 4), round(h["val/rsum"], 1))  # noqa: E731
                       for h in s["history"]]
    print(f"  steady {trace(base)}\n  killed {trace(final)}")
    assert abs(a["train/loss"] - b["train/loss"]) <= TOL_LOSS * b["train/loss"]
    assert abs(a["val/rsum"] - b["val/rsum"]) <= TOL_RSUM
