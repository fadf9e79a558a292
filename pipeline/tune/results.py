"""A sweep's results, without Ray: trials ranked by their metric (a diverged trial last), the markdown table, the
CSV and the plots (metric against each swept key; one learning curve per trial)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.2f}".rstrip("0").rstrip(".")
    return "—" if v is None or v == "" else str(v)


def is_score(v: Any) -> bool:
    """A finite number: what a trial's metric must be to rank at all."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def rank_rows(rows: list[dict], metric: str, mode: str = "max") -> list[dict]:
    """Rows best first by `metric` (`mode` max or min). A missing or non-finite metric (a diverged trial's NaN)
    ranks last whatever the mode: NaN compares false both ways, so a plain sort could put it first."""
    def key(r: dict) -> tuple[int, float]:
        v = r.get(metric)
        return (0, -v if mode == "max" else v) if is_score(v) else (1, 0.0)

    return sorted(rows, key=key)


def results_table(rows: list[dict], keys: list[str], metric: str, mode: str = "max") -> str:
    """Markdown table, best first: swept keys, metric, R@1 both ways, epochs, status."""
    cols = ["trial", *keys, metric, "val/i2t_R@1", "val/t2i_R@1", "epochs", "status"]
    ordered = rank_rows(rows, metric, mode)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in ordered]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def plot_metric_vs(path: Path, rows: list[dict], key: str, metric: str) -> bool:
    """The metric against one swept key (log x for positive numbers spanning a decade). -> drawn?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r[key], r[metric]) for r in rows if isinstance(r.get(metric), (int, float)) and r.get(key) is not None]
    if len(pts) < 2:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [p[0] for p in pts]
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
        ax.plot(xs, [p[1] for p in pts], "o")
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
    else:
        labels = list(dict.fromkeys(str(x) for x in xs))
        ax.plot([labels.index(str(x)) for x in xs], [p[1] for p in pts], "o")
        ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_curves(path: Path, curves: dict[str, list[tuple[int, float]]], metric: str) -> None:
    """One learning curve (metric per epoch) per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
