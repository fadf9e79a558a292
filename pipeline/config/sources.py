"""What the data files are: data.train as a list of sources (each entry's keys checked, in one line naming the
entry at fault), and the columns of a CSV/TSV input."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.loading import _check, _f

SAMPLINGS = ("epoch", "resampled")


@dataclass(frozen=True)
class CsvColumnsConfig:
    """The data.csv_* keys: in every job that reads data (the evaluation jobs' data section holds only these)."""
    csv_image_key: str = _f("filepath", "CSV/TSV inputs: the column holding each image's path (relative to the file's "
                                        "folder, absolute, or s3://); OpenCLIP's --csv-img-key")
    csv_caption_key: str = _f("title", "CSV/TSV inputs: the column holding each image's caption; OpenCLIP's "
                                       "--csv-caption-key")
    csv_separator: str = _f("auto", "CSV/TSV inputs: auto (tab for .tsv; for .csv tab or comma, whichever splits the "
                                    "header into a data.csv_image_key column) | , | \\t")

    def __post_init__(self) -> None:
        if self.csv_separator in ("\\t", "tab"):
            object.__setattr__(self, "csv_separator", "\t")
        _check(self.csv_separator in ("auto", ",", "\t", ";", "|"),
               f"data.csv_separator={self.csv_separator!r}; choose auto, ',', '\\t', ';' or '|'")
        _check(bool(self.csv_image_key) and bool(self.csv_caption_key) and self.csv_image_key != self.csv_caption_key,
               "data.csv_image_key and data.csv_caption_key must name two different columns")


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
