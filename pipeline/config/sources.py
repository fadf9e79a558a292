"""data.train as a list of sources: each entry's keys checked, in one line naming the entry at fault."""
from __future__ import annotations

from pipeline.config.loading import _check

SAMPLINGS = ("epoch", "resampled")


def parse_source(raw, i: int) -> dict:
    """One entry of a data.train list -> {path, weight, name}; a one-line error for anything else."""
    where = f"data.train[{i}]"
    _check(isinstance(raw, dict), f"{where}={raw!r} is not a mapping; write it as {{path: ..., weight: ...}}")
    unknown = sorted(set(raw) - {"path", "weight", "name"})
    _check(not unknown, f"{where} has unknown key(s) {unknown}; a source has path, weight and name")
    path = raw.get("path")
    _check(isinstance(path, str) and bool(path), f"{where} needs a path (a shard path, directory, glob or brace list)")
    weight = raw.get("weight", 1.0)
    _check(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0
           and weight < float("inf"), f"{where}.weight={weight!r} must be a positive number")
    name = raw.get("name") or f"source{i}"
    _check(isinstance(name, str), f"{where}.name={name!r} must be a string")
    return {"path": path, "weight": float(weight), "name": name}
