"""Where a training epoch's time goes (`phases`): the clock's arithmetic, and a real epoch of `train_epoch` on
one process whose batches arrive slowly on purpose, which the breakdown must put under data wait."""
import time

import pytest
import torch

from pipeline.config import TrainJobConfig, load_config
from pipeline.losses import build_loss
from pipeline.models import build_model
from pipeline.training.objective import ContrastiveObjective
from pipeline.console import describe_start, mark_start, process_start
from pipeline.training.phases import PHASES, PhaseClock, describe_phases, phase_metrics
from pipeline.training.loop import train_epoch
from pipeline.training.optimisation import make_optimizer, make_scheduler

from .test_divergence import BASE, FakeContext


def test_the_breakdown_sums_to_the_wall_time_and_nests_the_gather():
    clock = PhaseClock()
    with clock("forward_backward"):
        time.sleep(0.05)
        with clock("all_gather"):
            time.sleep(0.02)
    clock.add("epoch_start", 0.01)
    time.sleep(0.02)  # in no phase: other
    out = clock.breakdown()
    assert set(out) == set(PHASES)
    assert sum(out.values()) == pytest.approx(clock.wall(), abs=1e-3)
    assert out["all_gather"] == pytest.approx(0.02, abs=0.01)
    assert out["forward_backward"] == pytest.approx(0.05, abs=0.015)  # the gather is not counted twice
    assert out["other"] == pytest.approx(0.01, abs=0.008)  # the 0.02 s in no phase, less the 0.01 s added


def test_sampled_step_phases_are_scaled_to_every_step():
    clock = PhaseClock()
    for i in range(4):  # a GPU epoch: only one step in four timed
        timed = i == 0
        with clock("optimizer", timed):
            time.sleep(0.01)
        clock.count_step(timed)
    assert clock.breakdown()["optimizer"] == pytest.approx(4 * clock.seconds["optimizer"])
    assert clock.seconds["optimizer"] == pytest.approx(0.01, abs=0.008)


def test_metrics_and_the_console_line():
    m = phase_metrics({"forward_backward": 6.0, "data_wait": 3.0, "epoch_start": 1.0, "all_gather": 0.01})
    assert m["time/epoch_s"] == pytest.approx(10.01) and m["time/data_wait_share"] == pytest.approx(3 / 10.01)
    line = describe_phases(m)
    assert line.startswith("10.0 s: forward/backward 60%, data wait 30%, epoch start 10%")
    assert "all-gather" not in line and line.endswith("(first batch after 1.0 s)")


def test_a_slow_data_source_shows_as_data_wait():
    cfg = load_config(TrainJobConfig, None, BASE)
    torch.manual_seed(0)
    objective = ContrastiveObjective(build_model(cfg.model, 30), build_loss(cfg.loss))
    opt = make_optimizer(objective, cfg.train)
    ctx = FakeContext(6)

    def slow():
        time.sleep(0.3)  # the epoch's start
        for b in ctx.shard.batches:
            time.sleep(0.1)
            yield b

    marks = mark_start("model", {})
    clock = PhaseClock(marks=marks)
    train_epoch(objective, opt, make_scheduler(opt, 0, 100), ctx, cfg, epoch=1, step=0, steps_per_epoch=6,
                log=lambda r, p: None, batches=slow(), clock=clock)
    out = clock.breakdown()
    # The launch's start: the first batch came after the epoch start's wait (0.4 s) from when the model was
    # built, the first step after that batch.
    assert out["epoch_start"] <= marks["batch"] - marks["model"] < out["epoch_start"] + 0.5
    assert 0 < marks["step"] - marks["batch"] < out["forward_backward"] + out["optimizer"] + 0.05
    assert out["epoch_start"] == pytest.approx(0.4, abs=0.1)  # the start and the first batch's own wait
    assert out["data_wait"] == pytest.approx(0.5, abs=0.1)  # the five batches after it
    assert out["forward_backward"] > 0 and out["optimizer"] > 0
    assert out["all_gather"] < 0.05  # one process: the gather returns its input
    assert clock.steps == clock.timed_steps == 6  # on CPU every step is timed
    assert sum(out.values()) == pytest.approx(clock.wall(), abs=1e-2)


def test_a_resumed_epoch_logs_where_an_uninterrupted_one_does():
    """Log steps count from the epoch's start: an epoch resumed after 5 of its steps logs its own first step,
    then the steps an uninterrupted epoch logs (every train.log_every=2), so their metrics line up."""
    cfg = load_config(TrainJobConfig, None, BASE)

    def logged(done: int, batches: int) -> list[str]:
        torch.manual_seed(0)
        objective = ContrastiveObjective(build_model(cfg.model, 30), build_loss(cfg.loss))
        opt = make_optimizer(objective, cfg.train)
        ctx, out = FakeContext(batches), []
        train_epoch(objective, opt, make_scheduler(opt, 0, 100), ctx, cfg, epoch=1, step=done, steps_per_epoch=10,
                    log=lambda r, p: out.append(p), batches=iter(ctx.shard.batches), done=(done, 0.0))
        return out

    assert logged(0, 10) == ["1/10", "2/10", "4/10", "6/10", "8/10", "10/10"]
    assert logged(5, 5) == ["6/10", "8/10", "10/10"]  # its first step is also a log step here
    assert logged(4, 6) == ["5/10", "6/10", "8/10", "10/10"]


def test_the_start_line_names_each_part_from_the_process_start():
    now = time.time()
    assert now - 3600 * 24 * 365 < process_start() <= now  # this process's start, read from /proc
    marks = {"process": 100.0, "ray": 103.5, "data": 104.0, "fit": 104.25, "worker": 110.0, "model": 110.5,
             "batch": 112.0, "step": 112.5}  # no untrained validation (a resumed run): that part is left out
    line = describe_start(marks)
    assert line == ("first step after 12.5 s: Ray start 3.5 s, data planning (counts, vocabulary) 0.5 s, driver "
                    "setup 0.2 s, worker group 5.8 s, model 0.5 s, first block 1.5 s, step 0.5 s")
    once = mark_start("ray", dict(marks))
    assert once["ray"] == 103.5 and once["process"] == 100.0  # a milestone keeps its first time
