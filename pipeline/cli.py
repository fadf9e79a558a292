"""`pipeline <command>`: argument parsing and dispatch. Config and paths are checked before any Ray work
(`pipeline.preflight`).

    pipeline run [--config FILE] [--set KEY=VALUE ...]
    pipeline train --config FILE [--set ...]
    pipeline tune --config FILE [--set ...]
    pipeline cca --config FILE [--set ...] [--out DIR]
    pipeline embeddings --config FILE --out FILE.txt [--dim 128] [--window 4] [--set ...]
    pipeline index --checkpoint DIR --data PATH --out DIR
    pipeline evaluate --checkpoint DIR --data PATH --out DIR
    pipeline search --index DIR (--text STR | --image FILE) [--k 10] [--out DIR]
    pipeline serve --index DIR [--checkpoint DIR] [--port 8000] [--replicas N]
    pipeline zeroshot --checkpoint DIR --data FOLDER [--classes FILE] [--templates openai|simple|FILE] --out DIR
    pipeline export --index DIR --out DIR --format clip-retrieval
    pipeline data convert-csv --csv FILE --out DIR [--csv-img-key filepath] [--csv-caption-key title]
    pipeline data synth --out DIR [--train N] [--val N] [--seed S]
    pipeline data convert-karpathy --json FILE --images DIR --out DIR [--split test] [--format webdataset]
    pipeline data inspect PATH
    pipeline keys [run|train|evaluate]
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pipeline import storage
from pipeline.arguments import JOB_CONFIGS, build_parser, default_config
from pipeline.config import (ConfigError, EvalJobConfig, RunJobConfig, TrainJobConfig, describe_keys, load_config,
                             narrow)
from pipeline.preflight import check_eval_job, check_job, check_paths, require_checkpoint


def _start_job(args, config: str | None = None, extra: tuple = (), check=None, **preflight
                ) -> tuple[RunJobConfig, str]:
    """Every training-side command's start: the recipe (`config`, default --config) with --set and `extra`
    overrides, the command's own `check`, the checks before any Ray work (`check_job`, given `preflight`),
    then the cluster (or the embedded local Ray). -> (config, where: 'local' or the cluster's address)"""
    cfg = load_config(RunJobConfig, config or args.config, [*args.overrides, *extra])
    if check is not None:
        check(cfg)
    check_job(cfg, **preflight)
    from pipeline import cluster  # after the checks: they must answer before torch and Ray are loaded

    return cfg, cluster.connect(args.address, args.command)


def _start_eval(args, checkpoints: list[str], check=None) -> tuple[EvalJobConfig, list[str], list[str]]:
    """`index`, `evaluate` and `rerank`: --set overrides, the S3 paths and --out checked, each checkpoint verified,
    the --data shards found and the command's own `check(config, checkpoints)` before any Ray work, then the
    cluster. -> (config, checkpoints, shard paths)"""
    cfg = load_config(EvalJobConfig, None, args.overrides)
    check_eval_job(cfg, args.data, args.out, checkpoints)
    ckpts = [require_checkpoint(c) for c in checkpoints]
    paths = check_paths(args.data, "--data")
    if check is not None:
        check(cfg, ckpts)
    from pipeline import cluster

    cluster.connect(args.address, args.command)
    return cfg, ckpts, paths


def cmd_run(args) -> None:
    t0 = time.time()
    cfg, where = _start_job(args, args.config or default_config())
    from pipeline import end_to_end

    print(f"[run] {cfg.run.name}: {'embedded local Ray' if where == 'local' else 'Ray cluster'}, "
          f"{cfg.scaling.num_workers} workers, run directory {cfg.run.run_dir()}")
    summary = end_to_end.run(cfg)
    print(end_to_end.format_summary(summary))
    print(f"total time {time.time() - t0:.0f} s")


def cmd_train(args) -> None:
    # Recipes are shared with `pipeline run`: read the whole schema, keep the training sections.
    cfg, _ = _start_job(args)
    from pipeline.training import driver as train

    res = train.run(narrow(cfg, TrainJobConfig))
    print(f"run directory: {res.run_dir}\ncheckpoint: {res.checkpoint}\nmetrics: {json.dumps(res.metrics)}")


def _check_space(cfg) -> None:
    if not (cfg.tune.space or cfg.tune.studies):
        raise ConfigError("nothing to sweep: set tune.space (e.g. --set 'tune.space={loss.temperature: "
                          "{grid: [0.05, 0.1]}}') or tune.studies in the recipe")


def cmd_tune(args) -> None:
    cfg, _ = _start_job(args, check=_check_space)
    from pipeline.tune import driver as tune

    res = tune.run(cfg)
    print(tune.format_summary(res, cfg.tune.metric))


def _check_cca_inputs(cfg) -> None:
    for key, path in (("cca.word_vectors", cfg.cca.word_vectors), ("cca.checkpoint", cfg.cca.checkpoint)):
        if path and not storage.is_remote(path) and not Path(path).exists():
            raise ConfigError(f"{key}={path!r} does not exist")


def cmd_cca(args) -> None:
    t0 = time.time()
    kind = (f"cca.kind={args.kind}",) if args.kind else ()
    cfg, _ = _start_job(args, extra=kind, check=_check_cca_inputs, writes=[(args.out, "--out")] if args.out else [])
    from pipeline.baselines import fitting as baselines
    from pipeline.report import recall_table

    rep, out = baselines.run(cfg, args.out)
    maps = "autoencoder.npz" if cfg.cca.kind == "autoencoder" else "cca.npz"
    print(f"{rep['checkpoint']}\n\n{recall_table(rep)}\n\nreport: {storage.join(out, 'report', 'report.html')} "
          f"(+ report.md, report.json); fitted maps: {storage.join(out, maps)}\n"
          f"total time {time.time() - t0:.0f} s")


def cmd_embeddings(args) -> None:
    flags = tuple(f"embeddings.{k}={v}" for k, v in (("dim", args.dim), ("window", args.window),
                                                       ("method", args.method)) if v is not None)
    out_dir = args.out.rsplit("/", 1)[0] if storage.is_remote(args.out) else str(Path(args.out).resolve().parent)
    cfg, _ = _start_job(args, extra=flags, splits=("train",), writes=[(out_dir, "--out")])
    from pipeline.words import job as words_job

    print(words_job.format_summary(words_job.run(cfg.embeddings, cfg.data, args.out, cfg.train.seed,
                                                 cfg.scaling, cfg.run)))


def cmd_index(args) -> None:
    cfg, (ckpt,), paths = _start_eval(args, [args.checkpoint])
    from pipeline import checkpoint
    from pipeline.index.embedding_passes import embed_to_parquet
    from pipeline.index.faiss_indexes import IndexSpec
    from pipeline.index.sharded import build_gallery_indexes, write_index

    image_size = checkpoint.read_config(ckpt)["data"]["image_size"]
    emb = embed_to_parquet(ckpt, paths, image_size, args.out, cfg.scaling.num_workers, cfg.scaling.use_gpu,
                           cfg.eval.batch_size, in_driver_images=cfg.eval.in_driver_images, captionless=True)
    spec = IndexSpec.of(cfg.index)
    built = build_gallery_indexes(args.out, spec, cfg.index.shard_rows)
    meta = write_index(args.out, built, ckpt, spec, emb.n_images, emb.n_captions, emb.dim)
    shards = len(meta["indexes"]["images"].get("shards") or []) or 1
    print(f"index: {args.out} ({meta['n_images']} images, {meta['n_captions']} captions, {meta['type']}, "
          f"{shards} shard{'s' if shards > 1 else ''}, built in {meta['build_s']:.3f} s, recall@10 vs exact "
          f"{meta['recall@10_vs_exact']:.3f}, {meta['qps']:.0f} queries/s; embeddings in images.parquet/, "
          f"captions.parquet/)")


def cmd_evaluate(args) -> None:
    loaded = []

    def load_reranker(cfg, ckpts) -> None:  # refused before any Ray work when it belongs to another model
        if not args.rerank:
            return
        if len(ckpts) > 1:
            raise ConfigError("--rerank goes with one --checkpoint: the one the re-ranker was trained on")
        from pipeline.rerank.job import load

        try:
            loaded.append(load(args.rerank, ckpts[0]))
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"--rerank {args.rerank}: {e}") from None

    cfg, ckpts, _ = _start_eval(args, args.checkpoint, load_reranker)
    from pipeline import evaluate
    from pipeline.report import comparison_table, recall_table

    reranker = loaded[0] if loaded else None
    rep = evaluate.run(ckpts, args.data, args.out, cfg.eval, cfg.scaling, cfg.index, reranker=reranker,
                       rerank_k=cfg.rerank.k)
    table = comparison_table(rep["comparison"]) if rep.get("comparison") else recall_table(rep)
    print(table + f"\n\nreport: {storage.join(args.out, 'report.html')} (+ report.md, report.json); "
                  f"embeddings and index: {storage.join(args.out, 'index')}")


def cmd_zeroshot(args) -> None:
    from pipeline import zeroshot

    planned = []

    def check(cfg, ckpts) -> None:  # the folder's classes and the templates, before any Ray work
        try:
            planned.append(zeroshot.plan(args.data, args.classes, args.templates))
        except ValueError as e:
            raise ConfigError(str(e)) from None

    cfg, (ckpt,), _ = _start_eval(args, [args.checkpoint], check)
    block = zeroshot.run(ckpt, planned[0], args.out, cfg.eval, cfg.scaling)
    print(zeroshot.format_summary(block, args.out))


def cmd_export(args) -> None:
    from pipeline.index.export import export_clip_retrieval, format_summary

    storage.configure(args.endpoint_url)
    storage.check_access(args.index, "--index")
    storage.check_access(args.out, "--out", write=True)
    if not storage.exists(storage.join(args.index, "images.parquet")):
        raise ConfigError(f"--index {args.index}: no images.parquet/ there; point it at a folder `pipeline index` "
                          "or `pipeline run` wrote")
    print(format_summary(export_clip_retrieval(args.index, args.out), args.out))


def cmd_rerank(args) -> None:
    cfg, (ckpt,), paths = _start_eval(args, [args.checkpoint])
    from pipeline.rerank.job import train

    meta = train(ckpt, paths, args.out, cfg)
    print(f"re-ranker: {args.out} ({meta['description']}, trained on {meta['trained_on']['captions']} captions and "
          f"{meta['trained_on']['images']} images with {meta['trained_on']['negatives']} hard negatives each, "
          f"loss {meta['loss']}, {meta['seconds']:.0f} s)\nuse it with `pipeline evaluate --checkpoint {ckpt} "
          f"--rerank {args.out} ...`")


def cmd_search(args) -> None:
    from pipeline.serve.commands import search

    search(args)


def cmd_serve(args) -> None:
    from pipeline.serve.commands import serve

    serve(args)


def cmd_data(args) -> None:
    if args.data_command == "synth":
        from pipeline.data.formats.synthetic import write_dataset

        if args.train < 1 or args.val < 1:
            raise ConfigError("--train and --val must be positive")
        paths = write_dataset(args.out, args.train, args.val, args.seed)
        print(f"wrote {args.train} train samples in {len(paths['train'])} shards to {Path(args.out) / 'train'}\n"
              f"wrote {args.val} val samples in {len(paths['val'])} shards to {Path(args.out) / 'val'}")
        return
    storage.configure(getattr(args, "endpoint_url", ""))
    _csv_columns(args)
    if args.data_command == "convert-csv":
        from pipeline.data.formats.csv_shards import convert_csv, format_summary as csv_summary

        storage.check_access(args.csv, "--csv")
        if not storage.exists(args.csv):
            raise ConfigError(f"--csv {args.csv} does not exist")
        from pipeline.data.ingest import check_shards

        check_shards([args.csv], "--csv")
        print(csv_summary(convert_csv(args.csv, args.out, args.format, args.shard_size)))
        return
    if args.data_command == "convert-karpathy":
        from pipeline.data.formats.karpathy import convert_karpathy, format_summary

        summary = convert_karpathy(args.json, args.images, args.out, tuple(s.strip() for s in args.split.split(",")),
                                   args.format, args.shard_size)
        print(format_summary(summary))
        return
    from pipeline import cluster
    from pipeline.data.formats.shards import shard_format
    from pipeline.data.ingest import check_shards, resolve_shards, split_specs
    from pipeline.data.formats.inspect import inspect_shards

    for spec in split_specs(args.path):  # one line naming what to set, as train and evaluate give, not botocore's
        storage.check_access(spec, "PATH")
    shards = resolve_shards(args.path, "PATH")
    if shard_format(shards.paths[0]) == "csv":
        check_shards(shards.paths, "PATH")  # the header names its columns before Ray starts
    cluster.connect(args.address, args.command)
    print(inspect_shards(shards, show=args.show))


def _csv_columns(args) -> None:
    """`data` commands: the CSV columns of their --csv-* flags, for every read in this process."""
    if not hasattr(args, "csv_img_key"):
        return
    from pipeline.config import CsvColumnsConfig, build
    from pipeline.data.formats import files

    files.configure(build(CsvColumnsConfig, {"csv_image_key": args.csv_img_key, "csv_caption_key": args.csv_caption_key,
                                             "csv_separator": args.csv_separator}, "data."))


def cmd_keys(args) -> None:
    rows = describe_keys(JOB_CONFIGS[args.job])
    width = max(len(k) for k, _, _ in rows)
    for key, help_text, default in rows:
        print(f"{key:<{width}}  {json.dumps(default):<14}  {help_text}")


def cmd_import_model(args) -> None:
    from pipeline.import_model import import_config

    kwargs = dict(source=args.source, weights=args.weights, tag=args.tag, tokenizer=args.tokenizer,
                  image=args.image, image_weights=args.image_weights, text=args.text, pooling=args.pooling,
                  embed_dim=args.embed_dim)
    try:
        import_config(**kwargs)  # the names and files, before any weights are read
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from pipeline.import_model import import_model

    done = import_model(args.out, **kwargs)
    print(done.summary)
    print(f"checkpoint: {done.path} (evaluate it with `pipeline evaluate --checkpoint {done.path} --data ...`, "
          f"fine-tune it with --set model.init_from={done.path})")


COMMANDS = {"run": cmd_run, "import-model": cmd_import_model, "train": cmd_train, "tune": cmd_tune, "cca": cmd_cca,
            "baseline": cmd_cca, "embeddings": cmd_embeddings, "rerank": cmd_rerank,
            "index": cmd_index, "evaluate": cmd_evaluate, "zeroshot": cmd_zeroshot, "export": cmd_export,
            "search": cmd_search, "serve": cmd_serve, "data": cmd_data, "keys": cmd_keys}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        os.environ["PIPELINE_VERBOSE"] = "1"  # workers started from here inherit it
    from pipeline import console

    try:
        COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        if console.log_path():
            print(f"(what Ray printed is in {console.log_path()})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "serve":
            print("\nstopped serving", file=sys.stderr)
            return 0
        print(f"\ninterrupted: `pipeline {args.command}` stopped. Training runs resume from their newest checkpoint "
              "when the same command is run again", file=sys.stderr)
        return 130
    if console.log_path():
        print(f"Ray's and FAISS's own messages: {console.log_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
