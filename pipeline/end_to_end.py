"""`pipeline run`: data -> train -> index -> evaluate -> report in one run directory, and a closing summary.

    pipeline run                       # configs/demo.yaml on an embedded local Ray, synthetic data
    pipeline run --config configs/demo.yaml --set train.epochs=8
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline import storage
from pipeline.config import RunJobConfig


@dataclass
class RunSummary:
    run_dir: str  # local path or s3:// URI, like the others
    checkpoint: str
    index_dir: str
    report_dir: str
    report: dict
    data: dict


def run(cfg: RunJobConfig) -> RunSummary:
    """`pipeline run`: train (or sweep), then index, evaluate and report; -> where everything went."""
    from pipeline import evaluate
    from pipeline.training import driver as train
    from pipeline.data.ingest import expand_paths
    from pipeline.data.skips import EXAMPLES, SkipLog

    if cfg.tune.enabled:  # sweep, then carry the best trial's checkpoint into index and evaluation
        from pipeline.tune import driver as tune

        swept = tune.run(cfg)
        print(tune.format_summary(swept, cfg.tune.metric))
        if swept.best_checkpoint is None:
            raise RuntimeError(f"no trial of the sweep finished with a checkpoint; see {swept.results_dir}")
        result = train.TrainResult(swept.sweep_dir, swept.best_checkpoint, {}, swept.history, {},
                                   tracking=swept.tracking)  # the evaluation goes to the sweep's parent run
    else:
        result = train.run(cfg)
    val_paths = expand_paths(cfg.data.val, "data.val")
    index_dir, report_dir = storage.join(result.run_dir, "index"), storage.join(result.run_dir, "report")
    skip_log = SkipLog.start()
    reranker = None
    if cfg.rerank.enabled:  # the head trained beside the towers re-scores each query's top rerank.k
        from pipeline.rerank.job import load

        reranker = load(result.checkpoint, result.checkpoint)
    metrics, meta, orphans = evaluate.index_and_score(result.checkpoint, val_paths, index_dir, cfg.eval, cfg.index,
                                                      cfg.scaling, skip_log, reranker, cfg.rerank.k)
    from pipeline import report
    from pipeline.config import to_dict

    data = {split: dict(by) for split, by in result.data.items()}  # skipped samples by split and reason
    examples = dict(result.examples)
    gallery_keys = skip_log.read().get("gallery", {})
    if gallery_keys:
        data["gallery"] = {r: len(k) for r, k in gallery_keys.items()}
        examples["gallery"] = {r: k[:EXAMPLES] for r, k in gallery_keys.items()}
    if cfg.cca.enabled:  # the CCA baseline (cca.*), fitted on data.train and scored on data.val beside the model
        from pipeline.baselines import fitting as baselines
        from pipeline.checkpoint import read_tokenizer

        tokenizer = read_tokenizer(result.checkpoint)
        # The baseline's bag of words counts word ids (most frequent first); a sub-word tokenizer's ids are not
        # that, so the baseline then scans the captions for a word vocabulary of its own.
        metrics["baselines"] = baselines.run_baseline(cfg, tokenizer if getattr(tokenizer, "kind", "word") == "word" else None)
    data_block = {"skipped": data, "skip_examples": examples,
                  **({"captions_of_skipped_images": orphans} if orphans else {})}
    rep = report.publish(report_dir, metrics, meta, result.checkpoint, to_dict(cfg), result.history, data_block,
                         val_paths, cfg.eval.in_driver_images)
    _track_result(result, metrics, report_dir)
    return RunSummary(result.run_dir, result.checkpoint, index_dir, report_dir, rep, data)


def _track_result(result, metrics: dict, report_dir: str) -> None:
    """The evaluation's table and the report's files to the run's trackers (run.report_to), at its last step."""
    if result.tracking is None:
        return
    from pipeline.metrics import flat_metrics
    from pipeline.tracking.writers import log_result

    log_result(result.tracking, flat_metrics(metrics, "eval"), int(result.metrics.get("step", 0)), report_dir)


def format_summary(s: RunSummary) -> str:
    from pipeline.report import recall_table

    skipped = {split: by for split, by in s.data.items() if isinstance(by, dict) and by}
    lines = ["", "=" * 72, "Run finished", "",
             recall_table(s.report), ""]
    if "untrained_rsum" in s.report:
        lines += [f"untrained model rsum: {s.report['untrained_rsum']:.1f}", ""]
    for b in (s.report.get("baselines") or {}).values():
        lines += [f"baseline rsum: {b['rsum']:.1f} ({b['description']})", ""]
    rr = s.report.get("rerank")
    if rr:  # rerank.enabled: what the head trained with the towers makes of each query's top rerank.k
        moved = ", ".join(f"{name} R@1 {rr[d]['before']['R@1']:.1f} -> {rr[d]['after']['R@1']:.1f}"
                          for d, name in (("i2t", "image → text"), ("t2i", "text → image")) if d in rr)
        lines += [f"re-ranked top {rr['k']} ({rr['description']}): {moved}; {rr['ms_per_query']:.3f} ms per query", ""]
    lines += [f"run directory : {s.run_dir}", f"checkpoint    : {s.checkpoint}", f"index         : {s.index_dir}",
              f"report        : {storage.join(s.report_dir, 'report.html')}  (+ report.md, report.json, plots/)",
              f"search it     : pipeline serve --index {s.index_dir}  (a search page on http://127.0.0.1:8000/)",
              "", *skip_table(skipped), "=" * 72]
    return "\n".join(lines)


def skip_table(skipped: dict[str, dict[str, int]]) -> list[str]:
    """Skipped samples by split and reason as an aligned table (or one line saying there were none)."""
    rows = [(split, reason, n) for split, by in skipped.items() for reason, n in sorted(by.items())]
    if not rows:
        return ["skipped samples: none"]
    w1, w2 = max(len("split"), *(len(r[0]) for r in rows)), max(len("reason"), *(len(r[1]) for r in rows))
    out = ["skipped samples:", f"  {'split':<{w1}}  {'reason':<{w2}}  samples"]
    out += [f"  {split:<{w1}}  {reason:<{w2}}  {n:>7}" for split, reason, n in rows]
    return out
