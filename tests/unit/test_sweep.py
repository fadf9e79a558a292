"""Sweep plans without Ray: spaces, grid expansion, per-loss parameters, LR scaling, results tables."""
import math

import pytest

from pipeline.config import ConfigError, RunJobConfig, load_config
from pipeline.config import spaces
from pipeline.tune import results

DEMO = "configs/demo.yaml"


def _cfg(space=None, studies=None, **extra):
    over = {"tune.space": space or {}, "tune.studies": studies or {}, **extra}
    return load_config(RunJobConfig, DEMO, over)


def test_grid_points_drop_parameters_a_loss_does_not_take_and_dedupe():
    cfg = _cfg({"loss.name": {"grid": ["infonce", "vse"]}, "loss.margin": {"grid": [0.1, 0.2]}})
    studies, points = spaces.plan(cfg)
    assert points == [("sweep", {"loss.name": "infonce"}), ("sweep", {"loss.name": "vse", "loss.margin": 0.1}),
                      ("sweep", {"loss.name": "vse", "loss.margin": 0.2})]
    assert studies[0].swept_keys() == ["loss.name", "loss.margin"]


def test_studies_are_separate_spaces_and_fixed_values_apply_to_every_point():
    cfg = _cfg(studies={"temperature": {"loss.temperature": {"grid": [0.05, 0.5]}, "loss.learn_temperature": False},
                        "losses": {"loss.name": {"grid": ["infonce", "triplet"]}}})
    studies, points = spaces.plan(cfg)
    assert [s.name for s in studies] == ["temperature", "losses"]
    assert points[:2] == [("temperature", {"loss.temperature": 0.05, "loss.learn_temperature": False}),
                          ("temperature", {"loss.temperature": 0.5, "loss.learn_temperature": False})]
    assert studies[0].swept_keys() == ["loss.temperature"]  # the fixed key is not a column


def test_recipe_loss_parameters_are_emptied_for_a_loss_that_does_not_take_them():
    cfg = _cfg({"loss.name": {"grid": ["infonce", "vse"]}}, **{"loss.temperature": 0.07})
    base = {"loss.name": "infonce", "loss.temperature": 0.07, "train.batch_size": 256, "train.lr": 0.002}
    over, _ = spaces.resolve_trial({"loss.name": "vse"}, {}, base, "none")
    assert over == {"loss.name": "vse", "loss.temperature": None}
    spaces.plan(cfg)  # and every point builds


@pytest.mark.parametrize("rule,expected", [("none", 0.002), ("linear", 0.004), ("sqrt", 0.002 * math.sqrt(2))])
def test_lr_scaling_rules(rule, expected):
    base = {"loss.name": "infonce", "train.batch_size": 256, "train.lr": 0.002}
    over, _ = spaces.resolve_trial({"train.batch_size": 512}, {}, base, rule)
    assert over.get("train.lr", 0.002) == pytest.approx(expected)


@pytest.mark.parametrize("space,match", [
    ({"loss.temprature": {"grid": [1]}}, "unknown key 'loss.temprature'"),
    ({"loss.temperature": {"range": [1, 2]}}, "write a value or one of"),
    ({"train.lr": {"loguniform": [0, 1]}}, "positive low bound"),
    ({"train.lr": {"uniform": [2, 1]}}, "low < high"),
    ({"train.batch_size": {"grid": [255]}}, "not divisible"),
    ({"loss.name": {"grid": ["infonce", "nope"]}}, "choose one of"),
])
def test_bad_spaces_fail_before_ray(space, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(space)


def test_results_table_orders_best_first():
    rows = [{"trial": "a", "loss.temperature": 0.1, "val/rsum": 10.0, "status": "done"},
            {"trial": "b", "loss.temperature": 0.5, "val/rsum": 30.0, "status": "done"},
            {"trial": "c", "loss.temperature": 1.0, "val/rsum": None, "status": "error"}]
    table = results.results_table(rows, ["loss.temperature"], "val/rsum").splitlines()
    assert table[0].startswith("| trial | loss.temperature | val/rsum")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["b", "a", "c"]


@pytest.mark.parametrize("mode, order", [("max", ["b", "a", "nan", "inf", "none"]),
                                         ("min", ["a", "b", "nan", "inf", "none"])])
def test_a_diverged_trial_ranks_last(mode, order):
    """A NaN (or infinite) metric must never be picked as the best, whichever end is best."""
    rows = [{"trial": "nan", "val/rsum": float("nan")}, {"trial": "a", "val/rsum": 10.0},
            {"trial": "inf", "val/rsum": float("inf")}, {"trial": "b", "val/rsum": 30.0},
            {"trial": "none", "val/rsum": None}]
    assert [r["trial"] for r in results.rank_rows(rows, "val/rsum", mode)] == order
    table = results.results_table(rows, [], "val/rsum", mode).splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == order
