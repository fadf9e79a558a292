"""Sweep definitions, without Ray: search spaces in the same dotted keys as `--set`, the grid points they
expand to, and each trial's overrides (learning-rate scaling, parameters its loss does not take), checked
against the training config before any Ray work.

A space maps dotted keys to a fixed value or one of {grid: [..]}, {choice: [..]}, {uniform: [lo, hi]},
{loguniform: [lo, hi]}. Grid entries are expanded here (so points can be checked before any Ray work and
deduplicated); the others are sampled by Tune, `tune.num_samples` times per grid point.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError

KINDS = ("grid", "choice", "uniform", "loguniform")


@dataclass
class Study:
    """One search space: grid points (each a dict of overrides) and the Tune-sampled entries."""
    name: str
    points: list[dict] = field(default_factory=list)
    sampled: dict[str, tuple[str, list]] = field(default_factory=dict)  # key -> (kind, args)

    def swept_keys(self) -> list[str]:
        varying = [k for k in dict.fromkeys(k for p in self.points for k in p)
                   if len({json.dumps(p.get(k)) for p in self.points}) > 1]
        return varying + list(self.sampled)


def parse_entry(key: str, spec: Any) -> tuple[str, list]:
    """'grid' with its values, 'fixed' with [value], or a sampled kind with its arguments."""
    if not isinstance(spec, dict):
        return "fixed", [spec]
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"tune space {key}: {spec!r}; write a value or one of "
                          + ", ".join(f"{{{k}: [...]}}" for k in KINDS))
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"tune space {key}: {kind} needs a non-empty list, e.g. {{{kind}: [0.1, 0.5]}}")
    if kind in ("uniform", "loguniform"):
        if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]:
            raise ConfigError(f"tune space {key}: {kind} takes [low, high] with low < high, got {args}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"tune space {key}: loguniform needs a positive low bound, got {args[0]}")
    return kind, args


def parse_studies(space: dict, studies: dict, valid: set[str]) -> list[Study]:
    """`tune.space` (one study named 'sweep') and `tune.studies` (name -> space) -> studies with their grid
    points expanded. Unknown keys are errors naming the valid ones."""
    named = ([("sweep", space)] if space else []) + list(studies.items())
    if not named:
        raise ConfigError("tune: nothing to sweep; set tune.space (dotted key -> {grid: [..]} ...) or "
                          "tune.studies (name -> such a space)")
    out = []
    for name, sp in named:
        if not isinstance(sp, dict) or not sp:
            raise ConfigError(f"tune study {name!r} must map dotted keys to values or {{grid: [..]}} entries")
        grid, sampled = {}, {}
        for key, spec in sp.items():
            if key not in valid:
                raise ConfigError(f"tune space: unknown key {key!r}; valid keys: {', '.join(sorted(valid))}")
            kind, args = parse_entry(key, spec)
            if kind in ("grid", "fixed"):
                grid[key] = args
            else:
                sampled[key] = (kind, args)
        points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        out.append(Study(str(name), points, sampled))
    return out


def trial_overrides(point: dict, sampled: dict, base: dict, lr_scaling: str,
                    takes: set[str] | None) -> tuple[dict, list[str]]:
    """One trial's dotted overrides -> (overrides, keys dropped because the trial's loss does not take them).

    `base` is the flat recipe; `takes` the loss.* keys the trial's loss accepts (None: keep all). With
    lr_scaling, the trial's lr (swept or the recipe's) is scaled by its batch over the recipe's batch."""
    over = {**point, **sampled}
    dropped = []
    if takes is not None:
        for k in [k for k in over if k.startswith("loss.") and k != "loss.name" and k not in takes]:
            dropped.append(k)
            del over[k]
    batch, base_batch = over.get("train.batch_size", base["train.batch_size"]), base["train.batch_size"]
    if lr_scaling != "none" and batch != base_batch:
        ratio = batch / base_batch
        lr = over.get("train.lr", base["train.lr"])
        over["train.lr"] = lr * (ratio if lr_scaling == "linear" else math.sqrt(ratio))
    return over, dropped


def dedupe(points: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Keep the first of identical (study, overrides) points: dropping a parameter a loss does not take
    can make two grid points the same run."""
    seen, out = set(), []
    for study, over in points:
        sig = (study, json.dumps(over, sort_keys=True))
        if sig not in seen:
            seen.add(sig)
            out.append((study, over))
    return out


def loss_keys(loss_name: str) -> set[str]:
    from pipeline.registry import LOSS_PARAMS

    return {"loss." + p for p in LOSS_PARAMS.get(loss_name, ())}


def resolve_trial(point: dict, sampled: dict, base_flat: dict, lr_scaling: str) -> tuple[dict, list[str]]:
    """A trial's full overrides: its grid point and sampled values, minus loss parameters its loss does not
    take, with the recipe's own such parameters emptied (so sweeping loss.name over a recipe that pins
    loss.temperature works), and the learning-rate rule applied."""
    name = {**point, **sampled}.get("loss.name", base_flat["loss.name"])
    takes = loss_keys(name)
    over, dropped = trial_overrides(point, sampled, base_flat, lr_scaling, takes)
    for k, v in base_flat.items():
        if k.startswith("loss.") and k != "loss.name" and k not in takes and v is not None and k not in over:
            over[k] = None
    return over, dropped


def plan(cfg) -> tuple[list[Study], list[tuple[str, dict]]]:
    """The studies of `cfg.tune` and their deduplicated grid points, each checked to build a valid training
    config (sampled entries probed at their first value) before any Ray work."""
    from pipeline.config.loading import apply_overrides, build, flatten, narrow, to_dict, valid_keys

    TrainJobConfig = type(cfg).trial_config  # noqa: N806 (a class; taken from the job so spaces imports no job)
    base_raw = to_dict(narrow(cfg, TrainJobConfig))
    base_flat = flatten(base_raw)
    studies = parse_studies(cfg.tune.space, cfg.tune.studies, set(valid_keys(TrainJobConfig)))
    points = []
    for st in studies:
        for p in st.points:
            keep = "loss.name" in st.sampled  # the loss is drawn per trial: decide what it takes then
            over = p if keep else trial_overrides(p, {}, base_flat, "none", loss_keys(
                p.get("loss.name", base_flat["loss.name"])))[0]
            points.append((st.name, over))
    points = dedupe(points)
    by_name = {st.name: st for st in studies}
    for study, over in points:
        probe = {k: args[0] for k, (kind, args) in by_name[study].sampled.items()}
        full, _ = resolve_trial(over, probe, base_flat, cfg.tune.lr_scaling)
        try:
            build(TrainJobConfig, apply_overrides(base_raw, full, TrainJobConfig))
        except ConfigError as e:
            raise ConfigError(f"tune study {study!r}, point {over}: {e}") from None
    return studies, points
