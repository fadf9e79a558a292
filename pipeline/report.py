"""report.json (the contract's fields), report.md and plots: formatting only, no computation."""
from __future__ import annotations

import html
import json
from pathlib import Path

INDEX_KEYS = ("type", "recall@10_vs_exact", "build_s", "qps")
_MD_PUNCT = str.maketrans({c: "\\" + c for c in "\\`*_[]|~"})


def md_text(text: str) -> str:
    """A caption, key or label as literal markdown: its HTML shows as text (markdown passes raw HTML through),
    its punctuation makes no emphasis, link or table cell, and its line breaks no new block."""
    return html.escape(" ".join(str(text).split()).translate(_MD_PUNCT), quote=False)


def recall_table(metrics: dict) -> str:
    ks = [k for k in metrics["i2t"] if k.startswith("R@")]
    head = "| direction | " + " | ".join(ks) + " | medr | meanr |"
    rule = "|---" * (len(ks) + 3) + "|"
    rows = [f"| {name} | " + " | ".join(f"{metrics[d][k]:.1f}" for k in ks)
            + f" | {metrics[d]['medr']:.0f} | {metrics[d]['meanr']:.1f} |"
            for d, name in (("i2t", "image → text"), ("t2i", "text → image"))]
    return "\n".join([head, rule, *rows]) + f"\n\nrsum = {metrics['rsum']:.1f} over {metrics['n_images']} images " \
                                            f"and {metrics['n_captions']} captions"


def comparison_table(rows: list[dict], first: str = "checkpoint") -> str:
    """Several checkpoints (or models) on the same gallery, one markdown row each."""
    ks = [k for k in rows[0]["i2t"] if k.startswith("R@")]
    head = (f"| {first} | " + " | ".join(f"i2t {k}" for k in ks) + " | " + " | ".join(f"t2i {k}" for k in ks)
            + " | rsum | medr i2t / t2i |")
    lines = [head, "|---" * (2 * len(ks) + 3) + "|"]
    for r in rows:
        lines.append(f"| {md_text(r['label'])} | " + " | ".join(f"{r['i2t'][k]:.1f}" for k in ks) + " | "
                     + " | ".join(f"{r['t2i'][k]:.1f}" for k in ks)
                     + f" | {r['rsum']:.1f} | {r['i2t']['medr']:.0f} / {r['t2i']['medr']:.0f} |")
    return "\n".join(lines)


def baseline_rows(report: dict) -> list[dict]:
    """The report's model and its `baselines` (e.g. CCA, fitted on the same training data), as table rows."""
    own = {"label": "this model", **{k: report[k] for k in ("i2t", "t2i", "rsum")}}
    return [own] + [{"label": b["description"], **b} for b in (report.get("baselines") or {}).values()]


def plot_history(history: list, path: Path) -> bool:
    """Training loss and validation rsum per epoch (epoch 0 = the untrained model), drawn for the page's full
    width."""
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # shared x: both panels span every epoch, though the loss has no epoch 0
    fig, (a, b) = plt.subplots(1, 2, figsize=(10.5, 3.6), sharex=True)
    tr = [h for h in history if "train/loss" in h]
    a.plot([h["epoch"] for h in tr], [h["train/loss"] for h in tr], marker="o")
    a.set(xlabel="epoch", ylabel="train loss", title="training loss")
    va = [h for h in history if "val/rsum" in h]
    b.plot([h["epoch"] for h in va], [h["val/rsum"] for h in va], marker="o", color="C1")
    b.set(xlabel="epoch", ylabel="rsum", title="validation rsum (epoch 0: untrained)")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: a 0.2 tick means nothing
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def example_keys(metrics: dict) -> list[str]:
    """The gallery keys a report's example queries show."""
    keys = [t["key"] for ex in metrics.get("examples", []) for t in ex["top"]]
    return list(dict.fromkeys(keys + [ex["query"] for ex in metrics.get("image_examples", [])]))


def publish(out: str, metrics: dict, index_meta: dict, checkpoint: str, config: dict, history: list | None,
            data: dict | None, gallery: list[str], in_driver_images: int, subdir: str = "", extra=None) -> dict:
    """A run's report, assembled the one way every command does it: the thumbnails of the images its examples
    show (read by key from the `gallery` shards), then `write_report` into `out`[/`subdir`] (s3:// outputs are
    written locally, then uploaded); `extra(local_dir)` writes any other file beside it. -> report dict"""
    from pipeline import storage
    from pipeline.data.by_key import images_by_key
    from pipeline.report_html import thumbnails

    thumbs = thumbnails(images_by_key(gallery, example_keys(metrics), max_in_driver=in_driver_images))
    # the checkpoint as the report's folder reaches it: relative inside the run directory, so it survives a move
    where = storage.relative_ref(str(checkpoint), storage.join(out, subdir) if subdir else out)
    with storage.staging_dir(out) as local:
        rep = write_report(local / subdir if subdir else local, metrics, index_meta, where, config, history,
                           data, thumbs)
        if extra is not None:
            extra(local)
    return rep


def rerank_lines(block: dict) -> list[str]:
    from pipeline.report_html import rerank_rows

    ks = list(block["t2i"]["before"])
    head = "| direction | " + " | ".join(ks) + " |"
    return ["## Re-ranked (fusion head over each query's top " + str(block["k"]) + ")", "",
            f"{block.get('description', '')} — {block['ms_per_query']:.3f} ms per query to re-rank", "",
            head, "|" + "---|" * (len(ks) + 1),
            *("| " + " | ".join(row) + " |" for row in rerank_rows(block)), ""]


def write_report(out: Path, metrics: dict, index_meta: dict, checkpoint: str, config: dict,
                 history: list | None = None, data: dict | None = None, thumbs: dict | None = None) -> dict:
    """report.json, report.md, report.html and plots/ in `out`; `thumbs` maps sample keys to thumbnail data
    URIs for the example queries."""
    from pipeline.report_html import plot_rank_histogram, plot_recall_curves, write_html

    (out / "plots").mkdir(parents=True, exist_ok=True)  # the recall and rank plots need it even without training
    examples = metrics.get("examples", [])
    report = {
        "i2t": metrics["i2t"], "t2i": metrics["t2i"], "rsum": metrics["rsum"],
        "n_images": metrics["n_images"], "n_captions": metrics["n_captions"],
        "index": {k: index_meta.get(k) for k in INDEX_KEYS},
        "checkpoint": checkpoint, "config": config,
        "history": history or [], "data": data or {}, "examples": examples,
        **{k: metrics[k] for k in ("protocols", "approximate", "zero_shot", "curves", "image_examples", "comparison",
                                           "baselines", "rerank", "caption_concentration") if k in metrics},
    }
    untrained = next((h for h in report["history"] if h.get("epoch") == 0 and "val/rsum" in h), None)
    if untrained:
        report["untrained_rsum"] = untrained["val/rsum"]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    has_plot = plot_history(report["history"], out / "plots" / "training.png")
    curves, ranks, training = (out / "plots" / f"{n}.png" for n in ("recall_at_k", "rank_histogram", "training"))
    drawn = {curves: plot_recall_curves(metrics.get("curves"), curves),
             ranks: plot_rank_histogram(metrics.get("ranks"), ranks), training: has_plot}
    write_html(out, report, [p for p, ok in drawn.items() if ok], thumbs or {},
               baseline_rows(report) if report.get("baselines") else None)
    lines = ["# Retrieval report", "", f"Checkpoint: `{checkpoint}`", "", recall_table(metrics), ""]
    lopsided = metrics.get("caption_concentration")
    if lopsided:
        lines += [f"**Note:** one gallery image, `{md_text(lopsided['key'])}`, holds {100 * lopsided['share']:.0f}% "
                  f"of the captions ({lopsided['captions']}): text → image recall is mostly how that image is found.",
                  ""]
    if report.get("comparison"):
        lines += ["## Checkpoints compared (same gallery)", "", comparison_table(report["comparison"]), ""]
    if untrained:
        lines += [f"Untrained model (same architecture, epoch 0): rsum = {untrained['val/rsum']:.1f}", ""]
    if report.get("baselines"):
        lines += ["## Baselines (same validation set)", "", comparison_table(baseline_rows(report), "model"), ""]
    if report.get("rerank"):
        lines += rerank_lines(report["rerank"])
    idx = report["index"]
    lines += ["## Index", "", f"{idx['type']} index, recall@10 vs exact {idx['recall@10_vs_exact']}, "
              f"built in {idx['build_s']:.3f} s, {idx['qps']:.0f} queries/s", ""]
    if has_plot:
        lines += ["## Training", "", "![training](plots/training.png)", ""]
    skipped = {split: by for split, by in (report["data"].get("skipped") or {}).items() if by}
    lines += ["## Data", ""]
    if skipped:
        lines += ["Skipped samples (by split and reason):", ""]
        lines += [f"- {split}: " + ", ".join(f"{reason} x{n}" for reason, n in by.items()) for split, by in skipped.items()]
        shown = report["data"].get("skip_examples") or {}
        lines += [f"  - {split} {reason}, e.g. " + ", ".join(f"`{k}`" for k in keys)
                  for split, by in shown.items() for reason, keys in by.items() if keys]
    else:
        lines += ["No sample was skipped."]
    lines += [""]
    if examples:
        lines += ["## Example queries (text → image, ✓ = the caption's own image)", ""]
        for ex in examples:
            hits = ", ".join(f"{md_text(t['key'])}{' ✓' if t['hit'] else ''} ({t['score']:.2f})"
                             for t in ex["top"])
            lines += [f"- *{md_text(ex['query'])}* → {hits}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return report
