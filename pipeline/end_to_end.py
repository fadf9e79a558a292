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


def ensure_data(cfg: RunJobConfig) -> None:
    """Write the synthetic dataset when the config asks for it and data.train matches nothing yet."""
    from pipeline.config import ConfigError
    from pipeline.data.ingest import expand_paths
    from pipeline.data.synthetic import write_dataset

    if not cfg.data.synth.enabled:
        return
    try:
        expand_paths(cfg.data.train, "data.train")
        expand_paths(cfg.data.val, "data.val")
    except ConfigError:
        s = cfg.data.synth
        print(f"[data] writing synthetic data to {s.out} ({s.train} train, {s.val} val, seed {s.seed})")
        write_dataset(s.out, s.train, s.val, s.seed)


def run(cfg: RunJobConfig) -> RunSummary:
    from pipeline import evaluate, train
    from pipeline.data.ingest import expand_paths
    from pipeline.index import build_gallery_indexes, collect_thumbnails, embed_dataset, write_index

    if cfg.tune.enabled:  # sweep, then carry the best trial's checkpoint into index and evaluation
        from pipeline import tune

        swept = tune.run(cfg)
        print(tune.format_summary(swept, cfg.tune.metric))
        if swept.best_checkpoint is None:
            raise RuntimeError(f"no trial of the sweep finished with a checkpoint; see {swept.results_dir}")
        result = train.TrainResult(swept.sweep_dir, swept.best_checkpoint, {}, swept.history, {})
    else:
        result = train.run(cfg)
    val_paths = expand_paths(cfg.data.val, "data.val")
    gallery = embed_dataset(result.checkpoint, val_paths, cfg.data.image_size,
                            cfg.scaling.num_workers, cfg.scaling.use_gpu, cfg.eval.batch_size)
    index_dir, report_dir = storage.join(result.run_dir, "index"), storage.join(result.run_dir, "report")
    built = build_gallery_indexes(gallery, cfg.index.spec())  # saved, and searched by the evaluation
    with storage.staging_dir(index_dir) as local:  # s3:// run dirs: written locally, then uploaded
        meta = write_index(local, gallery, result.checkpoint, cfg.index.spec(), built)
    from pipeline.encoder import load

    metrics = evaluate.evaluate_gallery(gallery, cfg.eval.ks, cfg.eval.chunk_size, cfg.eval.examples,
                                        cfg.index.spec(), encode_text=load(result.checkpoint).encode_text,
                                        image_index=built["images"][0])
    from pipeline import report
    from pipeline.config import to_dict

    data = {split: {reason: len(keys) for reason, keys in by.items()} for split, by in result.data.items()}
    thumbs = collect_thumbnails(val_paths, evaluate.example_keys(metrics))
    with storage.staging_dir(report_dir) as local:
        rep = report.write_report(local, metrics, meta, result.checkpoint, to_dict(cfg), result.history,
                                  {"skipped": data}, thumbs)
    return RunSummary(result.run_dir, result.checkpoint, index_dir, report_dir, rep, data)


def format_summary(s: RunSummary) -> str:
    from pipeline.report import recall_table

    skipped = {split: by for split, by in s.data.items() if isinstance(by, dict) and by}
    lines = ["", "=" * 72, "Run finished", "",
             recall_table(s.report), ""]
    if "untrained_rsum" in s.report:
        lines += [f"untrained model rsum: {s.report['untrained_rsum']:.1f}", ""]
    lines += [f"run directory : {s.run_dir}", f"checkpoint    : {s.checkpoint}", f"index         : {s.index_dir}",
              f"report        : {storage.join(s.report_dir, 'report.html')}  (+ report.md, report.json, plots/)",
              f"skipped samples: {skipped if skipped else 'none'}", "=" * 72]
    return "\n".join(lines)
